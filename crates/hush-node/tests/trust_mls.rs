//! Trust, the MLS half: what a malicious member or a stranger can no longer
//! do, end to end against an in-process node with real openmls clients (the
//! SDK's MLS state, bent by hand where an attacker would bend it).
//!
//! - A member cannot take over another user's identity: a leaf keeps its
//!   user/device identity for ever, and a changed signature key must be the
//!   one the directory holds for that device (commits, Update proposals,
//!   external commits and the Removes they carry).
//! - The member list never names a user who did not join (GetGroupInfo).
//! - A commit's Welcome must parse and be addressed to exactly the devices
//!   it adds.
//! - KeyPackages: claims are limited per claimer and per target, the
//!   last-resort package is not handed out twice without its owner being
//!   told, and stored packages per device are capped.
//! - Presence is visible to a group only once the user joined it.
//! - Acks name a group the device is in and a seq that exists.
//!
//! Every wait is for an event or an answer; nothing sleeps.

use hush_client::client::Client;
use hush_client::envelope::Envelope;
use hush_client::mls::{self, Change};
use hush_proto::client_frame::Body as C;
use hush_proto::server_frame::Body as S;
use hush_proto::{auth, v1, ClientFrame, ErrorCode, Message as _, ServerFrame};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, CredentialWithKey, LeafNodeParameters, MlsGroup, MlsMessageBodyIn,
    MlsMessageIn, NewSignerBundle, OpenMlsProvider as _, RatchetTreeIn,
};
use openmls_basic_credential::SignatureKeyPair;
use ring::rand::SecureRandom as _;

mod common;
use common::{client, has_text, is_member, login, pump_until, start_node, url, WAIT};

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut id).expect("rng");
    id
}

/// One request over `POST /v1/rpc`: the reply body, or `None` for a 204.
async fn rpc(url: &str, token: &str, body: C) -> Option<S> {
    let frame = ClientFrame {
        request_id: 1,
        body: Some(body),
    };
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/rpc"))
        .header("authorization", format!("Bearer {token}"))
        .body(frame.encode_to_vec())
        .send()
        .await
        .expect("rpc");
    if resp.status().as_u16() == 204 {
        return None;
    }
    let bytes = resp.bytes().await.expect("body");
    Some(
        ServerFrame::decode(bytes.as_ref())
            .expect("a ServerFrame")
            .body
            .expect("a body"),
    )
}

fn error_of(reply: Option<S>) -> v1::Error {
    match reply {
        Some(S::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn code_of(reply: Option<S>) -> ErrorCode {
    error_of(reply).error_code()
}

fn send_commit(gid: &[u8], out: &mls::CommitOut) -> C {
    C::SendCommit(v1::SendCommit {
        group_id: gid.to_vec(),
        commit: out.commit.clone(),
        welcome: out.welcome.clone().unwrap_or_default(),
        group_info: out.group_info.clone(),
        ratchet_tree: out.ratchet_tree.clone(),
        client_msg_id: random_id(),
    })
}

/// `owner`'s new group with `others` added, each of them joined.
async fn group_of(owner: &mut Client, others: &mut [&mut Client], name: &str) -> Vec<u8> {
    let gid = owner.create_group(name).await.expect("create").group_id;
    let handles: Vec<String> = others
        .iter()
        .map(|c| c.me().expect("registered").user_id.clone())
        .collect();
    owner
        .add_members(&hex::encode(&gid), &handles)
        .await
        .expect("add");
    for c in others.iter_mut() {
        pump_until(c, "the welcome", |c| is_member(c, &gid)).await;
    }
    gid
}

/// A credential naming `identity` with `key`.
fn credential(identity: &str, key: &[u8]) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: key.into(),
    }
}

/// A self-update commit by a member whose update path puts `forged` into
/// its own leaf, signed by `new_signer` when given (a key the member holds)
/// and by its device key otherwise. It is left pending in the member's MLS
/// state (the returned group): an attacker who wants to encrypt from the
/// forged leaf merges it.
fn forged_self_update(
    member: &Client,
    gid: &[u8],
    forged: CredentialWithKey,
    new_signer: Option<&SignatureKeyPair>,
) -> (mls::CommitOut, MlsGroup) {
    let me = member.me().expect("registered");
    let db = member.db();
    let provider = db.provider();
    let mut group = mls::load_group(db, gid).expect("group");
    if group.pending_commit().is_some() {
        group
            .clear_pending_commit(provider.storage())
            .expect("clear pending commit");
    }
    let epoch = group.epoch().as_u64();
    let params = match new_signer {
        Some(_) => LeafNodeParameters::default(),
        None => LeafNodeParameters::builder()
            .with_credential_with_key(forged.clone())
            .build(),
    };
    let builder = group
        .commit_builder()
        .leaf_node_parameters(params)
        .force_self_update(true)
        .consume_proposal_store(true)
        .load_psks(provider.storage())
        .expect("psks")
        .create_group_info(true);
    let built = match new_signer {
        Some(signer) => builder.build_with_new_signer(
            provider.rand(),
            provider.crypto(),
            &me.keys,
            NewSignerBundle {
                signer,
                credential_with_key: forged,
            },
            |_| true,
        ),
        None => builder.build(provider.rand(), provider.crypto(), &me.keys, |_| true),
    };
    let bundle = built
        .expect("forged commit")
        .stage_commit(&provider)
        .expect("stage");
    let (commit, _, group_info) = bundle.into_messages();
    let out = mls::CommitOut {
        commit: commit.to_bytes().expect("commit"),
        welcome: None,
        group_info: group_info.expect("group info").to_bytes().expect("gi"),
        // The node keeps the tree it computes itself.
        ratchet_tree: Vec::new(),
        epoch,
    };
    (out, group)
}

/// Logs a device in with an explicit key.
async fn login_with(url: &str, device_id: &str, keys: &SignatureKeyPair) -> String {
    let http = hush_client::http::Http::new(url).expect("server url");
    let challenge = http.login_challenge(device_id).await.expect("challenge");
    let signature = mls::sign_raw(keys, &auth::login_payload(&challenge)).expect("sign");
    let (token, _) = http
        .login(device_id, challenge, signature)
        .await
        .expect("login");
    token.0
}

// ---------------------------------------------------------------------------
// Leaf identity
// ---------------------------------------------------------------------------

/// The attack from the issue: mallory, a member, self-updates with a leaf
/// claiming alice's device and a key mallory holds; mallory2 (a second
/// attacker-controlled member) then sends from that leaf. alice shares no
/// group with them. Refused with FORBIDDEN; the message from the forged
/// leaf never reaches bob; alice never appears in the member list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_post_as_another_user() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut bob = client(root.path(), &url, "bob").await;
    let mut mallory = client(root.path(), &url, "mallory").await;
    let mut mallory2 = client(root.path(), &url, "mallory2").await;
    let alice = client(root.path(), &url, "alice").await;
    let gid = group_of(&mut bob, &mut [&mut mallory, &mut mallory2], "victims").await;
    let g = hex::encode(&gid);
    let alice_id = alice.me().unwrap();
    let mallory_token = login(&url, &mallory.me().unwrap()).await;
    let mallory2_token = login(&url, &mallory2.me().unwrap()).await;

    let held = mls::new_device_keys().unwrap();
    let forged = credential(&alice_id.mls_identity(), held.public());
    let (commit, forged_group) = forged_self_update(&mallory, &gid, forged, Some(&held));
    let err = error_of(rpc(&url, &mallory_token, send_commit(&gid, &commit)).await);
    assert_eq!(err.error_code(), ErrorCode::Forbidden, "{err:?}");
    assert!(
        err.message.contains("may not change its identity"),
        "{err:?}"
    );

    // mallory2 sends what the forged leaf encrypted: the group never moved
    // to that epoch.
    let provider = mallory.db().provider();
    let mut forged_group = forged_group;
    forged_group.merge_pending_commit(&provider).expect("merge");
    let text = Envelope::Text {
        body: "please wire the 500 EUR today".into(),
        ts: 1,
    }
    .encode();
    let message = forged_group
        .create_message(&provider, &held, &text)
        .expect("encrypt")
        .to_bytes()
        .expect("encode");
    let send = C::SendMessage(v1::SendMessage {
        group_id: gid.clone(),
        client_msg_id: random_id(),
        message,
    });
    assert_eq!(
        code_of(rpc(&url, &mallory2_token, send).await),
        ErrorCode::StaleEpoch
    );

    // bob sees mallory2's next message and nothing from "alice".
    mallory2.send_text(&g, "marker").await.expect("send");
    pump_until(&mut bob, "the marker", |c| has_text(c, &gid, "marker")).await;
    assert!(!has_text(&bob, &gid, "please wire the 500 EUR today"));

    // The member list never names alice: she gets no GroupInfo.
    let alice_token = login(&url, &alice_id).await;
    let info = C::GetGroupInfo(v1::GetGroupInfo {
        group_id: gid.clone(),
    });
    assert_eq!(
        code_of(rpc(&url, &alice_token, info).await),
        ErrorCode::NotMember
    );
    let record = node.store().group(&gid).await.unwrap().unwrap();
    assert!(
        record.members.iter().all(|m| m.user_id != "alice"),
        "{:?}",
        record.members
    );
    node.stop().await;
}

/// The other ways to change a leaf: an identity change with the member's
/// own device key, a new signature key under the member's own identity,
/// and a standalone Update proposal claiming another identity. Each is
/// FORBIDDEN; honest self-updates still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_keep_their_identity_and_registered_key() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut bob = client(root.path(), &url, "bob").await;
    let mut mallory = client(root.path(), &url, "mallory").await;
    let gid = group_of(&mut bob, &mut [&mut mallory], "leaves").await;
    let g = hex::encode(&gid);
    let bob_id = bob.me().unwrap();
    let m_id = mallory.me().unwrap();
    let token = login(&url, &m_id).await;

    // Another identity, mallory's own device key.
    let forged = credential(&bob_id.mls_identity(), m_id.keys.public());
    let (commit, _) = forged_self_update(&mallory, &gid, forged, None);
    assert_eq!(
        code_of(rpc(&url, &token, send_commit(&gid, &commit)).await),
        ErrorCode::Forbidden
    );

    // mallory's own identity, a key the directory does not hold.
    let held = mls::new_device_keys().unwrap();
    let forged = credential(&m_id.mls_identity(), held.public());
    let (commit, _) = forged_self_update(&mallory, &gid, forged, Some(&held));
    assert_eq!(
        code_of(rpc(&url, &token, send_commit(&gid, &commit)).await),
        ErrorCode::Forbidden
    );
    mls::clear_pending(mallory.db(), &gid).unwrap();

    // A standalone Update proposal claiming bob's identity.
    let proposal = {
        let db = mallory.db();
        let provider = db.provider();
        let mut group = mls::load_group(db, &gid).unwrap();
        let params = LeafNodeParameters::builder()
            .with_credential_with_key(credential(&bob_id.mls_identity(), m_id.keys.public()))
            .build();
        let (msg, _) = group
            .propose_self_update(&provider, &m_id.keys, params)
            .expect("propose");
        msg.to_bytes().unwrap()
    };
    mls::clear_pending_proposals(mallory.db(), &gid).unwrap();
    let send = C::SendProposal(v1::SendProposal {
        group_id: gid.clone(),
        proposal,
        client_msg_id: random_id(),
    });
    assert_eq!(code_of(rpc(&url, &token, send).await), ErrorCode::Forbidden);

    // Honest self-updates (new HPKE keys, same identity and key) go through.
    bob.self_update(&g).await.expect("bob's self-update");
    pump_until(&mut mallory, "bob's update", |c| {
        mls::epoch(c.db(), &gid).is_ok_and(|e| e == 2)
    })
    .await;
    mallory
        .self_update(&g)
        .await
        .expect("mallory's self-update");
    node.stop().await;
}

/// An external commit may remove only the joiner's own old leaf. mallory2's
/// second device is registered with bob's key (so openmls' external commit
/// builder removes bob's leaf, as a hand-crafted commit could): FORBIDDEN,
/// and bob stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_commit_removes_only_the_joiners_own_leaf() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut bob = client(root.path(), &url, "bob").await;
    let mut mallory = client(root.path(), &url, "mallory").await;
    let gid = group_of(&mut bob, &mut [&mut mallory], "external").await;
    let bob_id = bob.me().unwrap();

    // A second device of mallory, registered with bob's public key.
    let code = mallory.link_code().await.expect("link code").code;
    let key = bob_id.keys.public().to_vec();
    let sig = mls::sign_raw(&bob_id.keys, &auth::link_payload(&code, &key)).unwrap();
    let http = hush_client::http::Http::new(&url).unwrap();
    let linked = http.link_device(&code, &key, sig).await.expect("link");
    let token = login_with(&url, &linked.device_id, &bob_id.keys).await;

    let info = match rpc(
        &url,
        &token,
        C::GetGroupInfo(v1::GetGroupInfo {
            group_id: gid.clone(),
        }),
    )
    .await
    {
        Some(S::GroupInfoResult(i)) => i,
        other => panic!("group info: {other:?}"),
    };
    let gi = match MlsMessageIn::tls_deserialize_exact(info.group_info.as_slice())
        .unwrap()
        .extract()
    {
        MlsMessageBodyIn::GroupInfo(gi) => gi,
        _ => panic!("not a group info"),
    };
    let tree = RatchetTreeIn::tls_deserialize_exact(info.ratchet_tree.as_slice()).unwrap();
    let joiner = hush_client::store::StateDb::open_in_memory().unwrap();
    let provider = joiner.provider();
    let identity = auth::identity("mallory", &linked.device_id);
    let (group, bundle) = MlsGroup::external_commit_builder()
        .with_config(mls::join_config())
        .with_ratchet_tree(tree)
        .build_group(&provider, gi, credential(&identity, &key))
        .unwrap()
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), &bob_id.keys, |_| true)
        .unwrap()
        .finalize(&provider)
        .unwrap();
    let (commit, _, _) = bundle.into_messages();
    let group_info = group
        .export_group_info(provider.crypto(), &bob_id.keys, false)
        .unwrap();
    let out = mls::CommitOut {
        commit: commit.to_bytes().unwrap(),
        welcome: None,
        group_info: group_info.to_bytes().unwrap(),
        ratchet_tree: Vec::new(),
        epoch: info.epoch,
    };
    let err = error_of(rpc(&url, &token, send_commit(&gid, &out)).await);
    assert_eq!(err.error_code(), ErrorCode::Forbidden, "{err:?}");
    assert!(
        err.message.contains("only the joiner's own old leaf"),
        "{err:?}"
    );
    let record = node.store().group(&gid).await.unwrap().unwrap();
    assert!(record.members.iter().any(|m| m.user_id == "bob"));
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Welcomes
// ---------------------------------------------------------------------------

/// A commit's Welcome must parse as a Welcome and be addressed to exactly
/// the devices the commit adds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_bytes_are_checked() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut bob = client(root.path(), &url, "bob").await;
    let _carol = client(root.path(), &url, "carol").await;
    let _dave = client(root.path(), &url, "dave").await;
    let bob_id = bob.me().unwrap();
    let token = login(&url, &bob_id).await;
    let gid = bob.create_group("welcomes").await.unwrap().group_id;
    let other = bob.create_group("other").await.unwrap().group_id;

    let claim = |user: &str| {
        C::ClaimKeyPackages(v1::ClaimKeyPackages {
            user_id: user.into(),
        })
    };
    let kp_of = |reply: Option<S>| match reply {
        Some(S::ClaimedKeyPackages(c)) => {
            mls::parse_key_package(bob.db(), &c.key_packages[0].key_package).unwrap()
        }
        other => panic!("claim: {other:?}"),
    };
    let dave_kp = kp_of(rpc(&url, &token, claim("dave")).await);
    let for_dave = mls::commit(bob.db(), &bob_id, &other, Change::Add(vec![dave_kp])).unwrap();
    mls::clear_pending(bob.db(), &other).unwrap();
    let carol_kp = kp_of(rpc(&url, &token, claim("carol")).await);
    let add_carol = mls::commit(bob.db(), &bob_id, &gid, Change::Add(vec![carol_kp])).unwrap();

    let with_welcome = |welcome: Vec<u8>| {
        C::SendCommit(v1::SendCommit {
            group_id: gid.clone(),
            commit: add_carol.commit.clone(),
            welcome,
            group_info: add_carol.group_info.clone(),
            ratchet_tree: add_carol.ratchet_tree.clone(),
            client_msg_id: random_id(),
        })
    };
    // Someone else's Welcome.
    let err = error_of(
        rpc(
            &url,
            &token,
            with_welcome(for_dave.welcome.clone().unwrap()),
        )
        .await,
    );
    assert_eq!(err.error_code(), ErrorCode::InvalidArgument, "{err:?}");
    // Junk, and an MLS message that is not a Welcome.
    assert_eq!(
        code_of(rpc(&url, &token, with_welcome(b"not a welcome".to_vec())).await),
        ErrorCode::Malformed
    );
    assert_eq!(
        code_of(rpc(&url, &token, with_welcome(add_carol.group_info.clone())).await),
        ErrorCode::WrongWireFormat
    );
    // Nothing was applied: the right Welcome goes through.
    let ok = rpc(
        &url,
        &token,
        with_welcome(add_carol.welcome.clone().unwrap()),
    )
    .await;
    assert!(matches!(ok, Some(S::CommitAccepted(_))), "{ok:?}");
    node.stop().await;
}

// ---------------------------------------------------------------------------
// KeyPackages
// ---------------------------------------------------------------------------

fn claim(user: &str) -> C {
    C::ClaimKeyPackages(v1::ClaimKeyPackages {
        user_id: user.into(),
    })
}

/// The victim's (unclaimed ordinary packages, has a last-resort package).
async fn kp_count(node: &hush_node::RunningNode, c: &Client) -> (u32, bool) {
    node.store()
        .key_package_count(&c.me().unwrap().device_id)
        .await
        .unwrap()
}

/// The drain: a stranger claims one user's packages 25 times in a
/// row. After the per-target burst the claims are RATE_LIMITED with a
/// retry-after hint, and the victim keeps the rest of its packages; once
/// the hinted time has passed, a claim works again. The per-claimer limit
/// stops one user from draining many targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_claims_are_refused_and_the_victims_packages_survive() {
    let (node, clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let victim = client(root.path(), &url, "victim").await;
    let stranger = client(root.path(), &url, "stranger").await;
    let token = login(&url, &stranger.me().unwrap()).await;
    let (uploaded, _) = kp_count(&node, &victim).await;
    let burst = hush_node::Config::default().limits.claims_per_target_burst as u32;
    assert!(uploaded > burst, "the SDK uploads {uploaded}");

    let mut granted = 0;
    let mut refused = Vec::new();
    for _ in 0..25 {
        match rpc(&url, &token, claim("victim")).await {
            Some(S::ClaimedKeyPackages(c)) => {
                assert!(c.key_packages.iter().all(|k| !k.last_resort));
                granted += 1;
            }
            other => refused.push(error_of(other)),
        }
    }
    assert_eq!(granted, burst);
    assert_eq!(refused.len(), 25 - burst as usize);
    for e in &refused {
        assert_eq!(e.error_code(), ErrorCode::RateLimited, "{e:?}");
        assert!(e.retry_after_ms > 0, "{e:?}");
        assert!(e.message.contains("retry after"), "{e:?}");
    }
    assert_eq!(kp_count(&node, &victim).await, (uploaded - burst, true));

    // The hint is right: one token after it, not before.
    let wait = refused[0].retry_after_ms;
    clock.advance(wait - 1);
    assert_eq!(
        code_of(rpc(&url, &token, claim("victim")).await),
        ErrorCode::RateLimited
    );
    clock.advance(1);
    assert!(matches!(
        rpc(&url, &token, claim("victim")).await,
        Some(S::ClaimedKeyPackages(_))
    ));
    node.stop().await;

    // Per claimer: a node where one user may make 3 claims in a burst.
    let (node, _clock, _dir) = start_node(|c| c.limits.claims_per_claimer_burst = 3.0).await;
    let url = common::url(&node);
    let root = tempfile::tempdir().unwrap();
    for name in ["tgt1", "tgt2", "tgt3", "tgt4"] {
        client(root.path(), &url, name).await;
    }
    let greedy = client(root.path(), &url, "greedy").await;
    let other = client(root.path(), &url, "other").await;
    let greedy_token = login(&url, &greedy.me().unwrap()).await;
    for name in ["tgt1", "tgt2", "tgt3"] {
        assert!(matches!(
            rpc(&url, &greedy_token, claim(name)).await,
            Some(S::ClaimedKeyPackages(_))
        ));
    }
    let err = error_of(rpc(&url, &greedy_token, claim("tgt4")).await);
    assert_eq!(err.error_code(), ErrorCode::RateLimited, "{err:?}");
    assert!(err.retry_after_ms > 0);
    // Someone else can still claim tgt4's.
    let other_token = login(&url, &other.me().unwrap()).await;
    assert!(matches!(
        rpc(&url, &other_token, claim("tgt4")).await,
        Some(S::ClaimedKeyPackages(_))
    ));
    node.stop().await;
}

/// The claim buckets stay bounded (`limits.claims_tracked_users`): on a
/// node that tracks one claimer, a second claimer is refused while the
/// first one's bucket is in use, with the time until it refills as the
/// hint; once it refilled, the second claimer gets its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_buckets_are_bounded_and_fail_closed() {
    let (node, clock, _dir) = start_node(|c| c.limits.claims_tracked_users = 1).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let _target = client(root.path(), &url, "target").await;
    let first = client(root.path(), &url, "first").await;
    let second = client(root.path(), &url, "second").await;
    let first_token = login(&url, &first.me().unwrap()).await;
    let second_token = login(&url, &second.me().unwrap()).await;

    assert!(matches!(
        rpc(&url, &first_token, claim("target")).await,
        Some(S::ClaimedKeyPackages(_))
    ));
    let err = error_of(rpc(&url, &second_token, claim("target")).await);
    assert_eq!(err.error_code(), ErrorCode::RateLimited, "{err:?}");
    assert!(err.retry_after_ms > 0, "{err:?}");
    // The hint is when the first claimer's (and the target's) bucket is full.
    clock.advance(err.retry_after_ms);
    assert!(matches!(
        rpc(&url, &second_token, claim("target")).await,
        Some(S::ClaimedKeyPackages(_))
    ));
    node.stop().await;
}

/// A device's last-resort package is handed out once; the next claim finds
/// nothing for that device until it uploaded again. An online device is
/// told at once (a KeyPackagesLow push its SDK answers by uploading); an
/// offline one uploads when it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_resort_package_is_not_handed_out_twice_before_its_owner_replenished() {
    let (node, _clock, _dir) = start_node(|c| {
        c.limits.claims_per_target_burst = 1000.0;
        c.limits.claims_per_claimer_burst = 1000.0;
    })
    .await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut victim = client(root.path(), &url, "victim").await;
    let adder = client(root.path(), &url, "adder").await;
    let token = login(&url, &adder.me().unwrap()).await;

    let drain = |token: String, url: String| async move {
        loop {
            match rpc(&url, &token, claim("victim")).await {
                Some(S::ClaimedKeyPackages(c)) if c.key_packages[0].last_resort => break,
                Some(S::ClaimedKeyPackages(_)) => {}
                other => panic!("claim: {other:?}"),
            }
        }
    };

    // Online: drained down to the last-resort package, which is handed out.
    drain(token.clone(), url.clone()).await;
    assert_eq!(kp_count(&node, &victim).await, (0, true));
    // Not again before the victim uploaded.
    let err = error_of(rpc(&url, &token, claim("victim")).await);
    assert_eq!(err.error_code(), ErrorCode::NoKeyPackage, "{err:?}");
    // The victim was told: its SDK uploads on the push.
    let deadline = tokio::time::Instant::now() + WAIT;
    while kp_count(&node, &victim).await.0 == 0 {
        let ev = tokio::time::timeout_at(deadline, victim.wait_event())
            .await
            .expect("the KeyPackagesLow push")
            .expect("event");
        victim.handle(ev).await.expect("handle");
    }
    match rpc(&url, &token, claim("victim")).await {
        Some(S::ClaimedKeyPackages(c)) => assert!(!c.key_packages[0].last_resort),
        other => panic!("claim: {other:?}"),
    }

    // Offline: the same, and the upload comes when it connects.
    victim.close().await;
    drain(token.clone(), url.clone()).await;
    assert_eq!(
        code_of(rpc(&url, &token, claim("victim")).await),
        ErrorCode::NoKeyPackage
    );
    victim.connect().await.expect("reconnect");
    match rpc(&url, &token, claim("victim")).await {
        Some(S::ClaimedKeyPackages(c)) => assert!(!c.key_packages[0].last_resort),
        other => panic!("claim: {other:?}"),
    }
    node.stop().await;
}

/// A device stores at most `max_key_packages_per_device` unclaimed
/// packages: an upload past it is TOO_LARGE and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_key_packages_per_device_are_capped() {
    let (node, _clock, _dir) = start_node(|c| c.limits.max_key_packages_per_device = 25).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let device = client(root.path(), &url, "hoarder").await;
    let id = device.me().unwrap();
    let token = login(&url, &id).await;
    let (stored, _) = kp_count(&node, &device).await;
    assert!(stored <= 25);
    let upload = |n: usize| {
        let (key_packages, _) = mls::new_key_packages(device.db(), &id, n, false).unwrap();
        C::UploadKeyPackages(v1::UploadKeyPackages {
            key_packages,
            last_resort: Vec::new(),
        })
    };
    let room = 25 - stored as usize;
    let err = error_of(rpc(&url, &token, upload(room + 1)).await);
    assert_eq!(err.error_code(), ErrorCode::TooLarge, "{err:?}");
    assert!(err.message.contains("at most 25"), "{err:?}");
    assert_eq!(kp_count(&node, &device).await.0, stored);
    match rpc(&url, &token, upload(room)).await {
        Some(S::KeyPackagesUploaded(u)) => assert_eq!(u.count, 25),
        other => panic!("upload: {other:?}"),
    }
    assert_eq!(
        code_of(rpc(&url, &token, upload(1)).await),
        ErrorCode::TooLarge
    );
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Presence needs consent
// ---------------------------------------------------------------------------

/// alice adds a stranger who has not agreed to anything: while the stranger
/// has not processed the Welcome, alice learns nothing of its online status
/// (GetPresence says offline although it is connected, and its going
/// offline is not pushed). Once it joined, both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_visible_only_after_joining() {
    let (node, _clock, _dir) = start_node(|c| c.actors.presence_grace_ms = 0).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut alice = client(root.path(), &url, "alice").await;
    // Connected (registering connects), but its events are not processed:
    // it never sees the Welcome.
    let mut stranger = client(root.path(), &url, "stranger").await;
    let gid = alice.create_group("consent").await.unwrap().group_id;
    let g = hex::encode(&gid);
    alice
        .add_members(&g, &["stranger".into()])
        .await
        .expect("add");
    let snapshot = alice.refresh_presence(&g).await.expect("presence");
    assert!(
        snapshot.contains(&("stranger".to_string(), false)),
        "a stranger who did not join shows as offline: {snapshot:?}"
    );

    // The stranger goes offline (not pushed to alice), comes back and
    // processes the Welcome: now it is visible.
    stranger.close().await;
    stranger.connect().await.expect("reconnect");
    assert!(is_member(&stranger, &gid));
    pump_until(&mut alice, "the stranger online", |c| {
        c.live().presence("stranger") == Some(true)
    })
    .await;
    let told = alice.live_mut().take_changes();
    assert!(
        told.iter().all(|(u, on)| u != "stranger" || *on),
        "alice was told of the stranger going offline before it joined: {told:?}"
    );
    let snapshot = alice.refresh_presence(&g).await.expect("presence");
    assert!(
        snapshot.contains(&("stranger".to_string(), true)),
        "{snapshot:?}"
    );
    stranger.close().await;
    pump_until(&mut alice, "the stranger offline", |c| {
        c.live().presence("stranger") == Some(false)
    })
    .await;
    node.stop().await;
}

// ---------------------------------------------------------------------------
// Acks
// ---------------------------------------------------------------------------

/// An Ack names a group the device is in (NOT_MEMBER otherwise) and a seq
/// the group has (INVALID_ARGUMENT otherwise, 2^63 included); an AckInbox
/// names an inbox seq the device was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_name_a_group_of_the_device_and_a_seq_it_has() {
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let url = url(&node);
    let root = tempfile::tempdir().unwrap();
    let mut alice = client(root.path(), &url, "alice").await;
    let mut bob = client(root.path(), &url, "bob").await;
    let gid = group_of(&mut alice, &mut [&mut bob], "acks").await;
    let other = alice.create_group("alice only").await.unwrap().group_id;
    let token = login(&url, &bob.me().unwrap()).await;
    let ack = |group_id: &[u8], seq: u64| {
        C::Ack(v1::Ack {
            group_id: group_id.to_vec(),
            seq,
        })
    };

    assert_eq!(
        code_of(rpc(&url, &token, ack(&other, 1)).await),
        ErrorCode::NotMember
    );
    assert_eq!(
        code_of(rpc(&url, &token, ack(&random_id(), 1)).await),
        ErrorCode::NotMember
    );
    let head = match rpc(
        &url,
        &token,
        C::GetGroupInfo(v1::GetGroupInfo {
            group_id: gid.clone(),
        }),
    )
    .await
    {
        Some(S::GroupInfoResult(i)) => i.head_seq,
        other => panic!("group info: {other:?}"),
    };
    for seq in [head + 1, 1 << 63, u64::MAX] {
        assert_eq!(
            code_of(rpc(&url, &token, ack(&gid, seq)).await),
            ErrorCode::InvalidArgument,
            "seq {seq}"
        );
    }
    // The refused acks moved no cursor: none in the group bob is not in,
    // none past the head (the check and the write are one store step).
    let bob_device = bob.me().unwrap().device_id.clone();
    let cursors = node.store().cursors(&bob_device).await.unwrap();
    assert!(
        cursors.iter().all(|(g, seq)| *g == gid && *seq <= head),
        "{cursors:?}"
    );
    assert_eq!(rpc(&url, &token, ack(&gid, head)).await, None);
    // Again (a repeat is harmless).
    assert_eq!(rpc(&url, &token, ack(&gid, head)).await, None);
    assert!(node
        .store()
        .cursors(&bob_device)
        .await
        .unwrap()
        .contains(&(gid.clone(), head)));

    // bob's inbox had one item (the Welcome), which his client acknowledged.
    let inbox = |inbox_seq: u64| C::AckInbox(v1::AckInbox { inbox_seq });
    for seq in [2, 1 << 63, u64::MAX] {
        assert_eq!(
            code_of(rpc(&url, &token, inbox(seq)).await),
            ErrorCode::InvalidArgument,
            "inbox seq {seq}"
        );
    }
    assert_eq!(rpc(&url, &token, inbox(1)).await, None);
    node.stop().await;
}
