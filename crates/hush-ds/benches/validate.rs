//! What the delivery service does per message and per commit, on a group of
//! 10 made by a real openmls client: `check_application` (every send),
//! `apply_commit` of a self-update (every commit), and `GroupTracker::load`
//! (a GroupActor's activation, from the stored snapshot).
//!   cargo bench -p hush-ds --bench validate

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use hush_ds::GroupTracker;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use std::hint::black_box;

const CS: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
const MEMBERS: usize = 10;

struct Member {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    cwk: CredentialWithKey,
}

impl Member {
    fn new(name: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(CS.signature_algorithm()).expect("keys");
        signer.store(provider.storage()).expect("store keys");
        let cwk = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            cwk,
        }
    }

    fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(CS, &self.provider, &self.signer, self.cwk.clone())
            .expect("key package")
            .key_package()
            .clone()
    }
}

/// The creator's group of [`MEMBERS`], the tracker that followed it, a
/// message and a self-update commit (not merged) at the current epoch.
struct Fixture {
    tracker: GroupTracker,
    message: Vec<u8>,
    commit: Vec<u8>,
}

fn fixture() -> Fixture {
    let alice = Member::new("alice/phone");
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(CS)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build();
    let mut group =
        MlsGroup::new(&alice.provider, &alice.signer, &config, alice.cwk.clone()).expect("group");
    let info = group
        .export_group_info(alice.provider.crypto(), &alice.signer, false)
        .expect("group info")
        .to_bytes()
        .expect("encode");
    let tree = group
        .export_ratchet_tree()
        .tls_serialize_detached()
        .expect("tree");
    let mut tracker = GroupTracker::create(&info, &tree).expect("tracker");
    let others: Vec<KeyPackage> = (1..MEMBERS)
        .map(|i| Member::new(&format!("user{i}/device")).key_package())
        .collect();
    let (add, _welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &others)
        .expect("add");
    group.merge_pending_commit(&alice.provider).expect("merge");
    tracker
        .apply_commit(&add.to_bytes().expect("encode"))
        .expect("tracker follows the add");
    let message = group
        .create_message(&alice.provider, &alice.signer, &[7u8; 64])
        .expect("message")
        .to_bytes()
        .expect("encode");
    let commit = group
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .expect("self-update")
        .into_commit()
        .to_bytes()
        .expect("encode");
    Fixture {
        tracker,
        message,
        commit,
    }
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let snapshot = f.tracker.snapshot().expect("snapshot");
    let mut group = c.benchmark_group("ds");
    group.bench_function("check_application_64b_group_of_10", |b| {
        b.iter(|| {
            f.tracker
                .check_application(black_box(&f.message), 5)
                .expect("valid")
        })
    });
    group.bench_function("apply_commit_self_update_group_of_10", |b| {
        b.iter_batched(
            || GroupTracker::load(&snapshot).expect("load"),
            |mut t| t.apply_commit(black_box(&f.commit)).expect("valid commit"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("load_snapshot_group_of_10", |b| {
        b.iter(|| GroupTracker::load(black_box(&snapshot)).expect("load"))
    });
    group.finish();
}

criterion_group!(validate, benches);
criterion_main!(validate);
