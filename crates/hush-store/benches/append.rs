//! The SQLite store's write path under group commit: a batch of
//! `append_message` calls issued at once (the writer commits them in one
//! transaction, one fsync), the ack path's read (`ack_state`), and a herd
//! of cursor acks (`ack_cursor_then`, every member of a 1,000-member group
//! acking at once, as the large-group scenario's receivers do).
//!
//! `cargo bench -p hush-store --bench append`; for instruction counts of a
//! fixed amount of work, run the built binary under
//! `valgrind --tool=callgrind` with `--profile-time 0`-style short runs, or
//! set `HUSH_BENCH_FIXED=N` to run N batches once, outside criterion.

use std::sync::Arc;

use criterion::{criterion_group, BatchSize, Criterion};
use hush_store::{
    AppendOutcome, EntryKind, GroupRecord, MemberDevice, NewEntry, NewGroup, SqliteConfig,
    SqliteStore, Store,
};

/// Messages appended per batch (all in flight at once).
const BATCH: usize = 100;

/// The group's members, each acking once per herd.
const HERD: usize = 1_000;

struct Fixture {
    store: Arc<SqliteStore>,
    fence: u64,
    _dir: tempfile::TempDir,
    next_id: u64,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SqliteConfig::new(dir.path().join("bench.db"));
    // A herd arrives at once: acks' wait for company would only add time
    // to what this measures (the writer's work per ack).
    config.ack_delay = std::time::Duration::ZERO;
    let store = SqliteStore::open(config).await.expect("open");
    let members: Vec<MemberDevice> = (0..HERD)
        .map(|i| MemberDevice {
            user_id: format!("user{i}"),
            device_id: format!("user{i}-1"),
        })
        .collect();
    store
        .create_group(&NewGroup {
            group: GroupRecord {
                group_id: b"bench-group".to_vec(),
                epoch: 1,
                state: vec![0; 512],
                group_info: vec![0; 256],
                ratchet_tree: vec![0; 1024],
                head_seq: 0,
                members,
            },
        })
        .await
        .expect("create group");
    let fence = store
        .acquire_lease(b"bench-group", "bench", 0, u64::MAX / 4)
        .await
        .expect("lease")
        .token;
    Fixture {
        store: Arc::new(store),
        fence,
        _dir: dir,
        next_id: 0,
    }
}

fn entry(id: u64) -> NewEntry {
    NewEntry {
        kind: EntryKind::Application,
        epoch: 1,
        sender: "user0/user0-1".into(),
        client_msg_id: id.to_be_bytes().to_vec(),
        message: vec![0x5a; 200],
        server_time_ms: id,
    }
}

/// Appends `BATCH` messages at once and waits for every ack.
async fn append_batch(f: &mut Fixture) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..BATCH {
        f.next_id += 1;
        let (store, fence, e) = (f.store.clone(), f.fence, entry(f.next_id));
        tasks.spawn(async move { store.append_message(b"bench-group", fence, &e).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("append");
    }
}

/// Every member acks the group's head at once (each a seq past its
/// cursor); returns once every ack is stored.
async fn ack_herd(f: &mut Fixture) {
    f.next_id += 1;
    let head = match f
        .store
        .append_message(b"bench-group", f.fence, &entry(f.next_id))
        .await
        .expect("append")
    {
        AppendOutcome::Appended { seq } | AppendOutcome::Duplicate { seq } => seq,
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..HERD {
        let done = done_tx.clone();
        f.store
            .ack_cursor_then(
                &format!("user{i}-1"),
                b"bench-group",
                head,
                Box::new(|_| true),
                Box::new(move |r| {
                    let _ = done.send(r.map(|(_, moved)| moved));
                }),
            )
            .await;
    }
    for _ in 0..HERD {
        assert!(
            done_rx.recv().await.expect("ack").expect("stored"),
            "the cursor moved"
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let mut f = rt.block_on(fixture());
    let mut group = c.benchmark_group("sqlite");
    group.throughput(criterion::Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("append_batch_100", |b| {
        b.iter(|| rt.block_on(append_batch(&mut f)))
    });
    group.throughput(criterion::Throughput::Elements(HERD as u64));
    group.bench_function("ack_herd_1000", |b| {
        b.iter(|| rt.block_on(ack_herd(&mut f)))
    });
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("ack_state", |b| {
        b.iter_batched(
            || (),
            |()| {
                rt.block_on(f.store.ack_state("user3-1", b"bench-group"))
                    .expect("ack state")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// `HUSH_BENCH_FIXED=N`: N append batches (`HUSH_BENCH_FIXED_ACKS=1`: N
/// ack herds), once, no statistics (a fixed workload for instruction counts
/// under callgrind).
fn fixed(n: usize) {
    let acks = std::env::var_os("HUSH_BENCH_FIXED_ACKS").is_some();
    let rt = runtime();
    rt.block_on(async {
        let mut f = fixture().await;
        for _ in 0..n {
            if acks {
                ack_herd(&mut f).await;
            } else {
                append_batch(&mut f).await;
            }
        }
    });
}

criterion_group!(store_benches, benches);

fn main() {
    if let Some(n) = std::env::var("HUSH_BENCH_FIXED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fixed(n);
        return;
    }
    store_benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
