//! The delivery path's pieces without sockets: encoding a timeline entry as
//! the `GroupEvent` frame (once per entry), handing one entry to N
//! connection queues (the frame's bytes shared, never copied per
//! recipient), and the same through the node's connection table by member
//! device (`Connections::write_devices`, what a fan-out runs on each node),
//! and that again with every entry written straight to each connection's
//! transport (the direct path of a synced WebSocket, `fanout_direct`), and
//! left to the connections' pump and written by it (`fanout_pumped`).
//!
//! `cargo bench -p hush-node --bench fanout`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hush_node::conns::{Connections, DirectSink, Live, LocalConn, Pump, QueueRx};
use hush_node::wire::{EntryRef, Outbound};
use hush_store::{EntryKind, MemberDevice};
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

/// The item a fan-out hands to every recipient: the entry's frame, encoded
/// once.
fn entry_item(group_id: &Arc<[u8]>, message: &[u8]) -> Outbound {
    entry_item_at(group_id, message, 1)
}

fn entry_item_at(group_id: &Arc<[u8]>, message: &[u8], seq: u64) -> Outbound {
    Outbound::Group {
        group_id: group_id.clone(),
        seq,
        frame: entry(group_id, message).frame(),
        durable_at: None,
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
                let item = entry_item(&group_id, &message);
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

/// A connection table of `2n` connections, one per device, half of them
/// the members' (the other half other users'), each with the `Live` that
/// `live` makes: the table, the member devices (sorted) and every
/// connection's queue (the members' first, in member order).
fn table_of(
    n: usize,
    live: impl Fn() -> Arc<Live>,
) -> (Connections, Vec<MemberDevice>, Vec<QueueRx>) {
    let table = Connections::new(64);
    let (mut members, mut receivers, mut others) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..2 * n {
        let (tx, rx) = hush_node::conns::queue(64);
        let user_id = format!("user{i}");
        let device_id = format!("{user_id}-{:032x}", i);
        if i % 2 == 0 {
            members.push(MemberDevice {
                user_id: user_id.clone(),
                device_id: device_id.clone(),
            });
            receivers.push(rx);
        } else {
            others.push(rx);
        }
        table.insert(
            i as u64,
            LocalConn {
                user_id,
                device_id,
                tx,
                overflowed: Default::default(),
                session_node: "n1".into(),
                depth: Default::default(),
                live: live(),
            },
        );
    }
    members.sort();
    receivers.extend(others);
    (table, members, receivers)
}

/// One entry to the connections of `n` member devices through the node's
/// connection table (one connection each, among 2n: half the table is
/// other users'), then every queue drained, per iteration.
fn fanout_by_device(c: &mut Criterion) {
    let group_id: Arc<[u8]> = Arc::from(&[7u8; 16][..]);
    let message = vec![0x5a; 200];
    let mut group = c.benchmark_group("fanout_by_device");
    for n in [10usize, 100, 1000] {
        let (table, members, mut receivers) = table_of(n, Arc::default);
        receivers.truncate(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let item = entry_item(&group_id, &message);
                assert!(table.write_devices(&members, &item).is_empty());
                for rx in &mut receivers {
                    rx.try_recv().expect("delivered");
                }
            })
        });
    }
    group.finish();
}

/// A transport that always has room and takes each frame at once (drops
/// it, and with it the frame's place in the counts).
struct Takes;

impl DirectSink for Takes {
    fn has_room(&mut self) -> bool {
        true
    }
    fn write(&mut self, frame: hush_node::wire::Frame) -> bool {
        drop(frame);
        true
    }
}

/// [`fanout_by_device`] with every connection synced and its transport
/// free: each entry is the next of its group, so the fan-out writes it to
/// every transport itself (`Live::write_next`) and no queue is touched.
/// `fanout_pumped`: the same with the connections' pump (as a WebSocket's):
/// the fan-out leaves each frame pending, then the pump writes them
/// (`Pump::write_due`, here on the same thread, without the wake).
fn fanout_direct(c: &mut Criterion) {
    let group_id: Arc<[u8]> = Arc::from(&[7u8; 16][..]);
    let message = vec![0x5a; 200];
    for pumped in [false, true] {
        let mut group = c.benchmark_group(if pumped {
            "fanout_pumped"
        } else {
            "fanout_direct"
        });
        for n in [10usize, 100, 1000] {
            let pump = Arc::new(Pump::default());
            let synced = || {
                let live = Arc::new(Live::new(
                    Some(Box::new(Takes)),
                    pumped.then(|| pump.clone()),
                ));
                {
                    let mut state = live.lock();
                    state.open = true;
                    state.sent.insert(group_id.to_vec(), 0);
                }
                live
            };
            let (table, members, mut receivers) = table_of(n, synced);
            let mut seq = 0;
            let mut batch = Vec::new();
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    seq += 1;
                    let item = entry_item_at(&group_id, &message, seq);
                    assert!(table.write_devices(&members, &item).is_empty());
                    if pumped {
                        assert_eq!(pump.write_due(&mut batch), n);
                    }
                })
            });
            for rx in &mut receivers {
                assert!(rx.try_recv().is_err(), "nothing went through a queue");
            }
        }
        group.finish();
    }
}

criterion_group!(
    benches,
    frame_encode,
    fanout_to_queues,
    fanout_by_device,
    fanout_direct
);
criterion_main!(benches);
