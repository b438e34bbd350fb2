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
//! Identity: openmls lets an update path, an Update proposal or an external
//! commit carry any credential and leaves it to the application to decide
//! what is acceptable. Every [`CommitEffect`] therefore lists the leaves the
//! commit created or whose (identity, signature key) changed, and the
//! leaves it removed; [`CommitEffect::check_leaf_identities`] applies the
//! part of Hush's rule that needs no directory (a leaf never changes
//! identity; an external commit removes only the joiner's own old leaf),
//! and the node compares every listed leaf's key with the directory.
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

/// A leaf a commit (or a proposal) creates, or whose identity or signature
/// key it changes. Leaves whose (identity, signature key) stay the same —
/// an honest self-update only renews HPKE keys — are not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafChange {
    /// The leaf before, when its index held a member that the commit did
    /// not remove. `None` for a new leaf: an Add, an external joiner, or a
    /// blank (or just removed) leaf filled again.
    pub before: Option<Member>,
    /// The leaf after.
    pub after: Member,
}

impl LeafChange {
    /// The leaf stays but names another identity: the one change Hush never
    /// allows (a leaf is one device of one user for as long as it exists).
    pub fn changes_identity(&self) -> bool {
        self.before
            .as_ref()
            .is_some_and(|b| b.identity != self.after.identity)
    }
}

/// A leaf an accepted commit removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedLeaf {
    /// The leaf as it was before the commit.
    pub member: Member,
    /// Removed by its own SelfRemove proposal rather than by a Remove
    /// proposal (whose sender may be anyone the commit covers).
    pub self_removed: bool,
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
    /// The removed leaves with their index and key, and how they left.
    pub removed_leaves: Vec<RemovedLeaf>,
    /// Every leaf the commit created or whose (identity, signature key) it
    /// changed: added members, an external joiner, the committer's update
    /// path, Update proposals. Each must be a registered device carrying
    /// its registered key (the directory is the node's; see
    /// [`CommitEffect::check_leaf_identities`] for the part that needs none).
    pub changed_leaves: Vec<LeafChange>,
    pub members_after: Vec<Member>,
}

impl CommitEffect {
    /// Hush's leaf rules that need no directory:
    /// - no leaf the commit keeps changes its identity (a member cannot
    ///   become someone else by its update path or an Update proposal);
    /// - an external commit removes, by Remove proposal, only leaves of the
    ///   joiner's own identity (its old leaf, when it rejoins). RFC 9420
    ///   (section 12.4.3.2) leaves this check to the application, and
    ///   openmls asks for it. SelfRemove proposals are the leaving
    ///   member's own and may be committed by anyone.
    pub fn check_leaf_identities(&self) -> Result<(), DsError> {
        if let Some(c) = self.changed_leaves.iter().find(|c| c.changes_identity()) {
            return Err(DsError::Forbidden(format!(
                "leaf {} may not change its identity",
                c.after.leaf_index
            )));
        }
        if self.external {
            if let Some(r) = self
                .removed_leaves
                .iter()
                .find(|r| !r.self_removed && r.member.identity != self.committer)
            {
                return Err(DsError::Forbidden(format!(
                    "an external commit may remove only the joiner's own old leaf, not leaf {}",
                    r.member.leaf_index
                )));
            }
        }
        Ok(())
    }
}

/// What an accepted standalone proposal was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalEffect {
    /// Identity of the proposing member.
    pub sender: Vec<u8>,
    pub epoch: u64,
    /// An Update proposal that changes the proposer's (identity, signature
    /// key): its leaf as it is and as it would be.
    pub update: Option<LeafChange>,
    /// An Add proposal: the member it would add.
    pub add: Option<AddedMember>,
}

impl ProposalEffect {
    /// The directory-free leaf rule for a proposal: an Update keeps the
    /// proposer's identity (see [`CommitEffect::check_leaf_identities`]).
    pub fn check_leaf_identities(&self) -> Result<(), DsError> {
        match &self.update {
            Some(u) if u.changes_identity() => Err(DsError::Forbidden(
                "an update may not change the proposer's identity".into(),
            )),
            _ => Ok(()),
        }
    }
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
        let before = self.members();
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
        // Read removed leaves before the merge blanks them.
        let removed_leaves = removed_leaves(&staged, &before);
        let removed = removed_leaves
            .iter()
            .map(|r| r.member.identity.clone())
            .collect();

        // Merging mutates the in-memory group before writing storage; keep
        // the stored map so a failed write can be rolled back.
        let backup = read_values(&self.storage)?.clone();
        if let Err(e) = self.group.merge_commit(&self.storage, staged) {
            self.restore(backup)?;
            return Err(DsError::Internal(format!("merging commit: {e}")));
        }
        let members_after = self.members();
        let changed_leaves = changed_leaves(&before, &removed_leaves, &members_after);
        Ok(CommitEffect {
            epoch_before,
            new_epoch: self.epoch(),
            committer,
            external,
            added,
            removed,
            removed_leaves,
            changed_leaves,
            members_after,
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
        let sender_leaf = match processed.sender() {
            Sender::Member(leaf) => Some(leaf.u32()),
            _ => None,
        };
        let queued = match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(q) => *q,
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                return Err(DsError::InvalidArgument(
                    "external join proposals are not accepted; join by external commit".into(),
                ))
            }
            _ => return Err(DsError::WrongWireFormat("expected a proposal".into())),
        };
        let (update, add) = self.proposal_leaves(queued.proposal(), sender_leaf)?;
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
            update,
            add,
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

    /// The leaves a standalone proposal would change: an Update that
    /// changes the proposer's (identity, key), or an Add.
    fn proposal_leaves(
        &self,
        proposal: &Proposal,
        sender_leaf: Option<u32>,
    ) -> Result<(Option<LeafChange>, Option<AddedMember>), DsError> {
        match proposal {
            Proposal::Update(update) => {
                let leaf = update.leaf_node();
                let before = sender_leaf
                    .and_then(|i| self.members().into_iter().find(|m| m.leaf_index == i));
                let Some(before) = before else {
                    return Err(DsError::InvalidMls("update from an unknown leaf".into()));
                };
                let after = Member {
                    leaf_index: before.leaf_index,
                    identity: identity_of(leaf.credential()),
                    signature_key: leaf.signature_key().as_slice().to_vec(),
                };
                let same = after.identity == before.identity
                    && after.signature_key == before.signature_key;
                Ok((
                    (!same).then_some(LeafChange {
                        before: Some(before),
                        after,
                    }),
                    None,
                ))
            }
            Proposal::Add(add) => {
                let kp = add.key_package();
                let kp_ref = kp
                    .hash_ref(&self.crypto)
                    .map_err(|e| DsError::Internal(format!("key package ref: {e}")))?;
                Ok((
                    None,
                    Some(AddedMember {
                        identity: identity_of(kp.leaf_node().credential()),
                        signature_key: kp.leaf_node().signature_key().as_slice().to_vec(),
                        key_package_ref: kp_ref.as_slice().to_vec(),
                    }),
                ))
            }
            _ => Ok((None, None)),
        }
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

/// The leaves a staged commit removes, as they were (`before`, in leaf
/// order).
fn removed_leaves(staged: &StagedCommit, before: &[Member]) -> Vec<RemovedLeaf> {
    staged
        .queued_proposals()
        .filter_map(|q| match (q.proposal(), q.sender()) {
            (Proposal::Remove(r), _) => Some((r.removed().u32(), false)),
            (Proposal::SelfRemove, Sender::Member(leaf)) => Some((leaf.u32(), true)),
            _ => None,
        })
        .filter_map(|(index, self_removed)| {
            let member = before.iter().find(|m| m.leaf_index == index)?.clone();
            Some(RemovedLeaf {
                member,
                self_removed,
            })
        })
        .collect()
}

/// Every leaf of `after` that is new or whose (identity, signature key)
/// differs from the same index in `before`. A leaf removed by the commit
/// and filled again counts as new.
fn changed_leaves(before: &[Member], removed: &[RemovedLeaf], after: &[Member]) -> Vec<LeafChange> {
    let kept: std::collections::BTreeMap<u32, &Member> = before
        .iter()
        .filter(|m| !removed.iter().any(|r| r.member.leaf_index == m.leaf_index))
        .map(|m| (m.leaf_index, m))
        .collect();
    after
        .iter()
        .filter_map(|m| match kept.get(&m.leaf_index) {
            Some(b) if b.identity == m.identity && b.signature_key == m.signature_key => None,
            b => Some(LeafChange {
                before: b.map(|b| (*b).clone()),
                after: m.clone(),
            }),
        })
        .collect()
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
