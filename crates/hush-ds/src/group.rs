//! Server-side tracking of one MLS group's public state.
//!
//! [`GroupTracker`] wraps an openmls [`PublicGroup`]: it validates commits
//! (sent as PublicMessage) and merges them, queues standalone proposals so a
//! later commit may reference them, screens application messages by their
//! cleartext header, and checks GroupInfos uploaded with commits. It never
//! decrypts anything and cannot: it holds no group secrets.
//!
//! Persistence: `PublicGroup` has no serde. The tracker keeps it in an
//! `openmls_memory_storage::MemoryStorage` (openmls writes the tree, context,
//! transcript hash, confirmation tag and the proposal queue there on every
//! change) and [`GroupTracker::snapshot`] encodes that map compactly;
//! [`GroupTracker::load`] restores the map and calls `PublicGroup::load`.
//! Rebuilding from a GroupInfo instead would fail once any member's
//! KeyPackage lifetime has expired.
//!
//! Limits of what the server can check: it cannot verify membership tags or
//! confirmation tags (it has no epoch secrets), so a malicious member can
//! make it accept a commit the other members reject. Clients compare the
//! server's view (the GroupInfo it serves) with their own and resync by
//! external commit.

use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _, Size as _};
use openmls::prelude::{
    BasicCredential, ContentType, Credential, CredentialType, GroupId, LeafNodeIndex,
    MlsMessageBodyIn, OpenMlsSignaturePublicKey, ProcessedMessageContent, Proposal, ProposalStore,
    ProtocolMessage, PublicGroup, PublicMessageIn, PublicProcessMessageError, RatchetTreeIn,
    Sender, StagedCommit, Verifiable as _,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;

use crate::codec::{body_kind, decode_group_info, decode_message, tls_decode, HUSH_CIPHERSUITE};
use crate::error::DsError;
use crate::snapshot::{self, Values};

/// Most proposals queued in one epoch; more are refused until a commit
/// empties the queue (bounds what one member can make the server hold).
pub const MAX_QUEUED_PROPOSALS: usize = 256;

/// A member as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub leaf_index: u32,
    /// BasicCredential identity (`<user_id>/<device_id>` in Hush); for other
    /// credential types, the raw credential content.
    pub identity: Vec<u8>,
    pub signature_key: Vec<u8>,
}

/// A member added by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedMember {
    pub identity: Vec<u8>,
    pub signature_key: Vec<u8>,
    /// The consumed KeyPackage's `KeyPackageRef`: the directory marks it used.
    pub key_package_ref: Vec<u8>,
}

/// What an accepted commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEffect {
    pub epoch_before: u64,
    pub new_epoch: u64,
    /// Identity of the committing member, or of the joiner for an external
    /// commit.
    pub committer: Vec<u8>,
    /// An external commit (join or rejoin from a GroupInfo).
    pub external: bool,
    pub added: Vec<AddedMember>,
    /// Identities of removed leaves (read before the merge). An external
    /// rejoin that replaces the joiner's old leaf lists that identity here
    /// and as `committer`.
    pub removed: Vec<Vec<u8>>,
    pub members_after: Vec<Member>,
}

/// What an accepted standalone proposal was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalEffect {
    /// Identity of the proposing member.
    pub sender: Vec<u8>,
    pub epoch: u64,
}

/// The public state of one group. See the module docs.
pub struct GroupTracker {
    group: PublicGroup,
    storage: MemoryStorage,
    crypto: RustCrypto,
}

impl std::fmt::Debug for GroupTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTracker")
            .field("group_id", &hex::encode(self.group_id()))
            .field("epoch", &self.epoch())
            .field("members", &self.group.members().count())
            .finish()
    }
}

impl GroupTracker {
    /// Starts tracking a group from its creator's GroupInfo (MLSMessage
    /// bytes) and TLS-serialized ratchet tree. Normally at epoch 0, any
    /// epoch works. Checks the GroupInfo signature, the tree hash and every
    /// leaf (including lifetimes, against the system clock, inside openmls).
    pub fn create(group_info: &[u8], ratchet_tree: &[u8]) -> Result<Self, DsError> {
        let vgi = decode_group_info(group_info)?;
        if vgi.ciphersuite() != HUSH_CIPHERSUITE {
            return Err(DsError::InvalidArgument(format!(
                "unsupported ciphersuite {:?}; only \
                 MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 is accepted",
                vgi.ciphersuite()
            )));
        }
        let tree = tls_decode("ratchet tree", || {
            RatchetTreeIn::tls_deserialize_exact_bytes(ratchet_tree)
        })?;
        let storage = MemoryStorage::default();
        let crypto = RustCrypto::default();
        let (group, _) =
            PublicGroup::from_external(&crypto, &storage, tree, vgi, ProposalStore::new())
                .map_err(|e| DsError::InvalidMls(format!("group info / tree: {e}")))?;
        Ok(GroupTracker {
            group,
            storage,
            crypto,
        })
    }

    /// Restores a tracker from [`GroupTracker::snapshot`] bytes, including
    /// queued proposals.
    pub fn load(snapshot: &[u8]) -> Result<Self, DsError> {
        let (group_id, values) = snapshot::decode(snapshot)?;
        let storage = MemoryStorage::default();
        *write_values(&storage)? = values;
        // MemoryStorage unwraps its serde_json reads. The snapshot digest
        // keeps corrupted bytes out, so this only guards against a snapshot
        // that was written wrong (a bug): report it instead of crashing.
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            PublicGroup::load(&storage, &GroupId::from_slice(&group_id))
        }))
        .map_err(|_| DsError::Malformed("snapshot state does not deserialize".into()))?;
        let group = loaded
            .map_err(|e| DsError::malformed("snapshot state", e))?
            .ok_or_else(|| DsError::Malformed("snapshot lacks the group state".into()))?;
        Ok(GroupTracker {
            group,
            storage,
            crypto: RustCrypto::default(),
        })
    }

    /// The whole public state in a compact binary form (see
    /// `snapshot.rs`); a storage format, stable across releases.
    pub fn snapshot(&self) -> Result<Vec<u8>, DsError> {
        let values = read_values(&self.storage)?;
        Ok(snapshot::encode(self.group_id(), &values))
    }

    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// Members in leaf order.
    pub fn members(&self) -> Vec<Member> {
        self.group
            .members()
            .map(|m| Member {
                leaf_index: m.index.u32(),
                identity: identity_of(&m.credential),
                signature_key: m.signature_key,
            })
            .collect()
    }

    /// The member with this identity, if any (the first in leaf order).
    pub fn member_by_identity(&self, identity: &[u8]) -> Option<Member> {
        self.members().into_iter().find(|m| m.identity == identity)
    }

    /// Number of proposals queued for the current epoch.
    pub fn pending_proposals(&self) -> usize {
        self.group
            .queued_proposals(&self.storage)
            .map(|q| q.len())
            .unwrap_or(0)
    }

    /// The current ratchet tree, TLS-serialized (served to joiners).
    pub fn ratchet_tree(&self) -> Result<Vec<u8>, DsError> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| DsError::Internal(format!("encoding ratchet tree: {e}")))
    }

    /// Validates a commit (MLSMessage, PublicMessage, current epoch) and
    /// merges it. On `Err` the tracker is unchanged.
    pub fn apply_commit(&mut self, commit: &[u8]) -> Result<CommitEffect, DsError> {
        let message = self.decode_handshake(commit, ContentType::Commit)?;
        let epoch_before = self.epoch();
        let processed = self
            .group
            .process_message(&self.crypto, message)
            .map_err(process_error)?;
        let external = matches!(processed.sender(), Sender::NewMemberCommit);
        let committer = identity_of(processed.credential());
        let staged = match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => *staged,
            _ => return Err(DsError::WrongWireFormat("expected a commit".into())),
        };
        let added = self.added_members(&staged)?;
        // Read removed identities before the merge blanks their leaves.
        let removed = self.removed_members(&staged);

        // Merging mutates the in-memory group before writing storage; keep
        // the stored map so a failed write can be rolled back.
        let backup = read_values(&self.storage)?.clone();
        if let Err(e) = self.group.merge_commit(&self.storage, staged) {
            self.restore(backup)?;
            return Err(DsError::Internal(format!("merging commit: {e}")));
        }
        Ok(CommitEffect {
            epoch_before,
            new_epoch: self.epoch(),
            committer,
            external,
            added,
            removed,
            members_after: self.members(),
        })
    }

    /// Validates a standalone proposal from a member (PublicMessage, current
    /// epoch) and queues it so a later commit may reference it. Idempotent:
    /// the same proposal twice is queued once. Survives snapshot/load.
    pub fn apply_proposal(&mut self, proposal: &[u8]) -> Result<ProposalEffect, DsError> {
        let message = self.decode_handshake(proposal, ContentType::Proposal)?;
        let processed = self
            .group
            .process_message(&self.crypto, message)
            .map_err(process_error)?;
        let sender = identity_of(processed.credential());
        let queued = match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(q) => *q,
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                return Err(DsError::InvalidArgument(
                    "external join proposals are not accepted; join by external commit".into(),
                ))
            }
            _ => return Err(DsError::WrongWireFormat("expected a proposal".into())),
        };
        let already = self
            .group
            .queued_proposals(&self.storage)
            .map_err(|e| DsError::Internal(format!("reading proposal queue: {e}")))?;
        if !already
            .iter()
            .any(|(r, _)| r == queued.proposal_reference_ref())
        {
            if already.len() >= MAX_QUEUED_PROPOSALS {
                return Err(DsError::InvalidArgument(format!(
                    "too many queued proposals in this epoch (max {MAX_QUEUED_PROPOSALS})"
                )));
            }
            self.group
                .add_proposal(&self.storage, queued)
                .map_err(|e| DsError::Internal(format!("queueing proposal: {e}")))?;
        }
        Ok(ProposalEffect {
            sender,
            epoch: self.epoch(),
        })
    }

    /// Screens an application message by its cleartext header: an MLSMessage
    /// holding a PrivateMessage whose content type is application, for this
    /// group, with epoch in `[current - epoch_window, current]`. Returns the
    /// message's epoch. Cannot decrypt, so says nothing about the content or
    /// the (encrypted) sender.
    pub fn check_application(&self, message: &[u8], epoch_window: u64) -> Result<u64, DsError> {
        let pm = match decode_message(message)? {
            MlsMessageBodyIn::PrivateMessage(pm) => pm,
            other => {
                return Err(DsError::WrongWireFormat(format!(
                    "application messages must be PrivateMessage, got {}",
                    body_kind(&other)
                )))
            }
        };
        if pm.content_type() != ContentType::Application {
            return Err(DsError::WrongWireFormat(format!(
                "PrivateMessage with content type {:?}; handshake messages must be PublicMessage",
                pm.content_type()
            )));
        }
        if pm.group_id() != self.group.group_id() {
            return Err(DsError::WrongGroup);
        }
        let current = self.epoch();
        let epoch = pm.epoch().as_u64();
        if epoch > current || epoch < current.saturating_sub(epoch_window) {
            return Err(DsError::StaleEpoch { current });
        }
        Ok(epoch)
    }

    /// Checks a GroupInfo uploaded with a commit, after `apply_commit`: it
    /// must be for this group at the current epoch, carry an external_pub
    /// extension (it is kept for external joins), exactly the tracked group
    /// context and confirmation tag, and be signed by the leaf it names as
    /// signer.
    pub fn check_group_info(&self, group_info: &[u8]) -> Result<(), DsError> {
        let vgi = decode_group_info(group_info)?;
        if vgi.group_id() != self.group.group_id() {
            return Err(DsError::WrongGroup);
        }
        let current = self.epoch();
        if vgi.epoch().as_u64() != current {
            return Err(DsError::StaleEpoch { current });
        }
        if vgi.extensions().external_pub().is_none() {
            return Err(DsError::InvalidArgument(
                "group info lacks the external_pub extension external joins need".into(),
            ));
        }
        if vgi.group_context() != self.group.group_context() {
            return Err(DsError::InvalidMls(
                "group info context differs from the tracked group state".into(),
            ));
        }
        // GroupInfoTBS = group_context || extensions || confirmation_tag ||
        // uint32 signer. openmls does not expose the last two, so read them
        // from the signed payload.
        let tbs = vgi
            .unsigned_payload()
            .map_err(|e| DsError::Internal(format!("encoding group info: {e}")))?;
        let tag_start =
            vgi.group_context().tls_serialized_len() + vgi.extensions().tls_serialized_len();
        let tag_end = tbs
            .len()
            .checked_sub(4)
            .filter(|&end| end >= tag_start)
            .ok_or_else(|| DsError::Malformed("group info payload too short".into()))?;
        let our_tag = self
            .group
            .confirmation_tag()
            .tls_serialize_detached()
            .map_err(|e| DsError::Internal(format!("encoding confirmation tag: {e}")))?;
        if tbs[tag_start..tag_end] != our_tag[..] {
            return Err(DsError::InvalidMls(
                "group info confirmation tag differs from the tracked group state".into(),
            ));
        }
        let signer = u32::from_be_bytes([
            tbs[tag_end],
            tbs[tag_end + 1],
            tbs[tag_end + 2],
            tbs[tag_end + 3],
        ]);
        let leaf = self.group.leaf(LeafNodeIndex::new(signer)).ok_or_else(|| {
            DsError::InvalidMls(format!("group info signer {signer} is not a member"))
        })?;
        let key = OpenMlsSignaturePublicKey::from_signature_key(
            leaf.signature_key().clone(),
            self.group.ciphersuite().signature_algorithm(),
        );
        vgi.verify_no_out(&self.crypto, &key)
            .map_err(|e| DsError::InvalidMls(format!("group info signature: {e}")))
    }

    /// Decodes a handshake message for this tracker: PublicMessage, expected
    /// content type, this group, current epoch.
    fn decode_handshake(
        &self,
        bytes: &[u8],
        expected: ContentType,
    ) -> Result<ProtocolMessage, DsError> {
        let pm: PublicMessageIn = match decode_message(bytes)? {
            MlsMessageBodyIn::PublicMessage(pm) => pm,
            MlsMessageBodyIn::PrivateMessage(_) => {
                return Err(DsError::WrongWireFormat(format!(
                    "a {expected:?} must be sent as PublicMessage, got PrivateMessage"
                )))
            }
            other => {
                return Err(DsError::WrongWireFormat(format!(
                    "expected a PublicMessage {expected:?}, got {}",
                    body_kind(&other)
                )))
            }
        };
        if pm.content_type() != expected {
            return Err(DsError::WrongWireFormat(format!(
                "expected a {expected:?}, got a {:?}",
                pm.content_type()
            )));
        }
        if pm.group_id() != self.group.group_id() {
            return Err(DsError::WrongGroup);
        }
        if pm.epoch() != self.group.group_context().epoch() {
            return Err(DsError::StaleEpoch {
                current: self.epoch(),
            });
        }
        Ok(ProtocolMessage::from(pm))
    }

    fn added_members(&self, staged: &StagedCommit) -> Result<Vec<AddedMember>, DsError> {
        staged
            .add_proposals()
            .map(|add| {
                let kp = add.add_proposal().key_package();
                let leaf = kp.leaf_node();
                let kp_ref = kp
                    .hash_ref(&self.crypto)
                    .map_err(|e| DsError::Internal(format!("key package ref: {e}")))?;
                Ok(AddedMember {
                    identity: identity_of(leaf.credential()),
                    signature_key: leaf.signature_key().as_slice().to_vec(),
                    key_package_ref: kp_ref.as_slice().to_vec(),
                })
            })
            .collect()
    }

    fn removed_members(&self, staged: &StagedCommit) -> Vec<Vec<u8>> {
        staged
            .queued_proposals()
            .filter_map(|q| match (q.proposal(), q.sender()) {
                (Proposal::Remove(r), _) => Some(r.removed()),
                (Proposal::SelfRemove, Sender::Member(leaf)) => Some(*leaf),
                _ => None,
            })
            .filter_map(|leaf| self.group.leaf(leaf))
            .map(|leaf| identity_of(leaf.credential()))
            .collect()
    }

    fn restore(&mut self, values: Values) -> Result<(), DsError> {
        *write_values(&self.storage)? = values;
        self.group = PublicGroup::load(&self.storage, self.group.group_id())
            .map_err(|e| DsError::Internal(format!("restoring state: {e}")))?
            .ok_or_else(|| DsError::Internal("restoring state: group missing".into()))?;
        Ok(())
    }
}

fn read_values(storage: &MemoryStorage) -> Result<std::sync::RwLockReadGuard<'_, Values>, DsError> {
    storage
        .values
        .read()
        .map_err(|_| DsError::Internal("storage lock poisoned".into()))
}

fn write_values(
    storage: &MemoryStorage,
) -> Result<std::sync::RwLockWriteGuard<'_, Values>, DsError> {
    storage
        .values
        .write()
        .map_err(|_| DsError::Internal("storage lock poisoned".into()))
}

/// The identity bytes of a credential: BasicCredential identity, or the raw
/// content for other credential types.
pub(crate) fn identity_of(credential: &Credential) -> Vec<u8> {
    if credential.credential_type() == CredentialType::Basic {
        if let Ok(basic) = BasicCredential::try_from(credential.clone()) {
            return basic.identity().to_vec();
        }
    }
    credential.serialized_content().to_vec()
}

fn process_error(e: PublicProcessMessageError) -> DsError {
    match e {
        PublicProcessMessageError::LibraryError(e) => DsError::Internal(e.to_string()),
        PublicProcessMessageError::IncompatibleWireFormat => {
            DsError::WrongWireFormat("handshake messages must be PublicMessage".into())
        }
        other => DsError::InvalidMls(other.to_string()),
    }
}
