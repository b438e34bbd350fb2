//! Makes the `ds_mls` fixture — the tracker snapshot of a real two-member
//! group (epoch 1) and a valid commit for it — and seed inputs (a
//! KeyPackage, a GroupInfo + tree, a commit, a proposal, an application
//! message, the GroupInfo after the commit, a snapshot), with real openmls
//! clients as Hush clients configure them (pure-plaintext handshakes). Run
//! once; the outputs are committed (`fuzz/fixtures/ds/`,
//! `fuzz/corpus/ds_mls/`).

use std::path::Path;

use hush_ds::GroupTracker;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
    group: Option<MlsGroup>,
}

impl Member {
    fn new(identity: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keys");
        signer.store(provider.storage()).expect("store keys");
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            cwk,
            group: None,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(CS, &self.provider, &self.signer, self.cwk.clone())
            .expect("key package")
            .key_package()
            .clone()
    }

    fn g(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("in a group")
    }

    fn group_info(&mut self) -> Vec<u8> {
        let (crypto, signer) = (self.provider.crypto(), &self.signer);
        let g = self.group.as_ref().expect("in a group");
        g.export_group_info(crypto, signer, false)
            .expect("group info")
            .to_bytes()
            .expect("encode")
    }

    fn tree(&mut self) -> Vec<u8> {
        self.g()
            .export_ratchet_tree()
            .tls_serialize_detached()
            .expect("tree")
    }
}

/// Writes the fixture into `fixtures` and the seeds into `corpus`.
pub fn generate(fixtures: &Path, corpus: &Path) {
    std::fs::create_dir_all(fixtures).expect("fixture dir");
    std::fs::create_dir_all(corpus).expect("corpus dir");
    let policy = PURE_PLAINTEXT_WIRE_FORMAT_POLICY;
    let mut alice = Member::new("alice/phone");
    let create = MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .wire_format_policy(policy)
        .max_past_epochs(5)
        .use_ratchet_tree_extension(false)
        .build();
    alice.group = Some(
        MlsGroup::new(&alice.provider, &alice.signer, &create, alice.cwk.clone()).expect("group"),
    );
    let gi0 = alice.group_info();
    let tree0 = alice.tree();
    let mut tracker = GroupTracker::create(&gi0, &tree0).expect("tracker");

    // bob joins: epoch 1, two members.
    let mut bob = Member::new("bob/laptop");
    let bob_kp = bob.key_package();
    let (add, welcome) = {
        let (p, s) = (&alice.provider, &alice.signer);
        let g = alice.group.as_mut().expect("group");
        let (commit, welcome, _) = g.add_members(p, s, &[bob_kp]).expect("add");
        g.merge_pending_commit(p).expect("merge");
        (commit.to_bytes().expect("encode"), welcome)
    };
    tracker.apply_commit(&add).expect("tracker applies the add");
    let tree1 = alice.tree();
    let welcome_bytes = welcome.to_bytes().expect("encode");
    let welcome = match MlsMessageIn::from(welcome).extract() {
        MlsMessageBodyIn::Welcome(w) => w,
        _ => panic!("not a welcome"),
    };
    let join = MlsGroupJoinConfig::builder()
        .wire_format_policy(policy)
        .max_past_epochs(5)
        .build();
    let tree_in = {
        use openmls::prelude::tls_codec::Deserialize as _;
        RatchetTreeIn::tls_deserialize_exact(&tree1).expect("tree")
    };
    let staged = StagedWelcome::new_from_welcome(&bob.provider, &join, welcome, Some(tree_in))
        .expect("welcome");
    bob.group = Some(staged.into_group(&bob.provider).expect("join"));
    let snapshot = tracker.snapshot().expect("snapshot");

    // At epoch 1: bob proposes to leave, alice sends a message and makes a
    // self-update commit (the fixture commit); the GroupInfo after it.
    let proposal = {
        let (p, s) = (&bob.provider, &bob.signer);
        bob.group
            .as_mut()
            .expect("group")
            .leave_group(p, s)
            .expect("leave proposal")
            .to_bytes()
            .expect("encode")
    };
    let app = {
        let (p, s) = (&alice.provider, &alice.signer);
        alice
            .group
            .as_mut()
            .expect("group")
            .create_message(p, s, b"hello")
            .expect("message")
            .to_bytes()
            .expect("encode")
    };
    let commit = {
        let (p, s) = (&alice.provider, &alice.signer);
        let g = alice.group.as_mut().expect("group");
        let bundle = g
            .self_update(p, s, LeafNodeParameters::default())
            .expect("self update");
        let c = bundle.into_commit().to_bytes().expect("encode");
        g.merge_pending_commit(p).expect("merge");
        c
    };
    let gi_after = alice.group_info();
    let kp = MlsMessageOut::from(Member::new("carol/tab").key_package())
        .to_bytes()
        .expect("encode");

    std::fs::write(fixtures.join("snapshot.bin"), &snapshot).expect("write");
    std::fs::write(fixtures.join("commit.bin"), &commit).expect("write");

    let seed = |name: &str, op: u8, bytes: &[u8]| {
        let mut v = vec![op];
        v.extend_from_slice(bytes);
        std::fs::write(corpus.join(name), v).expect("write seed");
    };
    seed("key_package", 0, &kp);
    let mut create = (gi0.len() as u16).to_be_bytes().to_vec();
    create.extend_from_slice(&gi0);
    create.extend_from_slice(&tree0);
    seed("create", 1, &create);
    seed("commit", 2, &commit);
    seed("welcome_as_commit", 2, &welcome_bytes);
    seed("welcome_check", 7, &welcome_bytes);
    seed("proposal", 3, &proposal);
    seed("application", 4, &app);
    seed("group_info_after_commit", 5, &gi_after);
    seed("snapshot", 6, &snapshot);
}
