//! The MLS side of the client, sans-IO: every function takes the state
//! database and the device identity, does one MLS operation through openmls,
//! and returns the bytes to send (or what a received message meant). No
//! sockets here; the network driver in [`crate::client`] calls these, and the
//! in-process tests drive two devices through them directly.
//!
//! Group configuration (same for creators and joiners):
//! - ciphersuite MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 only;
//! - PURE_PLAINTEXT wire format for handshake messages (the server tracks
//!   membership from PublicMessage commits; application messages are always
//!   PrivateMessage);
//! - `max_past_epochs` = [`MAX_PAST_EPOCHS`], so application messages sent
//!   just before a commit still decrypt after it;
//! - no ratchet-tree extension in GroupInfo: the tree travels separately
//!   (`ratchet_tree` fields of the protocol), which keeps GroupInfo small.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls::treesync::RatchetTree;
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::Signer as _;

use crate::error::{ClientError, Result};
use crate::store::{Identity, StateDb};

/// The only ciphersuite Hush uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past epochs' message secrets a member keeps.
pub const MAX_PAST_EPOCHS: usize = 5;

/// How far behind the newest message a sender's message may arrive and
/// still decrypt (openmls' `out_of_order_tolerance`, default 5). Several
/// processes of one device encrypt in one order (under the home's lock) but
/// reach the server in another, so one sender's generations arrive
/// shuffled by up to the number of its concurrent sends.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 128;
/// How far ahead a message's generation may be (openmls' default).
pub const MAX_FORWARD_DISTANCE: u32 = 1000;

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAX_FORWARD_DISTANCE)
}

/// The create config of every Hush group.
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .use_ratchet_tree_extension(false)
        .build()
}

/// The join config of every Hush group (Welcome and external joins).
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .use_ratchet_tree_extension(false)
        .build()
}

/// The leaf capabilities of every Hush KeyPackage: the defaults plus the
/// last-resort extension (a KeyPackage may only carry extensions its leaf
/// declares, and the server checks KeyPackages on upload).
pub fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![CIPHERSUITE])
        .extensions(vec![ExtensionType::LastResort])
        .build()
}

/// Generates a fresh Ed25519 device key.
pub fn new_device_keys() -> Result<SignatureKeyPair> {
    SignatureKeyPair::new(SignatureScheme::ED25519)
        .map_err(|e| ClientError::mls("generate device key", format!("{e:?}")))
}

/// Signs a raw payload (HTTP auth) with the device key: a plain Ed25519
/// signature over the bytes.
pub fn sign_raw(keys: &SignatureKeyPair, payload: &[u8]) -> Result<Vec<u8>> {
    keys.sign(payload)
        .map_err(|e| ClientError::mls("sign", format!("{e:?}")))
}

/// The credential of this device: BasicCredential("<user>/<device>") with
/// the device's signature key.
pub fn credential(id: &Identity) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(id.mls_identity().into_bytes()).into(),
        signature_key: id.keys.public().into(),
    }
}

/// The identity string of a credential ("<user>/<device>"), lossy for
/// non-basic or non-UTF-8 credentials.
pub fn credential_identity(credential: &Credential) -> String {
    match BasicCredential::try_from(credential.clone()) {
        Ok(basic) => String::from_utf8_lossy(basic.identity()).into_owned(),
        Err(_) => "<unknown>".to_string(),
    }
}

/// The user (handle) part of an identity string.
pub fn user_of(identity: &str) -> &str {
    identity.split_once('/').map(|(u, _)| u).unwrap_or(identity)
}

fn ser(context: &str, m: &MlsMessageOut) -> Result<Vec<u8>> {
    m.to_bytes().map_err(|e| ClientError::codec(context, e))
}

fn parse_message(bytes: &[u8]) -> Result<MlsMessageIn> {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| ClientError::codec("decode MLSMessage", e))
}

fn parse_tree(bytes: &[u8]) -> Result<RatchetTreeIn> {
    RatchetTreeIn::tls_deserialize_exact(bytes)
        .map_err(|e| ClientError::codec("decode ratchet tree", e))
}

fn tree_bytes(tree: &RatchetTree) -> Result<Vec<u8>> {
    tree.tls_serialize_detached()
        .map_err(|e| ClientError::codec("encode ratchet tree", e))
}

/// Parses a KeyPackage as the server hands it out (an MLSMessage wrapping a
/// KeyPackage, or a bare KeyPackage) and validates it.
pub fn parse_key_package(db: &StateDb, bytes: &[u8]) -> Result<KeyPackage> {
    let kp_in = match MlsMessageIn::tls_deserialize_exact(bytes) {
        Ok(m) => match m.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            _ => return Err(ClientError::Protocol("expected a KeyPackage".into())),
        },
        Err(_) => KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| ClientError::codec("decode KeyPackage", e))?,
    };
    let provider = db.provider();
    let kp = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| ClientError::mls("invalid KeyPackage", e))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(ClientError::Mls(
            "KeyPackage has an unsupported ciphersuite".into(),
        ));
    }
    Ok(kp)
}

/// The identity of a KeyPackage's credential.
pub fn key_package_identity(kp: &KeyPackage) -> String {
    credential_identity(kp.leaf_node().credential())
}

/// Serialized KeyPackages: the regular ones and an optional last-resort one.
pub type KeyPackageBatch = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// Generates `count` KeyPackages (and optionally one last-resort package),
/// stores their private parts, and returns them TLS-serialized as
/// MLSMessages.
pub fn new_key_packages(
    db: &StateDb,
    id: &Identity,
    count: usize,
    last_resort: bool,
) -> Result<KeyPackageBatch> {
    let provider = db.provider();
    let build = |lr: bool| -> Result<Vec<u8>> {
        let mut b = KeyPackage::builder().leaf_node_capabilities(capabilities());
        if lr {
            b = b.mark_as_last_resort();
        }
        let bundle = b
            .build(CIPHERSUITE, &provider, &id.keys, credential(id))
            .map_err(|e| ClientError::mls("build KeyPackage", e))?;
        ser(
            "encode KeyPackage",
            &MlsMessageOut::from(bundle.key_package().clone()),
        )
    };
    db.atomically(|_| {
        let packages = (0..count)
            .map(|_| build(false))
            .collect::<Result<Vec<_>>>()?;
        let lr = if last_resort {
            Some(build(true)?)
        } else {
            None
        };
        Ok((packages, lr))
    })
}

/// What a new group looks like on the wire (the `CreateGroup` request).
#[derive(Debug)]
pub struct NewGroup {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// MLSMessage with the GroupInfo (with external_pub).
    pub group_info: Vec<u8>,
    /// TLS-serialized ratchet tree.
    pub ratchet_tree: Vec<u8>,
}

/// Creates a group with this device as its only member (epoch 0).
pub fn create_group(db: &StateDb, id: &Identity) -> Result<NewGroup> {
    let provider = db.provider();
    db.atomically(|_| {
        let group = MlsGroup::builder()
            .with_wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchet())
            .use_ratchet_tree_extension(false)
            .ciphersuite(CIPHERSUITE)
            .build(&provider, &id.keys, credential(id))
            .map_err(|e| ClientError::mls("create group", e))?;
        let group_info = group
            .export_group_info(provider.crypto(), &id.keys, false)
            .map_err(|e| ClientError::mls("export group info", e))?;
        Ok(NewGroup {
            group_id: group.group_id().to_vec(),
            group_info: ser("encode group info", &group_info)?,
            ratchet_tree: tree_bytes(&group.export_ratchet_tree())?,
        })
    })
}

/// Loads a group from storage.
pub fn load_group(db: &StateDb, group_id: &[u8]) -> Result<MlsGroup> {
    MlsGroup::load(db.provider().storage(), &GroupId::from_slice(group_id))?
        .ok_or_else(|| ClientError::GroupNotFound(hex::encode(group_id)))
}

/// Whether the MLS state of a group exists locally.
pub fn has_group(db: &StateDb, group_id: &[u8]) -> Result<bool> {
    Ok(MlsGroup::load(db.provider().storage(), &GroupId::from_slice(group_id))?.is_some())
}

/// Deletes a group's MLS state (after leaving, or to retry an external join).
pub fn delete_group(db: &StateDb, group_id: &[u8]) -> Result<()> {
    db.atomically(|db| {
        let provider = db.provider();
        if let Some(mut g) = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))? {
            g.delete(provider.storage())?;
        }
        Ok(())
    })
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Leaf index in the tree.
    pub leaf: u32,
    /// "<user>/<device>".
    pub identity: String,
}

/// The members of a group at its current epoch.
pub fn members(db: &StateDb, group_id: &[u8]) -> Result<Vec<MemberInfo>> {
    let g = load_group(db, group_id)?;
    Ok(g.members()
        .map(|m| MemberInfo {
            leaf: m.index.u32(),
            identity: credential_identity(&m.credential),
        })
        .collect())
}

/// The current epoch of a group.
pub fn epoch(db: &StateDb, group_id: &[u8]) -> Result<u64> {
    Ok(load_group(db, group_id)?.epoch().as_u64())
}

/// A staged commit ready to send (`SendCommit`).
#[derive(Debug)]
pub struct CommitOut {
    /// MLSMessage (PublicMessage) with the commit.
    pub commit: Vec<u8>,
    /// MLSMessage with the Welcome, when the commit adds members.
    pub welcome: Option<Vec<u8>>,
    /// MLSMessage with the GroupInfo of the new epoch.
    pub group_info: Vec<u8>,
    /// TLS-serialized ratchet tree of the new epoch.
    pub ratchet_tree: Vec<u8>,
    /// The epoch the commit was made in.
    pub epoch: u64,
}

/// What a commit should change.
#[derive(Debug)]
pub enum Change {
    /// Add these (validated) KeyPackages.
    Add(Vec<KeyPackage>),
    /// Remove these leaves.
    Remove(Vec<u32>),
    /// Commit whatever proposals are pending (e.g. a member's leave).
    PendingProposals,
    /// Rotate this device's keys: a commit (with any pending proposals)
    /// that always carries an UpdatePath, so this device's leaf gets a
    /// fresh HPKE encryption key and the path secrets up to the root are
    /// renewed (post-compromise security).
    SelfUpdate,
}

/// Builds and stages a commit; the group is left with a pending commit that
/// [`merge_pending`] applies once the server accepted it, or
/// [`clear_pending`] drops when the server rejected it.
pub fn commit(db: &StateDb, id: &Identity, group_id: &[u8], change: Change) -> Result<CommitOut> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        if group.pending_commit().is_some() {
            group
                .clear_pending_commit(provider.storage())
                .map_err(|e| ClientError::mls("clear pending commit", e))?;
        }
        let epoch = group.epoch().as_u64();
        let builder = group.commit_builder();
        let builder = match change {
            Change::Add(kps) => builder.propose_adds(kps),
            Change::Remove(leaves) => {
                builder.propose_removals(leaves.into_iter().map(LeafNodeIndex::new))
            }
            Change::PendingProposals => builder,
            Change::SelfUpdate => builder.force_self_update(true),
        };
        let bundle = builder
            .consume_proposal_store(true)
            .load_psks(provider.storage())
            .map_err(|e| ClientError::mls("commit", e))?
            .create_group_info(true)
            .build(provider.rand(), provider.crypto(), &id.keys, |_| true)
            .map_err(|e| ClientError::mls("commit", e))?
            .stage_commit(&provider)
            .map_err(|e| ClientError::mls("stage commit", e))?;
        let (commit, welcome, group_info) = bundle.into_messages();
        let group_info =
            group_info.ok_or_else(|| ClientError::Mls("commit produced no GroupInfo".into()))?;
        let staged = group
            .pending_commit()
            .ok_or_else(|| ClientError::Mls("commit was not staged".into()))?;
        let tree = staged
            .export_ratchet_tree(provider.crypto(), group.export_ratchet_tree())
            .map_err(|e| ClientError::mls("export new ratchet tree", e))?
            .ok_or_else(|| ClientError::Mls("staged commit has no tree".into()))?;
        Ok(CommitOut {
            commit: ser("encode commit", &commit)?,
            welcome: welcome.map(|w| ser("encode welcome", &w)).transpose()?,
            group_info: ser("encode group info", &group_info)?,
            ratchet_tree: tree_bytes(&tree)?,
            epoch,
        })
    })
}

/// Applies the pending commit (the server accepted it).
/// (Another process on this home may have merged it already, from the
/// timeline: then there is nothing to do.)
pub fn merge_pending(db: &StateDb, group_id: &[u8]) -> Result<()> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        if group.pending_commit().is_none() {
            return Ok(());
        }
        group
            .merge_pending_commit(&provider)
            .map_err(|e| ClientError::mls("merge pending commit", e))
    })
}

/// The members this device's pending commit removes on their own request
/// (their leave proposals), as identities.
pub fn pending_leavers(db: &StateDb, group_id: &[u8]) -> Result<Vec<String>> {
    let group = load_group(db, group_id)?;
    let Some(staged) = group.pending_commit() else {
        return Ok(Vec::new());
    };
    Ok(staged
        .remove_proposals()
        .filter_map(|p| {
            let leaf = p.remove_proposal().removed();
            match p.sender() {
                Sender::Member(by) if *by == leaf => group.member(leaf).map(credential_identity),
                _ => None,
            }
        })
        .collect())
}

/// Drops the pending commit (the server rejected it).
pub fn clear_pending(db: &StateDb, group_id: &[u8]) -> Result<()> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        if group.pending_commit().is_some() {
            group
                .clear_pending_commit(provider.storage())
                .map_err(|e| ClientError::mls("clear pending commit", e))?;
        }
        Ok(())
    })
}

/// Whether proposals are queued in the group (openmls refuses to encrypt
/// application messages until they are committed).
pub fn has_pending_proposals(db: &StateDb, group_id: &[u8]) -> Result<bool> {
    match MlsGroup::load(db.provider().storage(), &GroupId::from_slice(group_id))? {
        Some(g) => Ok(g.has_pending_proposals()),
        None => Ok(false),
    }
}

/// Drops the queued proposals of a group (own leave proposal rejected).
pub fn clear_pending_proposals(db: &StateDb, group_id: &[u8]) -> Result<()> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        group.clear_pending_proposals(provider.storage())?;
        Ok(())
    })
}

/// Creates the self-remove proposal of a member leaving (a PublicMessage).
pub fn leave(db: &StateDb, id: &Identity, group_id: &[u8]) -> Result<Vec<u8>> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        let msg = group
            .leave_group(&provider, &id.keys)
            .map_err(|e| ClientError::mls("leave group", e))?;
        ser("encode proposal", &msg)
    })
}

/// Encrypts an application payload (a PrivateMessage).
pub fn encrypt(db: &StateDb, id: &Identity, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        let msg = group
            .create_message(&provider, &id.keys, plaintext)
            .map_err(|e| ClientError::mls("encrypt", e))?;
        ser("encode message", &msg)
    })
}

/// Joins a group from a Welcome (and the ratchet tree the server serves with
/// it). Returns the group id. An existing local group with that id (from an
/// earlier membership) is replaced.
pub fn join_from_welcome(db: &StateDb, welcome: &[u8], ratchet_tree: &[u8]) -> Result<Vec<u8>> {
    let welcome = match parse_message(welcome)?.extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => return Err(ClientError::Protocol("inbox item is not a Welcome".into())),
    };
    let tree = if ratchet_tree.is_empty() {
        None
    } else {
        Some(parse_tree(ratchet_tree)?)
    };
    db.atomically(|db| {
        let provider = db.provider();
        let mut builder = StagedWelcome::build_from_welcome(&provider, &join_config(), welcome)
            .map_err(|e| ClientError::mls("process welcome", e))?
            .replace_old_group();
        if let Some(tree) = tree {
            builder = builder.with_ratchet_tree(tree);
        }
        let group = builder
            .build()
            .map_err(|e| ClientError::mls("stage welcome", e))?
            .into_group(&provider)
            .map_err(|e| ClientError::mls("join group", e))?;
        Ok(group.group_id().to_vec())
    })
}

/// The group id inside a Welcome cannot be read without decrypting; the
/// inbox item carries it. This checks that an MLSMessage is a Welcome.
pub fn is_welcome(bytes: &[u8]) -> bool {
    matches!(
        parse_message(bytes).map(|m| m.extract()),
        Ok(MlsMessageBodyIn::Welcome(_))
    )
}

/// Joins a group by external commit from its GroupInfo and ratchet tree.
/// The local group is created already merged; if the server rejects the
/// commit, call [`delete_group`] and try again with a fresh GroupInfo.
pub fn external_join(
    db: &StateDb,
    id: &Identity,
    group_info: &[u8],
    ratchet_tree: &[u8],
) -> Result<(Vec<u8>, CommitOut)> {
    let gi = match parse_message(group_info)?.extract() {
        MlsMessageBodyIn::GroupInfo(gi) => gi,
        _ => return Err(ClientError::Protocol("expected a GroupInfo".into())),
    };
    let tree = if ratchet_tree.is_empty() {
        None
    } else {
        Some(parse_tree(ratchet_tree)?)
    };
    db.atomically(|db| {
        let provider = db.provider();
        // A stale local copy of the group (left, removed) must not block the join.
        delete_group(db, gi.group_id().as_slice())?;
        let mut builder = MlsGroup::external_commit_builder().with_config(join_config());
        if let Some(tree) = tree {
            builder = builder.with_ratchet_tree(tree);
        }
        let epoch = gi.epoch().as_u64();
        let (group, bundle) = builder
            .build_group(&provider, gi, credential(id))
            .map_err(|e| ClientError::mls("external join", e))?
            .load_psks(provider.storage())
            .map_err(|e| ClientError::mls("external join", e))?
            .build(provider.rand(), provider.crypto(), &id.keys, |_| true)
            .map_err(|e| ClientError::mls("external join", e))?
            .finalize(&provider)
            .map_err(|e| ClientError::mls("external join", e))?;
        let group_info = group
            .export_group_info(provider.crypto(), &id.keys, false)
            .map_err(|e| ClientError::mls("export group info", e))?;
        Ok((
            group.group_id().to_vec(),
            CommitOut {
                commit: ser("encode commit", bundle.commit())?,
                welcome: None,
                group_info: ser("encode group info", &group_info)?,
                ratchet_tree: tree_bytes(&group.export_ratchet_tree())?,
                epoch,
            },
        ))
    })
}

/// A leaf that a commit adds or changes, as seen after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedLeaf {
    /// Its index in the tree.
    pub leaf: u32,
    /// Its identity after the commit.
    pub identity: String,
    /// Its signature key after the commit.
    pub signature_key: Vec<u8>,
    /// The identity the leaf had before, when the commit kept the leaf (did
    /// not remove it): the application requires it to be the same.
    pub previous_identity: Option<String>,
}

/// What a received message asks the application to authenticate before
/// it is applied (openmls leaves credential checks to the application).
#[derive(Debug)]
pub struct Authenticate<'a> {
    /// The MLS sender: the member that signed it, or for an external
    /// commit the joiner.
    pub sender: &'a str,
    /// The sender's leaf signature key, when its leaf is in the tree.
    pub sender_key: Option<&'a [u8]>,
    /// The leaves a commit adds or changes (empty for other messages).
    pub changed_leaves: &'a [ChangedLeaf],
}

/// A leaf as a snapshot: (index, identity, signature key).
type LeafRow = (u32, String, Vec<u8>);

fn leaf_rows(group: &MlsGroup) -> Vec<LeafRow> {
    group
        .members()
        .map(|m| {
            (
                m.index.u32(),
                credential_identity(&m.credential),
                m.signature_key,
            )
        })
        .collect()
}

/// The leaves of `after` that are new or differ from `before` (ignoring
/// leaves whose index a Remove freed in between).
fn changed_leaves(
    before: &[LeafRow],
    after: &[LeafRow],
    removed: &std::collections::BTreeSet<u32>,
) -> Vec<ChangedLeaf> {
    after
        .iter()
        .filter_map(|(leaf, identity, key)| {
            let kept = before
                .iter()
                .find(|(l, _, _)| l == leaf && !removed.contains(l));
            if kept.is_some_and(|(_, i, k)| i == identity && k == key) {
                return None;
            }
            Some(ChangedLeaf {
                leaf: *leaf,
                identity: identity.clone(),
                signature_key: key.clone(),
                previous_identity: kept.map(|(_, i, _)| i.clone()),
            })
        })
        .collect()
}

/// The members of a group with their leaf signature keys (to check a tree
/// this device joined).
pub fn leaves(db: &StateDb, group_id: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let g = load_group(db, group_id)?;
    Ok(leaf_rows(&g)
        .into_iter()
        .map(|(_, identity, key)| (identity, key))
        .collect())
}

/// What processing one timeline message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Processed {
    /// An application message from `sender` ("<user>/<device>").
    Application {
        /// MLS-authenticated sender identity.
        sender: String,
        /// The plaintext (an [`crate::envelope::Envelope`]).
        plaintext: Vec<u8>,
    },
    /// A standalone proposal, queued until the next commit.
    Proposal {
        /// Proposer identity.
        sender: String,
        /// Identities this proposal removes (a leave, usually).
        removes: Vec<String>,
    },
    /// A commit, merged: the group is in a new epoch.
    Commit {
        /// Committer identity.
        sender: String,
        /// Added member identities (external joiners included).
        added: Vec<String>,
        /// Removed member identities (by someone else).
        removed: Vec<String>,
        /// Member identities that left: their own remove proposal, which
        /// the committer only carried out.
        left: Vec<String>,
        /// True when this commit removed this device.
        self_removed: bool,
        /// True for an external join (the sender joined itself).
        external: bool,
    },
    /// This device's own commit (it was still pending): merged.
    OwnCommit,
    /// This device's own application message: nothing to do.
    OwnMessage,
}

/// Processes one timeline message (a commit, proposal or application
/// message) and applies it to the group state. Runs atomically: once the
/// message is decrypted and verified (and a commit merged), `authenticate`
/// is asked about its sender and the leaves it changes, and an error from it
/// rolls everything back, as if the message had never been processed.
pub fn process(
    db: &StateDb,
    group_id: &[u8],
    message: &[u8],
    authenticate: impl FnOnce(&Authenticate<'_>) -> Result<()>,
) -> Result<Processed> {
    let msg = parse_message(message)?;
    let protocol = msg
        .try_into_protocol_message()
        .map_err(|e| ClientError::codec("timeline entry is not a protocol message", e))?;
    if protocol.group_id().as_slice() != group_id {
        return Err(ClientError::Protocol(
            "message belongs to another group".into(),
        ));
    }
    db.atomically(|db| {
        let provider = db.provider();
        let mut group = load_group(db, group_id)?;
        let processed = group
            .process_message(&provider, protocol)
            .map_err(|e| ClientError::mls("process message", e))?;
        let sender = credential_identity(processed.credential());
        let external = matches!(processed.sender(), Sender::NewMemberCommit);
        let sender_key = match processed.sender() {
            Sender::Member(idx) => group.member_at(*idx).map(|m| m.signature_key),
            _ => None,
        };
        fn plain<'a>(sender: &'a str, sender_key: Option<&'a [u8]>) -> Authenticate<'a> {
            Authenticate {
                sender,
                sender_key,
                changed_leaves: &[],
            }
        }
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                authenticate(&plain(&sender, sender_key.as_deref()))?;
                Ok(Processed::Application {
                    sender,
                    plaintext: app.into_bytes(),
                })
            }
            ProcessedMessageContent::ProposalMessage(queued)
            | ProcessedMessageContent::ExternalJoinProposalMessage(queued) => {
                let removes = match queued.proposal() {
                    Proposal::Remove(r) => group
                        .member(r.removed())
                        .map(credential_identity)
                        .into_iter()
                        .collect(),
                    Proposal::SelfRemove => vec![sender.clone()],
                    _ => vec![],
                };
                authenticate(&plain(&sender, sender_key.as_deref()))?;
                group
                    .store_pending_proposal(provider.storage(), *queued)
                    .map_err(|e| ClientError::mls("queue proposal", e))?;
                Ok(Processed::Proposal { sender, removes })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let mut added: Vec<String> = staged
                    .add_proposals()
                    .map(|p| key_package_identity(p.add_proposal().key_package()))
                    .collect();
                if external {
                    added.push(sender.clone());
                }
                let (mut removed, mut left) = (Vec::new(), Vec::new());
                for p in staged.remove_proposals() {
                    let leaf = p.remove_proposal().removed();
                    let Some(id) = group.member(leaf).map(credential_identity) else {
                        continue;
                    };
                    match p.sender() {
                        Sender::Member(by) if *by == leaf => left.push(id),
                        _ => removed.push(id),
                    }
                }
                let self_removed = staged.self_removed();
                let freed: std::collections::BTreeSet<u32> = staged
                    .remove_proposals()
                    .map(|p| p.remove_proposal().removed().u32())
                    .collect();
                let before = leaf_rows(&group);
                group
                    .merge_staged_commit(&provider, *staged)
                    .map_err(|e| ClientError::mls("merge commit", e))?;
                let changed = if self_removed {
                    // The tree is gone; nothing here will be shown any more.
                    Vec::new()
                } else {
                    changed_leaves(&before, &leaf_rows(&group), &freed)
                };
                authenticate(&Authenticate {
                    sender: &sender,
                    sender_key: sender_key.as_deref(),
                    changed_leaves: &changed,
                })?;
                Ok(Processed::Commit {
                    sender,
                    added,
                    removed,
                    left,
                    self_removed,
                    external,
                })
            }
            ProcessedMessageContent::OwnPendingCommit => {
                group
                    .merge_pending_commit(&provider)
                    .map_err(|e| ClientError::mls("merge own commit", e))?;
                Ok(Processed::OwnCommit)
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Processed::OwnMessage),
        }
    })
}

/// The epoch an MLSMessage (commit/proposal/application) was made in, and
/// whether it is a PublicMessage.
pub fn message_epoch(bytes: &[u8]) -> Result<u64> {
    let m = parse_message(bytes)?;
    let p = m
        .try_into_protocol_message()
        .map_err(|e| ClientError::codec("not a protocol message", e))?;
    Ok(p.epoch().as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user: &str, device: &str) -> (StateDb, Identity) {
        let db = StateDb::open_in_memory().unwrap();
        let id = Identity {
            user_id: user.into(),
            device_id: device.into(),
            keys: new_device_keys().unwrap(),
            server: "http://test".into(),
        };
        db.save_identity(&id).unwrap();
        (db, id)
    }

    fn claim(db: &StateDb, id: &Identity, owner_db: &StateDb, last_resort: bool) -> KeyPackage {
        let (kps, lr) = new_key_packages(owner_db, id, 1, last_resort).unwrap();
        let bytes = if last_resort {
            lr.unwrap()
        } else {
            kps[0].clone()
        };
        parse_key_package(db, &bytes).unwrap()
    }

    fn text(db: &StateDb, id: &Identity, g: &[u8], s: &str) -> Vec<u8> {
        encrypt(db, id, g, s.as_bytes()).unwrap()
    }

    /// Processing that authenticates nothing (these tests are about MLS).
    fn process(db: &StateDb, g: &[u8], m: &[u8]) -> Result<Processed> {
        super::process(db, g, m, |_| Ok(()))
    }

    /// Two (then three) devices doing MLS through the client's own code
    /// paths, bytes on the "wire" exactly as the server would relay them.
    #[test]
    fn create_add_message_remove_leave_and_external_join() {
        let (adb, alice) = device("alice", "aaaaaaaaaaaaaaaa");
        let (bdb, bob) = device("bob", "bbbbbbbbbbbbbbbb");
        let g = create_group(&adb, &alice).unwrap();
        assert_eq!(epoch(&adb, &g.group_id).unwrap(), 0);
        assert!(message_epoch(&g.group_info).is_err()); // GroupInfo is not a protocol message

        // alice adds bob with a KeyPackage bob made (the server would relay it).
        let bob_kp = claim(&adb, &bob, &bdb, false);
        assert_eq!(key_package_identity(&bob_kp), "bob/bbbbbbbbbbbbbbbb");
        let c = commit(&adb, &alice, &g.group_id, Change::Add(vec![bob_kp])).unwrap();
        assert_eq!(c.epoch, 0);
        assert_eq!(message_epoch(&c.commit).unwrap(), 0);
        merge_pending(&adb, &g.group_id).unwrap();
        let welcome = c.welcome.expect("adding yields a welcome");
        assert!(is_welcome(&welcome));
        let gid = join_from_welcome(&bdb, &welcome, &c.ratchet_tree).unwrap();
        assert_eq!(gid, g.group_id);
        assert_eq!(epoch(&bdb, &gid).unwrap(), 1);
        let ids: Vec<String> = members(&bdb, &gid)
            .unwrap()
            .into_iter()
            .map(|m| m.identity)
            .collect();
        assert_eq!(ids, vec!["alice/aaaaaaaaaaaaaaaa", "bob/bbbbbbbbbbbbbbbb"]);

        // Application messages both ways; own messages are recognised.
        let m = text(&adb, &alice, &gid, "hello bob");
        assert_eq!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application {
                sender: "alice/aaaaaaaaaaaaaaaa".into(),
                plaintext: b"hello bob".to_vec()
            }
        );
        // Re-processing the same message is an error, not a panic.
        assert!(process(&bdb, &gid, &m).is_err());
        assert_eq!(process(&adb, &gid, &m).unwrap(), Processed::OwnMessage);
        let m = text(&bdb, &bob, &gid, "hi alice");
        assert!(matches!(
            process(&adb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));

        // carol joins via alice's add using her last-resort package.
        let (cdb, carol) = device("carol", "cccccccccccccccc");
        let carol_kp = claim(&adb, &carol, &cdb, true);
        assert!(carol_kp.last_resort());
        // A message in epoch 1 sent just before the commit...
        let late = text(&bdb, &bob, &gid, "late");
        let c = commit(&adb, &alice, &gid, Change::Add(vec![carol_kp])).unwrap();
        merge_pending(&adb, &gid).unwrap();
        // ...still decrypts after alice moved to epoch 2 (max_past_epochs).
        assert!(matches!(
            process(&adb, &gid, &late).unwrap(),
            Processed::Application { .. }
        ));
        match process(&bdb, &gid, &c.commit).unwrap() {
            Processed::Commit {
                added,
                removed,
                external,
                ..
            } => {
                assert_eq!(added, vec!["carol/cccccccccccccccc"]);
                assert!(removed.is_empty());
                assert!(!external);
            }
            other => panic!("unexpected {other:?}"),
        }
        join_from_welcome(&cdb, c.welcome.as_ref().unwrap(), &c.ratchet_tree).unwrap();
        let m = text(&cdb, &carol, &gid, "hey all");
        assert!(matches!(
            process(&adb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
        assert!(matches!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));

        // A commit that loses the race is cleared and redone.
        let loser = commit(&bdb, &bob, &gid, Change::PendingProposals).unwrap();
        let winner = commit(&adb, &alice, &gid, Change::PendingProposals).unwrap();
        merge_pending(&adb, &gid).unwrap();
        clear_pending(&bdb, &gid).unwrap();
        assert!(matches!(
            process(&bdb, &gid, &winner.commit).unwrap(),
            Processed::Commit { .. }
        ));
        assert!(matches!(
            process(&cdb, &gid, &winner.commit).unwrap(),
            Processed::Commit { .. }
        ));
        assert!(process(&cdb, &gid, &loser.commit).is_err());
        // A crashed committer that sees its own pending commit merges it.
        let own = commit(&adb, &alice, &gid, Change::PendingProposals).unwrap();
        assert_eq!(
            process(&adb, &gid, &own.commit).unwrap(),
            Processed::OwnCommit
        );
        process(&bdb, &gid, &own.commit).unwrap();
        process(&cdb, &gid, &own.commit).unwrap();
        let e = epoch(&adb, &gid).unwrap();
        assert_eq!(
            (epoch(&bdb, &gid).unwrap(), epoch(&cdb, &gid).unwrap()),
            (e, e)
        );

        // bob leaves: his proposal is queued by the others; alice commits it.
        let p = leave(&bdb, &bob, &gid).unwrap();
        assert_eq!(
            process(&adb, &gid, &p).unwrap(),
            Processed::Proposal {
                sender: "bob/bbbbbbbbbbbbbbbb".into(),
                removes: vec!["bob/bbbbbbbbbbbbbbbb".into()]
            }
        );
        process(&cdb, &gid, &p).unwrap();
        let c = commit(&adb, &alice, &gid, Change::PendingProposals).unwrap();
        merge_pending(&adb, &gid).unwrap();
        match process(&cdb, &gid, &c.commit).unwrap() {
            // A leave: bob's own proposal, which alice only carried out.
            Processed::Commit { removed, left, .. } => {
                assert_eq!(left, vec!["bob/bbbbbbbbbbbbbbbb"]);
                assert!(removed.is_empty(), "{removed:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        match process(&bdb, &gid, &c.commit).unwrap() {
            Processed::Commit { self_removed, .. } => assert!(self_removed),
            other => panic!("unexpected {other:?}"),
        }

        // alice removes carol by leaf.
        let carol_leaf = members(&adb, &gid)
            .unwrap()
            .into_iter()
            .find(|m| m.identity.starts_with("carol/"))
            .unwrap()
            .leaf;
        let c = commit(&adb, &alice, &gid, Change::Remove(vec![carol_leaf])).unwrap();
        merge_pending(&adb, &gid).unwrap();
        assert!(matches!(
            process(&cdb, &gid, &c.commit).unwrap(),
            Processed::Commit {
                self_removed: true,
                ..
            }
        ));

        // A second device of alice joins by external commit from the
        // GroupInfo + tree of the latest commit.
        let (a2db, alice2) = device("alice", "a2a2a2a2a2a2a2a2");
        let (gid2, ext) = external_join(&a2db, &alice2, &c.group_info, &c.ratchet_tree).unwrap();
        assert_eq!(gid2, gid);
        match process(&adb, &gid, &ext.commit).unwrap() {
            Processed::Commit {
                added,
                external,
                sender,
                ..
            } => {
                assert!(external);
                assert_eq!(sender, "alice/a2a2a2a2a2a2a2a2");
                assert_eq!(added, vec!["alice/a2a2a2a2a2a2a2a2"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        let m = text(&a2db, &alice2, &gid, "from my laptop");
        assert!(matches!(
            process(&adb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
        let m = text(&adb, &alice, &gid, "from my phone");
        assert!(matches!(
            process(&a2db, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
    }

    /// The HPKE encryption key of `identity`'s leaf as `db`'s device sees it.
    fn leaf_key(db: &StateDb, g: &[u8], identity: &str) -> Vec<u8> {
        load_group(db, g)
            .unwrap()
            .members()
            .find(|m| credential_identity(&m.credential) == identity)
            .expect("member present")
            .encryption_key
    }

    /// bob rotates his keys; alice and carol process the commit, land on
    /// bob's epoch, see his new leaf key, and everybody keeps talking.
    #[test]
    fn self_update_rotates_leaf_key_and_keeps_members_in_sync() {
        let (adb, alice) = device("alice", "aaaaaaaaaaaaaaaa");
        let (bdb, bob) = device("bob", "bbbbbbbbbbbbbbbb");
        let (cdb, carol) = device("carol", "cccccccccccccccc");
        let gid = create_group(&adb, &alice).unwrap().group_id;
        let kps = vec![
            claim(&adb, &bob, &bdb, false),
            claim(&adb, &carol, &cdb, false),
        ];
        let c = commit(&adb, &alice, &gid, Change::Add(kps)).unwrap();
        merge_pending(&adb, &gid).unwrap();
        let w = c.welcome.unwrap();
        join_from_welcome(&bdb, &w, &c.ratchet_tree).unwrap();
        join_from_welcome(&cdb, &w, &c.ratchet_tree).unwrap();

        let bob_id = bob.mls_identity();
        let old_key = leaf_key(&bdb, &gid, &bob_id);
        assert_eq!(leaf_key(&adb, &gid, &bob_id), old_key);
        let alice_key = leaf_key(&adb, &gid, &alice.mls_identity());
        let before = epoch(&bdb, &gid).unwrap();
        // Sent in the old epoch, delivered after the update.
        let late = text(&adb, &alice, &gid, "before the update");

        let u = commit(&bdb, &bob, &gid, Change::SelfUpdate).unwrap();
        assert_eq!(u.epoch, before);
        assert!(u.welcome.is_none(), "a self-update adds nobody");
        // What the server needs: a PublicMessage commit, a GroupInfo, a tree.
        let wire = parse_message(&u.commit)
            .unwrap()
            .try_into_protocol_message()
            .unwrap();
        assert!(matches!(wire, ProtocolMessage::PublicMessage(_)));
        assert_eq!(message_epoch(&u.commit).unwrap(), before);
        assert!(matches!(
            parse_message(&u.group_info).unwrap().extract(),
            MlsMessageBodyIn::GroupInfo(_)
        ));
        assert!(!u.ratchet_tree.is_empty());
        // Nothing changes before the server accepted it.
        assert_eq!(epoch(&bdb, &gid).unwrap(), before);
        merge_pending(&bdb, &gid).unwrap();

        let e = epoch(&bdb, &gid).unwrap();
        assert_eq!(e, before + 1);
        let new_key = leaf_key(&bdb, &gid, &bob_id);
        assert_ne!(new_key, old_key, "bob's leaf encryption key was rotated");
        assert_eq!(leaf_key(&bdb, &gid, &alice.mls_identity()), alice_key);

        for (db, who) in [(&adb, "alice"), (&cdb, "carol")] {
            assert_eq!(
                process(db, &gid, &u.commit).unwrap(),
                Processed::Commit {
                    sender: bob_id.clone(),
                    added: vec![],
                    removed: vec![],
                    left: vec![],
                    self_removed: false,
                    external: false,
                },
                "{who} processes bob's self-update"
            );
            assert_eq!(epoch(db, &gid).unwrap(), e, "{who} is on bob's epoch");
            assert_eq!(
                leaf_key(db, &gid, &bob_id),
                new_key,
                "{who} sees the new key"
            );
            assert_eq!(members(db, &gid).unwrap(), members(&bdb, &gid).unwrap());
        }

        // The message from the old epoch still decrypts (max_past_epochs).
        assert!(matches!(
            process(&bdb, &gid, &late).unwrap(),
            Processed::Application { .. }
        ));
        // Messages flow both ways in the new epoch.
        let m = text(&bdb, &bob, &gid, "fresh keys");
        for db in [&adb, &cdb] {
            assert_eq!(
                process(db, &gid, &m).unwrap(),
                Processed::Application {
                    sender: bob_id.clone(),
                    plaintext: b"fresh keys".to_vec()
                }
            );
        }
        let m = text(&adb, &alice, &gid, "welcome back");
        assert!(matches!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
        let m = text(&cdb, &carol, &gid, "me too");
        assert!(matches!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));

        // A second self-update rotates again, and the GroupInfo + tree it
        // publishes are good enough for an external join.
        let u2 = commit(&bdb, &bob, &gid, Change::SelfUpdate).unwrap();
        merge_pending(&bdb, &gid).unwrap();
        assert_ne!(leaf_key(&bdb, &gid, &bob_id), new_key);
        process(&adb, &gid, &u2.commit).unwrap();
        process(&cdb, &gid, &u2.commit).unwrap();
        let (b2db, bob2) = device("bob", "b2b2b2b2b2b2b2b2");
        let (_, ext) = external_join(&b2db, &bob2, &u2.group_info, &u2.ratchet_tree).unwrap();
        for db in [&adb, &bdb, &cdb] {
            assert!(matches!(
                process(db, &gid, &ext.commit).unwrap(),
                Processed::Commit { external: true, .. }
            ));
        }
        let e = epoch(&b2db, &gid).unwrap();
        for db in [&adb, &bdb, &cdb] {
            assert_eq!(epoch(db, &gid).unwrap(), e);
        }

        // Losing the epoch race: the self-update is dropped and redone on
        // top of the winner, and the others follow the redone one.
        let lost = commit(&bdb, &bob, &gid, Change::SelfUpdate).unwrap();
        let winner = commit(&adb, &alice, &gid, Change::SelfUpdate).unwrap();
        merge_pending(&adb, &gid).unwrap();
        clear_pending(&bdb, &gid).unwrap();
        for db in [&bdb, &cdb, &b2db] {
            process(db, &gid, &winner.commit).unwrap();
        }
        assert!(process(&cdb, &gid, &lost.commit).is_err());
        let key = leaf_key(&bdb, &gid, &bob_id);
        let redo = commit(&bdb, &bob, &gid, Change::SelfUpdate).unwrap();
        merge_pending(&bdb, &gid).unwrap();
        for db in [&adb, &cdb, &b2db] {
            process(db, &gid, &redo.commit).unwrap();
            assert_eq!(leaf_key(db, &gid, &bob_id), leaf_key(&bdb, &gid, &bob_id));
        }
        assert_ne!(leaf_key(&bdb, &gid, &bob_id), key);
        let e = epoch(&bdb, &gid).unwrap();
        for db in [&adb, &cdb, &b2db] {
            assert_eq!(epoch(db, &gid).unwrap(), e);
        }
        let m = text(&b2db, &bob2, &gid, "from bob's laptop");
        for db in [&adb, &bdb, &cdb] {
            assert!(matches!(
                process(db, &gid, &m).unwrap(),
                Processed::Application { .. }
            ));
        }

        // Pending proposals are committed along with the update, and the
        // leaf is rotated even when they would not need a path themselves
        // (an Add does not; an empty commit always has one).
        let (ddb, dave) = device("dave", "dddddddddddddddd");
        let dave_kp = claim(&adb, &dave, &ddb, false);
        let proposal = {
            let provider = adb.provider();
            let mut g = load_group(&adb, &gid).unwrap();
            let (msg, _) = g
                .propose_add_member(&provider, &alice.keys, &dave_kp)
                .unwrap();
            ser("encode proposal", &msg).unwrap()
        };
        for db in [&bdb, &cdb, &b2db] {
            assert!(matches!(
                process(db, &gid, &proposal).unwrap(),
                Processed::Proposal { .. }
            ));
        }
        let key = leaf_key(&bdb, &gid, &bob_id);
        let u = commit(&bdb, &bob, &gid, Change::SelfUpdate).unwrap();
        merge_pending(&bdb, &gid).unwrap();
        assert_ne!(leaf_key(&bdb, &gid, &bob_id), key, "rotated with an Add");
        for db in [&adb, &cdb, &b2db] {
            match process(db, &gid, &u.commit).unwrap() {
                Processed::Commit { added, .. } => {
                    assert_eq!(added, vec!["dave/dddddddddddddddd"])
                }
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(leaf_key(db, &gid, &bob_id), leaf_key(&bdb, &gid, &bob_id));
        }
        join_from_welcome(&ddb, u.welcome.as_ref().unwrap(), &u.ratchet_tree).unwrap();
        assert_eq!(epoch(&ddb, &gid).unwrap(), epoch(&adb, &gid).unwrap());
        let m = text(&ddb, &dave, &gid, "hi");
        assert!(matches!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
    }

    #[test]
    fn device_key_signs_plain_ed25519() {
        let keys = new_device_keys().unwrap();
        let payload = hush_proto::auth::login_payload(b"challenge");
        let sig = sign_raw(&keys, &payload).unwrap();
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, keys.public());
        pk.verify(&payload, &sig)
            .expect("ring verifies the device signature");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (bdb, bob) = device("bob", "bbbbbbbbbbbbbbbb");
        let gid;
        let c;
        {
            let adb = StateDb::open(dir.path()).unwrap();
            let alice = Identity {
                user_id: "alice".into(),
                device_id: "aaaaaaaaaaaaaaaa".into(),
                keys: new_device_keys().unwrap(),
                server: "http://test".into(),
            };
            adb.save_identity(&alice).unwrap();
            gid = create_group(&adb, &alice).unwrap().group_id;
            let kp = claim(&adb, &bob, &bdb, false);
            c = commit(&adb, &alice, &gid, Change::Add(vec![kp])).unwrap();
            // The process "crashes" before the server's answer: the pending
            // commit is persisted.
        }
        let adb = StateDb::open(dir.path()).unwrap();
        let alice = adb.require_identity().unwrap();
        merge_pending(&adb, &gid).unwrap();
        join_from_welcome(&bdb, c.welcome.as_ref().unwrap(), &c.ratchet_tree).unwrap();
        let m = encrypt(&adb, &alice, &gid, b"after restart").unwrap();
        assert!(matches!(
            process(&bdb, &gid, &m).unwrap(),
            Processed::Application { .. }
        ));
    }
}
