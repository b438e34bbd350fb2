//! GroupTracker and KeyPackage rules against real openmls clients.
//!
//! Every client is a full openmls `MlsGroup` with its own provider, using the
//! PURE_PLAINTEXT handshake policy Hush clients use; the tracker sees only
//! the bytes a client would upload.

use hush_ds::{check_welcome, validate_key_package, DsError, GroupTracker, LeafChange};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

struct Client {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
    group: Option<MlsGroup>,
}

fn join_config(policy: WireFormatPolicy) -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(policy)
        .max_past_epochs(5)
        .build()
}

impl Client {
    fn new(name: &str) -> Self {
        Self::with_suite(name, CS)
    }

    fn with_suite(name: &str, cs: Ciphersuite) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(cs.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Client {
            provider,
            signer,
            cwk,
            group: None,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(CS, &self.provider, &self.signer, self.cwk.clone())
            .unwrap()
            .key_package()
            .clone()
    }

    fn create_group(&mut self, policy: WireFormatPolicy) {
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CS)
            .wire_format_policy(policy)
            .max_past_epochs(5)
            .use_ratchet_tree_extension(false)
            .build();
        let group = MlsGroup::new(&self.provider, &self.signer, &config, self.cwk.clone()).unwrap();
        self.group = Some(group);
    }

    fn g(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("client is in a group")
    }

    fn group_info(&mut self) -> Vec<u8> {
        let g = self.group.as_ref().unwrap();
        g.export_group_info(self.provider.crypto(), &self.signer, false)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn tree(&mut self) -> Vec<u8> {
        self.g()
            .export_ratchet_tree()
            .tls_serialize_detached()
            .unwrap()
    }

    fn epoch(&mut self) -> u64 {
        self.g().epoch().as_u64()
    }

    /// Adds `kps`, merges locally; returns (commit, welcome).
    fn add(&mut self, kps: &[KeyPackage]) -> (Vec<u8>, MlsMessageOut) {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().unwrap();
        let (commit, welcome, _gi) = g.add_members(provider, signer, kps).unwrap();
        g.merge_pending_commit(provider).unwrap();
        (commit.to_bytes().unwrap(), welcome)
    }

    fn remove(&mut self, leaves: &[u32]) -> Vec<u8> {
        let leaves: Vec<LeafNodeIndex> = leaves.iter().map(|&l| LeafNodeIndex::new(l)).collect();
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().unwrap();
        let (commit, _, _) = g.remove_members(provider, signer, &leaves).unwrap();
        g.merge_pending_commit(provider).unwrap();
        commit.to_bytes().unwrap()
    }

    /// A self-update commit, not merged locally.
    fn self_update_pending(&mut self) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().unwrap();
        let bundle = g
            .self_update(provider, signer, LeafNodeParameters::default())
            .unwrap();
        bundle.into_commit().to_bytes().unwrap()
    }

    fn self_update(&mut self) -> Vec<u8> {
        let c = self.self_update_pending();
        let provider = &self.provider;
        self.group
            .as_mut()
            .unwrap()
            .merge_pending_commit(provider)
            .unwrap();
        c
    }

    fn join(&mut self, welcome: MlsMessageOut, tree: &[u8]) {
        let welcome = match MlsMessageIn::from(welcome).extract() {
            MlsMessageBodyIn::Welcome(w) => w,
            _ => panic!("not a welcome"),
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree).unwrap();
        let staged = StagedWelcome::new_from_welcome(
            &self.provider,
            &join_config(PURE_PLAINTEXT_WIRE_FORMAT_POLICY),
            welcome,
            Some(tree),
        )
        .unwrap();
        self.group = Some(staged.into_group(&self.provider).unwrap());
    }

    /// Processes a handshake message from another member.
    fn process(&mut self, bytes: &[u8]) {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).unwrap();
        let provider = &self.provider;
        let g = self.group.as_mut().unwrap();
        let processed = g
            .process_message(provider, msg.try_into_protocol_message().unwrap())
            .unwrap();
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                g.merge_staged_commit(provider, *staged).unwrap()
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                g.store_pending_proposal(provider.storage(), *p).unwrap()
            }
            _ => panic!("unexpected content"),
        }
    }

    fn send(&mut self, text: &[u8]) -> Vec<u8> {
        let (provider, signer) = (&self.provider, &self.signer);
        let g = self.group.as_mut().unwrap();
        g.create_message(provider, signer, text)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn leaf(&mut self) -> u32 {
        self.g().own_leaf_index().u32()
    }
}

fn ids(members: &[hush_ds::Member]) -> Vec<Vec<u8>> {
    members.iter().map(|m| m.identity.clone()).collect()
}

/// alice creates a group, the tracker starts from her GroupInfo + tree.
fn setup() -> (Client, GroupTracker) {
    let mut alice = Client::new("alice/phone");
    alice.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let gi = alice.group_info();
    let tree = alice.tree();
    let tracker = GroupTracker::create(&gi, &tree).unwrap();
    (alice, tracker)
}

/// setup + bob added (epoch 1).
fn setup_with_bob() -> (Client, Client, GroupTracker) {
    let (mut alice, mut tracker) = setup();
    let mut bob = Client::new("bob/laptop");
    let (commit, welcome) = alice.add(&[bob.key_package()]);
    tracker.apply_commit(&commit).unwrap();
    bob.join(welcome, &tracker.ratchet_tree().unwrap());
    (alice, bob, tracker)
}

#[test]
fn create_tracks_creator() {
    let (mut alice, tracker) = setup();
    assert_eq!(tracker.epoch(), 0);
    assert_eq!(tracker.group_id(), alice.g().group_id().as_slice());
    let members = tracker.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].leaf_index, 0);
    assert_eq!(members[0].identity, b"alice/phone");
    assert_eq!(members[0].signature_key, alice.signer.public());
    assert_eq!(
        tracker.member_by_identity(b"alice/phone"),
        Some(members[0].clone())
    );
    assert_eq!(tracker.member_by_identity(b"mallory/x"), None);
    assert_eq!(tracker.ratchet_tree().unwrap(), alice.tree());
    assert!(format!("{tracker:?}").contains("epoch: 0"));
}

#[test]
fn create_rejects_bad_inputs() {
    let mut alice = Client::new("alice/phone");
    alice.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let gi = alice.group_info();
    let tree = alice.tree();
    // Tree of another group: tree hash mismatch.
    let mut other = Client::new("other/x");
    other.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    assert!(matches!(
        GroupTracker::create(&gi, &other.tree()),
        Err(DsError::InvalidMls(_))
    ));
    // A key package is not a GroupInfo.
    let kp = MlsMessageOut::from(alice.key_package()).to_bytes().unwrap();
    assert!(matches!(
        GroupTracker::create(&kp, &tree),
        Err(DsError::WrongWireFormat(_))
    ));
    assert!(matches!(
        GroupTracker::create(&gi, &tree[..tree.len() - 1]),
        Err(DsError::Malformed(_))
    ));
    // Tampered GroupInfo signature.
    let mut bad = gi.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        GroupTracker::create(&bad, &tree),
        Err(DsError::InvalidMls(_))
    ));
    assert!(GroupTracker::create(&gi, &tree).is_ok());
}

#[test]
fn add_member_reports_key_package_ref() {
    let (mut alice, mut tracker) = setup();
    let bob = Client::new("bob/laptop");
    let kp = bob.key_package();
    let kp_bytes = MlsMessageOut::from(kp.clone()).to_bytes().unwrap();
    let valid = validate_key_package(&kp_bytes).unwrap();
    let (commit, _welcome) = alice.add(std::slice::from_ref(&kp));
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.epoch_before, 0);
    assert_eq!(effect.new_epoch, 1);
    assert_eq!(tracker.epoch(), 1);
    assert_eq!(effect.committer, b"alice/phone");
    assert!(!effect.external);
    assert_eq!(effect.added.len(), 1);
    let added = &effect.added[0];
    assert_eq!(added.identity, b"bob/laptop");
    assert_eq!(added.signature_key, bob.signer.public());
    assert_eq!(
        added.key_package_ref,
        kp.hash_ref(alice.provider.crypto()).unwrap().as_slice()
    );
    assert_eq!(added.key_package_ref, valid.hash_ref);
    assert!(effect.removed.is_empty());
    assert_eq!(
        ids(&effect.members_after),
        vec![b"alice/phone".to_vec(), b"bob/laptop".to_vec()]
    );
    assert_eq!(effect.members_after, tracker.members());
    // Tracker and client agree on the tree.
    assert_eq!(tracker.ratchet_tree().unwrap(), alice.tree());
    // The same commit again is stale now.
    assert!(matches!(
        tracker.apply_commit(&commit),
        Err(DsError::StaleEpoch { current: 1 })
    ));
}

#[test]
fn group_info_after_commit_is_checked() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let gi = alice.group_info();
    tracker.check_group_info(&gi).unwrap();
    assert_eq!(bob.epoch(), 1);
    let gi_bob = bob.group_info();
    tracker.check_group_info(&gi_bob).unwrap();

    // Commit bundle GroupInfo, signed with the committer's post-commit key.
    let carol = Client::new("carol/tab");
    // Without a ratchet tree extension, openmls only puts a GroupInfo in the
    // bundle when asked (`create_group_info(true)`); `add_members` returns None.
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().unwrap();
    let bundle = g
        .commit_builder()
        .propose_adds([carol.key_package()])
        .load_psks(provider.storage())
        .unwrap()
        .create_group_info(true)
        .build(provider.rand(), provider.crypto(), signer, |_| true)
        .unwrap()
        .stage_commit(provider)
        .unwrap();
    let (commit, _welcome, bundle_gi) = bundle.into_contents();
    g.merge_pending_commit(provider).unwrap();
    let bundle_gi = MlsMessageOut::from(bundle_gi.unwrap()).to_bytes().unwrap();
    let commit = commit.to_bytes().unwrap();
    // Before the commit is applied the GroupInfo is for a future epoch.
    assert!(matches!(
        tracker.check_group_info(&bundle_gi),
        Err(DsError::StaleEpoch { current: 1 })
    ));
    tracker.apply_commit(&commit).unwrap();
    tracker.check_group_info(&bundle_gi).unwrap();
    // The old one is stale now.
    assert!(matches!(
        tracker.check_group_info(&gi),
        Err(DsError::StaleEpoch { current: 2 })
    ));
    // Tampering with the signature.
    let mut bad = bundle_gi.clone();
    let n = bad.len();
    bad[n - 2] ^= 1;
    assert!(matches!(
        tracker.check_group_info(&bad),
        Err(DsError::InvalidMls(_))
    ));
    // A GroupInfo of another group.
    let mut other = Client::new("other/x");
    other.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    assert!(matches!(
        tracker.check_group_info(&other.group_info()),
        Err(DsError::WrongGroup)
    ));
    // bob, who has not processed the add, signs a GroupInfo of epoch 1.
    assert!(matches!(
        tracker.check_group_info(&bob.group_info()),
        Err(DsError::StaleEpoch { current: 2 })
    ));
    assert!(matches!(
        tracker.check_group_info(&commit),
        Err(DsError::WrongWireFormat(_))
    ));
}

#[test]
fn group_info_signed_by_wrong_member_is_rejected() {
    // bob signs a GroupInfo but claims alice's leaf as signer: build it by
    // splicing alice's signer index into bob's GroupInfo.
    let (mut alice, mut bob, tracker) = setup_with_bob();
    let gi_alice = alice.group_info();
    let gi_bob = bob.group_info();
    // Same group context, confirmation tag and extensions: only the signer
    // index and signature differ. Put bob's signature on alice's payload.
    assert_eq!(gi_alice.len(), gi_bob.len());
    let sig_len = 1 + 64; // VLBytes length prefix + Ed25519 signature
    let mut spliced = gi_alice.clone();
    let n = spliced.len();
    spliced[n - sig_len..].copy_from_slice(&gi_bob[n - sig_len..]);
    assert!(matches!(
        tracker.check_group_info(&spliced),
        Err(DsError::InvalidMls(_))
    ));
}

#[test]
fn remove_self_update_and_members() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let mut carol = Client::new("carol/tab");
    let (commit, welcome) = bob.add(&[carol.key_package()]);
    alice.process(&commit);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.committer, b"bob/laptop");
    carol.join(welcome, &tracker.ratchet_tree().unwrap());
    assert_eq!(tracker.members().len(), 3);

    // Self update by carol.
    let commit = carol.self_update();
    let before = tracker.member_by_identity(b"carol/tab").unwrap();
    let effect = tracker.apply_commit(&commit).unwrap();
    alice.process(&commit);
    bob.process(&commit);
    assert_eq!(effect.committer, b"carol/tab");
    assert!(effect.added.is_empty() && effect.removed.is_empty());
    assert_eq!(effect.new_epoch, 3);
    assert_eq!(tracker.member_by_identity(b"carol/tab"), Some(before));
    assert_eq!(tracker.ratchet_tree().unwrap(), carol.tree());

    // alice removes bob.
    let bob_leaf = bob.leaf();
    let commit = alice.remove(&[bob_leaf]);
    let effect = tracker.apply_commit(&commit).unwrap();
    carol.process(&commit);
    assert_eq!(effect.committer, b"alice/phone");
    assert_eq!(effect.removed, vec![b"bob/laptop".to_vec()]);
    assert_eq!(
        ids(&effect.members_after),
        vec![b"alice/phone".to_vec(), b"carol/tab".to_vec()]
    );
    assert_eq!(tracker.member_by_identity(b"bob/laptop"), None);
    assert_eq!(tracker.ratchet_tree().unwrap(), alice.tree());

    // bob, removed, can no longer commit.
    let stale = bob.self_update_pending();
    assert!(matches!(
        tracker.apply_commit(&stale),
        Err(DsError::StaleEpoch { current: 4 })
    ));
}

#[test]
fn competing_commits_first_wins_second_is_stale() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let a = alice.self_update_pending();
    let b = bob.self_update_pending();
    let effect = tracker.apply_commit(&a).unwrap();
    assert_eq!(effect.new_epoch, 2);
    let snapshot_before = tracker.snapshot().unwrap();
    assert!(matches!(
        tracker.apply_commit(&b),
        Err(DsError::StaleEpoch { current: 2 })
    ));
    // Unchanged by the failure.
    assert_eq!(tracker.snapshot().unwrap(), snapshot_before);
    // bob recovers: drops his pending commit, processes alice's, retries.
    bob.group
        .as_mut()
        .unwrap()
        .clear_pending_commit(bob.provider.storage())
        .unwrap();
    bob.process(&a);
    alice
        .group
        .as_mut()
        .unwrap()
        .merge_pending_commit(&alice.provider)
        .unwrap();
    let b2 = bob.self_update();
    let effect = tracker.apply_commit(&b2).unwrap();
    assert_eq!(effect.committer, b"bob/laptop");
    assert_eq!(effect.new_epoch, 3);
}

#[test]
fn invalid_commit_leaves_tracker_unchanged() {
    let (mut alice, _bob, mut tracker) = setup_with_bob();
    let commit = alice.self_update_pending();
    let before = tracker.snapshot().unwrap();
    // Flip bytes throughout the commit: a refused variant changes nothing.
    // The server has no epoch secrets, so it cannot check the trailing
    // confirmation tag and membership tag (VLBytes of 32 each, not covered
    // by the signature): flips there are accepted. Everything else must be
    // refused.
    let unverifiable_tail = 2 * 33;
    for i in 0..commit.len() {
        let mut bad = commit.clone();
        bad[i] ^= 0x5a;
        match tracker.apply_commit(&bad) {
            Ok(_) => {
                assert!(i >= commit.len() - unverifiable_tail, "byte {i} accepted");
                tracker = GroupTracker::load(&before).unwrap();
            }
            Err(_) => assert_eq!(tracker.snapshot().unwrap(), before),
        }
    }
    tracker.apply_commit(&commit).unwrap();
}

#[test]
fn external_join_and_rejoin() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let gi = alice.group_info();
    tracker.check_group_info(&gi).unwrap();
    let tree = tracker.ratchet_tree().unwrap();

    // dave joins from the GroupInfo the server keeps.
    let mut dave = Client::new("dave/desktop");
    let commit = external_join(&mut dave, &gi, &tree);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert!(effect.external);
    assert_eq!(effect.committer, b"dave/desktop");
    assert!(effect.added.is_empty());
    assert!(effect.removed.is_empty());
    assert_eq!(effect.new_epoch, 2);
    assert!(tracker.member_by_identity(b"dave/desktop").is_some());
    alice.process(&commit);
    bob.process(&commit);
    assert_eq!(tracker.ratchet_tree().unwrap(), dave.tree());

    // bob lost his group state (not his signature key) and rejoins: openmls
    // adds a Remove of the leaf with the joiner's signature key.
    let gi = dave.group_info();
    tracker.check_group_info(&gi).unwrap();
    let tree = tracker.ratchet_tree().unwrap();
    let mut bob2 = Client::new("bob/laptop");
    bob2.signer = SignatureKeyPair::read(
        bob.provider.storage(),
        bob.signer.public(),
        bob.signer.signature_scheme(),
    )
    .unwrap();
    bob2.signer.store(bob2.provider.storage()).unwrap();
    bob2.cwk = bob.cwk.clone();
    let commit = external_join(&mut bob2, &gi, &tree);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert!(effect.external);
    assert_eq!(effect.committer, b"bob/laptop");
    assert_eq!(effect.removed, vec![b"bob/laptop".to_vec()]);
    let bobs: Vec<_> = tracker
        .members()
        .into_iter()
        .filter(|m| m.identity == b"bob/laptop")
        .collect();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].signature_key, bob2.signer.public());
    alice.process(&commit);
    assert_eq!(tracker.ratchet_tree().unwrap(), alice.tree());
}

/// A commit by `client` whose update path carries `cwk` (signed by
/// `new_signer` when it brings a new key); not merged locally.
fn update_with(
    client: &mut Client,
    cwk: CredentialWithKey,
    new_signer: Option<&SignatureKeyPair>,
) -> Vec<u8> {
    let (provider, signer) = (&client.provider, &client.signer);
    let g = client.group.as_mut().unwrap();
    let bundle = match new_signer {
        Some(new) => g.self_update_with_new_signer(
            provider,
            signer,
            NewSignerBundle {
                signer: new,
                credential_with_key: cwk,
            },
            LeafNodeParameters::default(),
        ),
        None => g.self_update(
            provider,
            signer,
            LeafNodeParameters::builder()
                .with_credential_with_key(cwk)
                .build(),
        ),
    }
    .unwrap();
    bundle.into_commit().to_bytes().unwrap()
}

fn credential(identity: &str, key: &[u8]) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: key.into(),
    }
}

#[test]
fn honest_self_update_changes_no_leaf() {
    let (_alice, mut bob, mut tracker) = setup_with_bob();
    let commit = bob.self_update();
    let effect = tracker.apply_commit(&commit).unwrap();
    assert!(
        effect.changed_leaves.is_empty(),
        "{:?}",
        effect.changed_leaves
    );
    assert!(effect.removed_leaves.is_empty());
    effect.check_leaf_identities().unwrap();
}

#[test]
fn added_members_are_new_leaves() {
    let (mut alice, mut tracker) = setup();
    let bob = Client::new("bob/laptop");
    let (commit, _) = alice.add(&[bob.key_package()]);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.changed_leaves.len(), 1);
    let c = &effect.changed_leaves[0];
    assert_eq!(c.before, None);
    assert_eq!(c.after.identity, b"bob/laptop");
    assert_eq!(c.after.signature_key, bob.signer.public());
    assert!(!c.changes_identity());
    effect.check_leaf_identities().unwrap();
}

/// The attack at the tracker: bob's update path claims alice's
/// identity (with his own key, or a new one). openmls accepts it; the
/// tracker reports the change and the rule refuses it.
#[test]
fn an_update_path_that_takes_another_identity_is_forbidden() {
    for new_key in [false, true] {
        let (_alice, mut bob, mut tracker) = setup_with_bob();
        let held = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
        let key = if new_key {
            held.public().to_vec()
        } else {
            bob.signer.public().to_vec()
        };
        let commit = update_with(
            &mut bob,
            credential("alice/phone", &key),
            new_key.then_some(&held),
        );
        let bob_leaf = bob.leaf();
        let effect = tracker.apply_commit(&commit).unwrap();
        assert_eq!(effect.committer, b"bob/laptop");
        assert_eq!(effect.changed_leaves.len(), 1);
        let c = &effect.changed_leaves[0];
        assert_eq!(c.after.leaf_index, bob_leaf);
        assert_eq!(c.before.as_ref().unwrap().identity, b"bob/laptop");
        assert_eq!(c.after.identity, b"alice/phone");
        assert_eq!(c.after.signature_key, key);
        assert!(c.changes_identity());
        assert!(matches!(
            effect.check_leaf_identities(),
            Err(DsError::Forbidden(_))
        ));
    }
}

/// A new signature key under the same identity is reported (the node
/// compares it with the directory), but is not an identity change.
#[test]
fn a_new_signature_key_is_reported() {
    let (_alice, mut bob, mut tracker) = setup_with_bob();
    let held = SignatureKeyPair::new(CS.signature_algorithm()).unwrap();
    let commit = update_with(
        &mut bob,
        credential("bob/laptop", held.public()),
        Some(&held),
    );
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(
        effect.changed_leaves,
        vec![LeafChange {
            before: Some(hush_ds::Member {
                leaf_index: 1,
                identity: b"bob/laptop".to_vec(),
                signature_key: bob.signer.public().to_vec(),
            }),
            after: hush_ds::Member {
                leaf_index: 1,
                identity: b"bob/laptop".to_vec(),
                signature_key: held.public().to_vec(),
            },
        }]
    );
    effect.check_leaf_identities().unwrap();
}

/// A standalone Update proposal is reported when it changes the
/// proposer's identity or key; committed by reference, the commit reports
/// the same change.
#[test]
fn update_proposals_report_the_leaf_they_would_change() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let params = LeafNodeParameters::builder()
        .with_credential_with_key(credential("alice/phone", bob.signer.public()))
        .build();
    let (provider, signer) = (&bob.provider, &bob.signer);
    let (proposal, _) = bob
        .group
        .as_mut()
        .unwrap()
        .propose_self_update(provider, signer, params)
        .unwrap();
    let proposal = proposal.to_bytes().unwrap();
    let effect = tracker.apply_proposal(&proposal).unwrap();
    let update = effect.update.clone().expect("an update");
    assert!(update.changes_identity());
    assert!(matches!(
        effect.check_leaf_identities(),
        Err(DsError::Forbidden(_))
    ));
    // If the node let it through, the commit that covers it reports it too.
    alice.process(&proposal);
    let (provider, signer) = (&alice.provider, &alice.signer);
    let g = alice.group.as_mut().unwrap();
    let bundle = g.commit_to_pending_proposals(provider, signer).unwrap();
    let commit = bundle.0.to_bytes().unwrap();
    let effect = tracker.apply_commit(&commit).unwrap();
    assert!(effect
        .changed_leaves
        .iter()
        .any(|c| c.changes_identity() && c.after.identity == b"alice/phone"));
    assert!(matches!(
        effect.check_leaf_identities(),
        Err(DsError::Forbidden(_))
    ));

    // An honest Update proposal (same identity and key) changes nothing.
    let (_alice, mut bob, mut tracker) = setup_with_bob();
    let (provider, signer) = (&bob.provider, &bob.signer);
    let (proposal, _) = bob
        .group
        .as_mut()
        .unwrap()
        .propose_self_update(provider, signer, LeafNodeParameters::default())
        .unwrap();
    let effect = tracker
        .apply_proposal(&proposal.to_bytes().unwrap())
        .unwrap();
    assert_eq!((effect.update, effect.add), (None, None));
}

/// An external commit may carry Remove proposals; only the joiner's own
/// old leaf may be removed. A joiner whose key is bob's (so openmls'
/// builder removes bob's leaf, as a hand-made commit could) but whose
/// identity is dave's is refused; bob rejoining himself is fine.
#[test]
fn external_commits_remove_only_the_joiners_own_leaf() {
    let (mut alice, bob, mut tracker) = setup_with_bob();
    let gi = alice.group_info();
    let tree = tracker.ratchet_tree().unwrap();
    let mut dave = Client::new("dave/desktop");
    dave.signer = SignatureKeyPair::read(
        bob.provider.storage(),
        bob.signer.public(),
        bob.signer.signature_scheme(),
    )
    .unwrap();
    dave.signer.store(dave.provider.storage()).unwrap();
    dave.cwk = credential("dave/desktop", bob.signer.public());
    let commit = external_join(&mut dave, &gi, &tree);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert!(effect.external);
    assert_eq!(effect.committer, b"dave/desktop");
    assert_eq!(effect.removed_leaves.len(), 1);
    assert_eq!(effect.removed_leaves[0].member.identity, b"bob/laptop");
    assert!(!effect.removed_leaves[0].self_removed);
    assert!(matches!(
        effect.check_leaf_identities(),
        Err(DsError::Forbidden(_))
    ));
}

/// A rejoin that removes the joiner's own old leaf passes the rule, and the
/// new leaf is reported as new (the node checks its key).
#[test]
fn external_rejoin_removes_own_leaf() {
    let (mut alice, bob, mut tracker) = setup_with_bob();
    let gi = alice.group_info();
    let tree = tracker.ratchet_tree().unwrap();
    let mut bob2 = Client::new("bob/laptop");
    bob2.signer = SignatureKeyPair::read(
        bob.provider.storage(),
        bob.signer.public(),
        bob.signer.signature_scheme(),
    )
    .unwrap();
    bob2.signer.store(bob2.provider.storage()).unwrap();
    bob2.cwk = bob.cwk.clone();
    let commit = external_join(&mut bob2, &gi, &tree);
    let effect = tracker.apply_commit(&commit).unwrap();
    effect.check_leaf_identities().unwrap();
    assert_eq!(effect.removed_leaves.len(), 1);
    assert!(effect
        .changed_leaves
        .iter()
        .any(|c| c.before.is_none() && c.after.identity == b"bob/laptop"));
}

#[test]
fn welcomes_must_be_addressed_to_exactly_the_added_members() {
    let (mut alice, mut tracker) = setup();
    let bob = Client::new("bob/laptop");
    let carol = Client::new("carol/tab");
    let (commit, welcome) = alice.add(&[bob.key_package(), carol.key_package()]);
    let welcome = welcome.to_bytes().unwrap();
    let effect = tracker.apply_commit(&commit).unwrap();
    check_welcome(&welcome, &effect.added).unwrap();
    // Fewer or other members than the Welcome names.
    assert!(matches!(
        check_welcome(&welcome, &effect.added[..1]),
        Err(DsError::InvalidArgument(_))
    ));
    let (mut other, _) = setup();
    let dave = Client::new("dave/desktop");
    let (_, for_dave) = other.add(&[dave.key_package()]);
    assert!(matches!(
        check_welcome(&for_dave.to_bytes().unwrap(), &effect.added),
        Err(DsError::InvalidArgument(_))
    ));
    // Not a Welcome, or not MLS at all.
    assert!(matches!(
        check_welcome(&alice.group_info(), &effect.added),
        Err(DsError::WrongWireFormat(_))
    ));
    for junk in [&b""[..], b"junk", &welcome[..welcome.len() - 1]] {
        assert!(matches!(
            check_welcome(junk, &effect.added),
            Err(DsError::Malformed(_))
        ));
    }
}

fn verifiable_group_info(gi: &[u8]) -> VerifiableGroupInfo {
    match MlsMessageIn::tls_deserialize_exact(gi).unwrap().extract() {
        MlsMessageBodyIn::GroupInfo(vgi) => vgi,
        _ => panic!("not a group info"),
    }
}

/// The openmls 0.9 external commit API (the deprecated
/// `join_by_external_commit` wraps exactly this).
fn external_join(client: &mut Client, gi: &[u8], tree: &[u8]) -> Vec<u8> {
    let (group, bundle) = MlsGroup::external_commit_builder()
        .with_ratchet_tree(RatchetTreeIn::tls_deserialize_exact(tree).unwrap())
        .with_config(join_config(PURE_PLAINTEXT_WIRE_FORMAT_POLICY))
        .build_group(
            &client.provider,
            verifiable_group_info(gi),
            client.cwk.clone(),
        )
        .unwrap()
        .load_psks(client.provider.storage())
        .unwrap()
        .build(
            client.provider.rand(),
            client.provider.crypto(),
            &client.signer,
            |_| true,
        )
        .unwrap()
        .finalize(&client.provider)
        .unwrap();
    client.group = Some(group);
    bundle.into_commit().to_bytes().unwrap()
}

#[test]
fn leave_by_proposal_then_commit_by_other_member() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let mut carol = Client::new("carol/tab");
    let (commit, welcome) = alice.add(&[carol.key_package()]);
    tracker.apply_commit(&commit).unwrap();
    bob.process(&commit);
    carol.join(welcome, &tracker.ratchet_tree().unwrap());

    // bob leaves: a Remove proposal for his own leaf.
    let provider = &bob.provider;
    let signer = &bob.signer;
    let proposal = bob
        .group
        .as_mut()
        .unwrap()
        .leave_group(provider, signer)
        .unwrap()
        .to_bytes()
        .unwrap();
    let effect = tracker.apply_proposal(&proposal).unwrap();
    assert_eq!(effect.sender, b"bob/laptop");
    assert_eq!(effect.epoch, 2);
    assert_eq!(tracker.pending_proposals(), 1);
    // Idempotent.
    tracker.apply_proposal(&proposal).unwrap();
    assert_eq!(tracker.pending_proposals(), 1);

    // The queue survives snapshot/load.
    let mut tracker = GroupTracker::load(&tracker.snapshot().unwrap()).unwrap();
    assert_eq!(tracker.pending_proposals(), 1);

    // A proposal is not a commit and the other way round.
    assert!(matches!(
        tracker.apply_commit(&proposal),
        Err(DsError::WrongWireFormat(_))
    ));

    alice.process(&proposal);
    carol.process(&proposal);
    let provider = &alice.provider;
    let signer = &alice.signer;
    let g = alice.group.as_mut().unwrap();
    let (commit, _, _) = g.commit_to_pending_proposals(provider, signer).unwrap();
    g.merge_pending_commit(provider).unwrap();
    let commit = commit.to_bytes().unwrap();
    assert!(matches!(
        tracker.apply_proposal(&commit),
        Err(DsError::WrongWireFormat(_))
    ));
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.committer, b"alice/phone");
    assert_eq!(effect.removed, vec![b"bob/laptop".to_vec()]);
    assert_eq!(tracker.pending_proposals(), 0);
    assert_eq!(
        ids(&tracker.members()),
        vec![b"alice/phone".to_vec(), b"carol/tab".to_vec()]
    );
    carol.process(&commit);
    assert_eq!(tracker.ratchet_tree().unwrap(), carol.tree());

    // A proposal of a past epoch is stale.
    assert!(matches!(
        tracker.apply_proposal(&proposal),
        Err(DsError::StaleEpoch { current: 3 })
    ));
}

#[test]
fn commit_by_reference_without_queued_proposal_fails() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let provider = &bob.provider;
    let signer = &bob.signer;
    let proposal = bob
        .group
        .as_mut()
        .unwrap()
        .leave_group(provider, signer)
        .unwrap()
        .to_bytes()
        .unwrap();
    alice.process(&proposal);
    let provider = &alice.provider;
    let signer = &alice.signer;
    let (commit, _, _) = alice
        .group
        .as_mut()
        .unwrap()
        .commit_to_pending_proposals(provider, signer)
        .unwrap();
    let commit = commit.to_bytes().unwrap();
    // The server never saw the proposal.
    let before = tracker.snapshot().unwrap();
    assert!(matches!(
        tracker.apply_commit(&commit),
        Err(DsError::InvalidMls(_))
    ));
    assert_eq!(tracker.snapshot().unwrap(), before);
    tracker.apply_proposal(&proposal).unwrap();
    tracker.apply_commit(&commit).unwrap();
}

#[test]
fn snapshot_round_trip_mid_history() {
    let (mut alice, mut bob, tracker) = setup_with_bob();
    let snap = tracker.snapshot().unwrap();
    println!("snapshot size with 2 members: {} bytes", snap.len());
    assert!(snap.len() < 4096, "snapshot is {} bytes", snap.len());
    let loaded = GroupTracker::load(&snap).unwrap();
    assert_eq!(loaded.epoch(), tracker.epoch());
    assert_eq!(loaded.group_id(), tracker.group_id());
    assert_eq!(loaded.members(), tracker.members());
    assert_eq!(
        loaded.ratchet_tree().unwrap(),
        tracker.ratchet_tree().unwrap()
    );
    assert_eq!(loaded.snapshot().unwrap(), snap);
    let mut tracker = loaded;

    // Continue after load: add, update, remove.
    let mut carol = Client::new("carol/tab");
    let (commit, welcome) = alice.add(&[carol.key_package()]);
    bob.process(&commit);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.added[0].identity, b"carol/tab");
    carol.join(welcome, &tracker.ratchet_tree().unwrap());
    let mut tracker = GroupTracker::load(&tracker.snapshot().unwrap()).unwrap();
    let commit = bob.self_update();
    alice.process(&commit);
    carol.process(&commit);
    tracker.apply_commit(&commit).unwrap();
    let mut tracker = GroupTracker::load(&tracker.snapshot().unwrap()).unwrap();
    let commit = carol.remove(&[0]);
    let effect = tracker.apply_commit(&commit).unwrap();
    assert_eq!(effect.removed, vec![b"alice/phone".to_vec()]);
    assert_eq!(effect.new_epoch, 4);
    bob.process(&commit);
    assert_eq!(tracker.ratchet_tree().unwrap(), bob.tree());
    let gi = bob.group_info();
    tracker.check_group_info(&gi).unwrap();
    let snap = tracker.snapshot().unwrap();
    println!(
        "snapshot size with 2 members at epoch 4: {} bytes",
        snap.len()
    );
}

#[test]
fn snapshot_size_scales_compactly() {
    let (mut alice, mut tracker) = setup();
    let kps: Vec<KeyPackage> = (0..15)
        .map(|i| Client::new(&format!("user{i}/dev")).key_package())
        .collect();
    let (commit, _) = alice.add(&kps);
    tracker.apply_commit(&commit).unwrap();
    let snap = tracker.snapshot().unwrap();
    println!("snapshot size with 16 members: {} bytes", snap.len());
    let tree = tracker.ratchet_tree().unwrap();
    println!("ratchet tree with 16 members: {} bytes", tree.len());
    // Within a small factor of the TLS tree itself.
    assert!(snap.len() < 3 * tree.len() + 2048);
    assert_eq!(GroupTracker::load(&snap).unwrap().members().len(), 16);
}

#[test]
fn application_messages_checked_by_header() {
    let (mut alice, mut bob, mut tracker) = setup_with_bob();
    let m1 = alice.send(b"hello at epoch 1");
    assert_eq!(tracker.check_application(&m1, 0).unwrap(), 1);

    // Move the group forward two epochs.
    for _ in 0..2 {
        let c = alice.self_update();
        bob.process(&c);
        tracker.apply_commit(&c).unwrap();
    }
    assert_eq!(tracker.epoch(), 3);
    let m3 = bob.send(b"hello at epoch 3");
    assert_eq!(tracker.check_application(&m3, 0).unwrap(), 3);
    // m1 is two epochs old.
    assert!(matches!(
        tracker.check_application(&m1, 1),
        Err(DsError::StaleEpoch { current: 3 })
    ));
    assert_eq!(tracker.check_application(&m1, 2).unwrap(), 1);
    assert_eq!(tracker.check_application(&m1, u64::MAX).unwrap(), 1);

    // From the future: a tracker that is behind.
    let snap = tracker.snapshot().unwrap();
    let c = alice.self_update();
    bob.process(&c);
    let m4 = bob.send(b"epoch 4");
    assert!(matches!(
        tracker.check_application(&m4, 10),
        Err(DsError::StaleEpoch { current: 3 })
    ));
    tracker.apply_commit(&c).unwrap();
    assert_eq!(tracker.check_application(&m4, 0).unwrap(), 4);
    let _ = snap;

    // Handshake messages are not application messages.
    let proposal = {
        let provider = &bob.provider;
        let signer = &bob.signer;
        bob.group
            .as_mut()
            .unwrap()
            .leave_group(provider, signer)
            .unwrap()
            .to_bytes()
            .unwrap()
    };
    assert!(matches!(
        tracker.check_application(&proposal, 10),
        Err(DsError::WrongWireFormat(_))
    ));
    // Another group's message.
    let mut other = Client::new("eve/x");
    other.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let m = other.send(b"hi");
    assert!(matches!(
        tracker.check_application(&m, 10),
        Err(DsError::WrongGroup)
    ));
}

#[test]
fn handshake_in_private_message_is_rejected() {
    // A client with a ciphertext handshake policy: its commits and
    // proposals are PrivateMessages the server cannot track.
    let mut alice = Client::new("alice/phone");
    alice.create_group(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY);
    let mut tracker = GroupTracker::create(&alice.group_info(), &alice.tree()).unwrap();
    let mut bob = Client::new("bob/laptop");
    let (commit, _) = alice.add(&[bob.key_package()]);
    assert!(matches!(
        tracker.apply_commit(&commit),
        Err(DsError::WrongWireFormat(_))
    ));
    // Nor does a ciphertext commit pass as an application message.
    assert!(matches!(
        tracker.check_application(&commit, 10),
        Err(DsError::WrongWireFormat(_))
    ));
    assert_eq!(tracker.epoch(), 0);
    let _ = &mut bob;

    let provider = &alice.provider;
    let signer = &alice.signer;
    let proposal = alice
        .group
        .as_mut()
        .unwrap()
        .propose_self_update(provider, signer, LeafNodeParameters::default())
        .unwrap()
        .0
        .to_bytes()
        .unwrap();
    assert!(matches!(
        tracker.apply_proposal(&proposal),
        Err(DsError::WrongWireFormat(_))
    ));
    assert!(matches!(
        tracker.check_application(&proposal, 10),
        Err(DsError::WrongWireFormat(_))
    ));
}

#[test]
fn commit_for_other_group_is_wrong_group() {
    let (_alice, mut tracker) = setup();
    let mut other = Client::new("eve/x");
    other.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    let c = other.self_update();
    assert!(matches!(tracker.apply_commit(&c), Err(DsError::WrongGroup)));
}

/// Deterministic pseudo-random bytes.
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn garbage_never_panics_in_any_parser() {
    let (mut alice, mut bob, tracker) = setup_with_bob();
    let gi = alice.group_info();
    let tree = tracker.ratchet_tree().unwrap();
    let snap = tracker.snapshot().unwrap();
    let app = bob.send(b"x");
    let commit = alice.self_update_pending();
    let kp = MlsMessageOut::from(Client::new("k/k").key_package())
        .to_bytes()
        .unwrap();
    let samples = [gi.clone(), tree.clone(), snap.clone(), app, commit, kp];

    let mut inputs: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 1], vec![0xff; 64]];
    let mut seed = 0x0123_4567_89ab_cdefu64;
    for len in [1, 2, 3, 4, 7, 16, 64, 300, 2000] {
        for _ in 0..4 {
            inputs.push(noise(&mut seed, len));
        }
    }
    for s in &samples {
        // Truncations (a sampling for long inputs) and single-byte flips.
        let step = (s.len() / 60).max(1);
        for n in (0..s.len()).step_by(step) {
            inputs.push(s[..n].to_vec());
        }
        for i in (0..s.len()).step_by(step) {
            let mut v = s.clone();
            v[i] = v[i].wrapping_add(1 + (i % 250) as u8);
            inputs.push(v);
        }
        // Valid MLSMessage header with random body.
        let mut v = s[..4.min(s.len())].to_vec();
        v.extend(noise(&mut seed, 100));
        inputs.push(v);
    }

    let mut tracker = tracker;
    let before = tracker.snapshot().unwrap();
    for input in &inputs {
        let _ = GroupTracker::create(input, &tree);
        let _ = GroupTracker::create(&gi, input);
        let _ = GroupTracker::load(input);
        let _ = tracker.check_application(input, 3);
        let _ = tracker.check_group_info(input);
        let _ = validate_key_package(input);
        let _ = check_welcome(input, &[]);
        if tracker.apply_commit(input).is_ok() || tracker.apply_proposal(input).is_ok() {
            tracker = GroupTracker::load(&before).unwrap();
        }
    }
    // Plain garbage is Malformed.
    for input in [vec![], vec![1, 2, 3], noise(&mut seed, 50)] {
        assert!(matches!(
            tracker.apply_commit(&input),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            tracker.apply_proposal(&input),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            tracker.check_application(&input, 1),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            tracker.check_group_info(&input),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            validate_key_package(&input),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            GroupTracker::load(&input),
            Err(DsError::Malformed(_))
        ));
        assert!(matches!(
            GroupTracker::create(&input, &tree),
            Err(DsError::Malformed(_))
        ));
    }
    // Trailing bytes are not tolerated.
    let mut long = gi.clone();
    long.push(0);
    assert!(matches!(
        tracker.check_group_info(&long),
        Err(DsError::Malformed(_))
    ));
    assert_eq!(tracker.snapshot().unwrap(), before);
}

#[test]
fn key_package_valid_bare_and_wrapped() {
    let c = Client::new("erin/phone");
    let kp = c.key_package();
    let wrapped = MlsMessageOut::from(kp.clone()).to_bytes().unwrap();
    let bare = kp.tls_serialize_detached().unwrap();
    let v1 = validate_key_package(&wrapped).unwrap();
    let v2 = validate_key_package(&bare).unwrap();
    assert_eq!(v1, v2);
    assert_eq!(v1.identity, b"erin/phone");
    assert_eq!(v1.signature_key, c.signer.public());
    assert_eq!(
        v1.hash_ref,
        kp.hash_ref(c.provider.crypto()).unwrap().as_slice()
    );
    assert!(!v1.last_resort);

    // openmls 0.9.2's `mark_as_last_resort` adds the extension but not the
    // matching leaf capability; without it the package fails validation.
    let lr_caps = Capabilities::builder()
        .extensions(vec![ExtensionType::LastResort])
        .build();
    let missing_cap = KeyPackage::builder()
        .mark_as_last_resort()
        .build(CS, &c.provider, &c.signer, c.cwk.clone())
        .unwrap()
        .key_package()
        .clone();
    assert!(matches!(
        validate_key_package(&MlsMessageOut::from(missing_cap).to_bytes().unwrap()),
        Err(DsError::InvalidMls(_))
    ));
    let lr = KeyPackage::builder()
        .leaf_node_capabilities(lr_caps)
        .mark_as_last_resort()
        .build(CS, &c.provider, &c.signer, c.cwk.clone())
        .unwrap()
        .key_package()
        .clone();
    let v = validate_key_package(&MlsMessageOut::from(lr).to_bytes().unwrap()).unwrap();
    assert!(v.last_resort);
    assert_ne!(v.hash_ref, v1.hash_ref);
}

#[test]
fn key_package_tampered_expired_wrong_suite_or_type() {
    let c = Client::new("erin/phone");
    let wrapped = MlsMessageOut::from(c.key_package()).to_bytes().unwrap();
    // Flip one byte at a time: never accepted with different content.
    let original = validate_key_package(&wrapped).unwrap();
    for i in 4..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[i] ^= 0x01;
        if let Ok(v) = validate_key_package(&bad) {
            panic!("byte {i} flipped and still accepted: {v:?} vs {original:?}");
        }
    }

    // Expired lifetime.
    let expired = KeyPackage::builder()
        .key_package_lifetime(Lifetime::init(0, 1_000))
        .build(CS, &c.provider, &c.signer, c.cwk.clone())
        .unwrap()
        .key_package()
        .clone();
    assert!(matches!(
        validate_key_package(&MlsMessageOut::from(expired).to_bytes().unwrap()),
        Err(DsError::InvalidMls(_))
    ));

    // Another (valid, supported by openmls) ciphersuite.
    let p256 = Ciphersuite::MLS_128_DHKEMP256_AES128GCM_SHA256_P256;
    let other = Client::with_suite("erin/phone", p256);
    let kp = KeyPackage::builder()
        .build(p256, &other.provider, &other.signer, other.cwk.clone())
        .unwrap()
        .key_package()
        .clone();
    match validate_key_package(&MlsMessageOut::from(kp).to_bytes().unwrap()) {
        Err(DsError::InvalidArgument(msg)) => assert!(msg.contains("ciphersuite"), "{msg}"),
        other => panic!("{other:?}"),
    }

    // Not a key package at all.
    let mut alice = Client::new("alice/phone");
    alice.create_group(PURE_PLAINTEXT_WIRE_FORMAT_POLICY);
    assert!(matches!(
        validate_key_package(&alice.group_info()),
        Err(DsError::WrongWireFormat(_))
    ));
}

#[test]
fn tracker_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<GroupTracker>();
}
