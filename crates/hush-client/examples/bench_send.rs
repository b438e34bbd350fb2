//! Quick closed-loop throughput check of one node with real SDK clients
//! (live MLS: every message is encrypted by openmls in this process and
//! decrypted by the receivers). Not the load generator (see loadtest/): it
//! gives one honest number per run, a lower bound of the node's capacity,
//! since the clients share this machine's cores with the node.
//!
//! Usage: bench_send SERVER_URL[,URL...] [GROUPS] [MESSAGES_PER_GROUP]
//!   cargo run --release -p hush-client --example bench_send -- http://127.0.0.1:7300 8 250
//!
//! With several node URLs (a cluster), group g's sender starts at node g and
//! its receiver at node g + 1 (mod the count), so every message crosses
//! nodes: forwarded to the group's owner unless the sender sits there, and
//! fanned out to the receiver's node.

use std::time::Instant;

use hush_client::client::Client;

#[tokio::main]
async fn main() -> anyhow_like::Result<()> {
    let mut args = std::env::args().skip(1);
    let server = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7300".into());
    let groups: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8);
    let per_group: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(250);
    let root = tempfile::tempdir()?;
    let run = std::process::id();
    let nodes: Vec<&str> = server.split(',').collect();
    let from = |i: usize| {
        (0..nodes.len())
            .map(|k| nodes[(i + k) % nodes.len()])
            .collect::<Vec<_>>()
            .join(",")
    };

    // Each group: one sender, one receiver, both their own users.
    let mut pairs = Vec::new();
    for g in 0..groups {
        let mut sender = Client::open(&root.path().join(format!("s{g}")), Some(&from(g)))?;
        sender.register(&format!("s{run}x{g}")).await?;
        let mut receiver = Client::open(&root.path().join(format!("r{g}")), Some(&from(g + 1)))?;
        let rname = format!("r{run}x{g}");
        receiver.register(&rname).await?;
        let gid = hex::encode(sender.create_group(&format!("bench {g}")).await?.group_id);
        sender.add_members(&gid, &[rname]).await?;
        receiver.sync().await?;
        pairs.push((sender, receiver, gid));
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut sender, receiver, gid) in pairs {
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..per_group {
                last = sender
                    .send_text(&gid, &format!("bench message {i}"))
                    .await?;
            }
            Ok::<_, hush_client::ClientError>((receiver, gid, last))
        }));
    }
    let mut receivers = Vec::new();
    for t in tasks {
        receivers.push(t.await??);
    }
    let send_secs = started.elapsed().as_secs_f64();
    let total = groups * per_group;

    // Receivers read and decrypt the whole backlog.
    let read_started = Instant::now();
    for (mut r, gid, last) in receivers {
        r.sync().await?;
        let seen = r
            .take_unshown()?
            .into_iter()
            .filter(|(g, row)| hex::encode(g) == gid && row.kind == "text")
            .count();
        assert_eq!(seen, per_group, "receiver missed messages");
        let last_seq = r.db().group(&hex::decode(&gid)?)?.map(|g| g.last_seq);
        assert!(last_seq >= Some(last));
    }
    let read_secs = read_started.elapsed().as_secs_f64();
    println!(
        "groups={groups} messages={total} send: {:.1}s = {:.0} acked msg/s (closed loop, {groups} concurrent senders); receivers synced+decrypted in {:.1}s = {:.0} msg/s",
        send_secs,
        total as f64 / send_secs,
        read_secs,
        total as f64 / read_secs
    );
    Ok(())
}

/// A tiny boxed error so the example needs no extra dependency.
mod anyhow_like {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
