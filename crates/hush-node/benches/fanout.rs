//! The delivery path's pieces without sockets: encoding a timeline entry as
//! the `GroupEvent` frame (once per entry), and handing one entry to N
//! connection queues (the frame's bytes shared, never copied per
//! recipient).
//!
//! `cargo bench -p hush-node --bench fanout`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hush_node::wire::{EntryRef, Outbound};
use hush_store::EntryKind;
use tokio::sync::mpsc;

fn entry<'a>(group_id: &'a [u8], message: &'a [u8]) -> EntryRef<'a> {
    EntryRef {
        group_id,
        seq: 123_456,
        kind: EntryKind::Application,
        epoch: 7,
        sender: "user0/user0-1",
        message,
        server_time_ms: 1_764_870_000_000,
    }
}

fn frame_encode(c: &mut Criterion) {
    let group_id = [7u8; 16];
    let mut group = c.benchmark_group("frame_encode");
    for size in [64usize, 1024, 16 * 1024] {
        let message = vec![0x5a; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &message, |b, m| {
            b.iter(|| entry(&group_id, m).frame())
        });
    }
    group.finish();
}

/// One entry to `n` connection queues, then every queue drained (what the
/// connections' tasks would do), per iteration.
fn fanout_to_queues(c: &mut Criterion) {
    let group_id: Arc<[u8]> = Arc::from(&[7u8; 16][..]);
    let message = vec![0x5a; 200];
    let mut group = c.benchmark_group("fanout_to_queues");
    for n in [10usize, 100, 1000] {
        let queues: Vec<(mpsc::Sender<Outbound>, mpsc::Receiver<Outbound>)> =
            (0..n).map(|_| mpsc::channel(64)).collect();
        let (senders, mut receivers): (Vec<_>, Vec<_>) = queues.into_iter().unzip();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let item = Outbound::Group {
                    group_id: group_id.clone(),
                    seq: 1,
                    frame: entry(&group_id, &message).frame(),
                    durable_at: None,
                };
                for tx in &senders {
                    tx.try_send(item.clone()).expect("queue has room");
                }
                for rx in &mut receivers {
                    rx.try_recv().expect("delivered");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame_encode, fanout_to_queues);
criterion_main!(benches);
