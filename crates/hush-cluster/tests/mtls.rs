//! Real QUIC on loopback: nodes with certificates from the cluster CA talk;
//! a peer whose certificate comes from another CA is refused, whichever side
//! it is on; a node only accepts the peer it meant to dial.

use std::net::SocketAddr;
use std::time::Duration;

use hush_cluster::tls::{self, NodeIdentity};

const PATIENCE: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Accepts one connection and echoes one bidirectional stream.
fn serve_echo(endpoint: quinn::Endpoint) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let msg = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
        send.write_all(&msg).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        // Wait until the peer has read the answer.
        conn.closed().await;
        Ok(())
    })
}

async fn dial_and_echo(
    from: &quinn::Endpoint,
    to: SocketAddr,
    node: &str,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let name = tls::node_dns_name(node);
    let conn = from
        .connect(to, &name)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // The side that opens a stream writes first.
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(msg).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let back = recv.read_to_end(1024).await.map_err(|e| e.to_string())?;
    conn.close(0u32.into(), b"done");
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_ca_talk_and_strangers_are_refused() {
    let shared = tempfile::tempdir().unwrap();
    let n1 = NodeIdentity::dev(shared.path(), "n1").unwrap();
    let n2 = NodeIdentity::dev(shared.path(), "n2").unwrap();
    let e1 = n1.endpoint(loopback()).unwrap();
    let e2 = n2.endpoint(loopback()).unwrap();
    let addr1 = e1.local_addr().unwrap();

    let server = serve_echo(e1.clone());
    let back = tokio::time::timeout(PATIENCE, dial_and_echo(&e2, addr1, "n1", b"ping"))
        .await
        .expect("in time")
        .expect("n2 reaches n1");
    assert_eq!(back, b"ping");
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("in time")
        .unwrap()
        .expect("n1 served n2");

    // A stranger: a certificate for "n3" from a CA of its own.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = NodeIdentity::dev(elsewhere.path(), "n3").unwrap();
    let e3 = stranger.endpoint(loopback()).unwrap();

    // The stranger dials n1. It even trusts our CA (so n1's certificate
    // passes on its side); n1 must refuse its client certificate.
    let impostor = NodeIdentity {
        node_id: "n3".into(),
        chain: stranger.chain.clone(),
        key: stranger.key.clone_key(),
        roots: n1.roots.clone(),
    };
    let e_impostor = impostor.endpoint(loopback()).unwrap();
    let server = serve_echo(e1.clone());
    let r = tokio::time::timeout(
        PATIENCE,
        dial_and_echo(&e_impostor, addr1, "n1", b"let me in"),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "n1 answered a peer with an untrusted certificate"
    );
    let served = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("in time");
    assert!(!matches!(served, Ok(Ok(()))), "n1 accepted the stranger");

    // n2 dials the stranger: n2 refuses the stranger's server certificate.
    let addr3 = e3.local_addr().unwrap();
    let _server = serve_echo(e3.clone());
    let r = tokio::time::timeout(PATIENCE, dial_and_echo(&e2, addr3, "n3", b"hello?")).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "n2 trusted a server certificate from another CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_only_accepts_the_peer_it_dialed() {
    let shared = tempfile::tempdir().unwrap();
    let n1 = NodeIdentity::dev(shared.path(), "n1").unwrap();
    let n2 = NodeIdentity::dev(shared.path(), "n2").unwrap();
    let e1 = n1.endpoint(loopback()).unwrap();
    let e2 = n2.endpoint(loopback()).unwrap();
    let _server = serve_echo(e1.clone());
    // n2 thinks it dials n3, but n1 answers: the name check fails.
    let r = tokio::time::timeout(
        PATIENCE,
        dial_and_echo(&e2, e1.local_addr().unwrap(), "n3", b"x"),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "a certificate for n1 passed as n3");
}

#[test]
fn concurrent_first_starts_share_one_ca() {
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().to_path_buf();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || NodeIdentity::dev(&dir, &format!("n{i}")).unwrap())
        })
        .collect();
    let ids: Vec<NodeIdentity> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let key = std::fs::read(dir.join("cluster-ca.key")).unwrap();
    assert!(!key.is_empty());
    // Everyone's roots verify everyone's certificate: checked end to end
    // above; here, that exactly one key file exists and no temp file stays.
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["cluster-ca.key"], "{files:?}");
    assert_eq!(ids.len(), 4);
}
