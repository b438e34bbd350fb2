//! The baseline worker: the fan-out workload against Redis pub/sub, measured
//! the same way as Hush. Group g is channel `lt<run>:<g>` with k-1
//! subscriber connections and one publisher connection; the publisher sends
//! `PUBLISH` on the same open-loop schedule, the payload carries the same
//! 24-byte header (intended send time, group, counter) padded to the same
//! size, `ack` is the PUBLISH reply, `e2e` and `completion` as for Hush.
//! Redis has no sequence numbers; the publisher's counter + 1 stands in for
//! the seq (one publisher per channel, so it must arrive dense and in order).
//! Speaks RESP directly over TCP (no client library): PUBLISH, SUBSCRIBE.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::clock::{now_ns, Clock};
use crate::endpoints::Sources;
use crate::payload::Header;
use crate::protocol::{FanoutJob, PhaseCmd, PhaseResult, Plan};
use crate::stats::{Counters, MessageHists, Seen, SeqTrack};
use crate::sync::lock;
use crate::workload::{wait_drained, Channels, Schedule, WorkerRun};

/// One RESP value (only what pub/sub answers with).
#[derive(Debug, PartialEq)]
enum Resp {
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Array(Vec<Resp>),
}

async fn read_resp(r: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<Resp> {
    let mut line = Vec::new();
    let n = r.read_until(b'\n', &mut line).await?;
    anyhow::ensure!(n > 0, "redis closed the connection");
    let text = String::from_utf8_lossy(&line[1..line.len().saturating_sub(2).max(1)]).to_string();
    Ok(match line[0] {
        b':' => Resp::Int(text.parse()?),
        b'+' => Resp::Simple(text),
        b'-' => Resp::Error(text),
        b'$' => {
            let len: i64 = text.parse()?;
            if len < 0 {
                Resp::Bulk(Vec::new())
            } else {
                let mut b = vec![0u8; len as usize + 2];
                r.read_exact(&mut b).await?;
                b.truncate(len as usize);
                Resp::Bulk(b)
            }
        }
        b'*' => {
            let n: i64 = text.parse()?;
            let mut v = Vec::new();
            for _ in 0..n.max(0) {
                v.push(Box::pin(read_resp(r)).await?);
            }
            Resp::Array(v)
        }
        other => anyhow::bail!("unexpected RESP type byte {other}"),
    })
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Default)]
struct Shared {
    counters: Counters,
    hists: Mutex<MessageHists>,
    last_event_ns: AtomicU64,
    stopping: AtomicBool,
}

struct Group {
    index: u32,
    channel: Vec<u8>,
    receivers: u32,
    completion: Mutex<HashMap<u64, u32>>,
    acked_max: AtomicU64,
    tracks: Vec<Arc<Mutex<SeqTrack>>>,
    /// Intended send times of PUBLISHes not yet answered, in order.
    inflight: Arc<Mutex<VecDeque<u64>>>,
    publisher: tokio::sync::Mutex<(OwnedWriteHalf, u64)>,
}

async fn connect(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn subscriber(
    shared: Arc<Shared>,
    group: Arc<Group>,
    track: Arc<Mutex<SeqTrack>>,
    mut r: BufReader<OwnedReadHalf>,
) {
    loop {
        let v = match read_resp(&mut r).await {
            Ok(v) => v,
            Err(e) => {
                if !shared.stopping.load(Ordering::Relaxed) {
                    tracing::warn!(error = %e, "subscriber ended");
                    Counters::add(&shared.counters.closed_unexpected, 1);
                }
                return;
            }
        };
        let at = now_ns();
        let Resp::Array(mut parts) = v else { continue };
        if parts.len() != 3 || parts[0] != Resp::Bulk(b"message".to_vec()) {
            continue;
        }
        let Some(Resp::Bulk(payload)) = parts.pop() else {
            continue;
        };
        let c = &shared.counters;
        let Some(h) = Header::decode(&payload).filter(|h| h.group == group.index) else {
            Counters::add(&c.payload_errors, 1);
            continue;
        };
        match lock(&track).observe(h.counter + 1) {
            Seen::Setup | Seen::Duplicate => continue,
            _ => {}
        }
        Counters::add(&c.delivered, 1);
        shared.last_event_ns.fetch_max(at, Ordering::Relaxed);
        let done = {
            let mut m = lock(&group.completion);
            let left = m.entry(h.counter).or_insert(group.receivers);
            *left = left.saturating_sub(1);
            if *left == 0 {
                m.remove(&h.counter);
                true
            } else {
                false
            }
        };
        let mut hs = lock(&shared.hists);
        hs.e2e.record_ns(h.sent_ns, at);
        if done {
            hs.completion.record_ns(h.sent_ns, at);
        }
    }
}

async fn publisher_replies(
    shared: Arc<Shared>,
    group: Arc<Group>,
    mut r: BufReader<OwnedReadHalf>,
) {
    let mut acked = 0u64;
    loop {
        let v = match read_resp(&mut r).await {
            Ok(v) => v,
            Err(_) => return,
        };
        let at = now_ns();
        let Some(intended) = lock(&group.inflight).pop_front() else {
            continue;
        };
        let c = &shared.counters;
        match v {
            Resp::Int(_) => {
                acked += 1;
                Counters::add(&c.acked, 1);
                group.acked_max.fetch_max(acked, Ordering::Relaxed);
                lock(&shared.hists).ack.record_ns(intended, at);
            }
            other => {
                tracing::warn!(reply = ?other, "PUBLISH failed");
                Counters::add(&c.send_errors, 1);
            }
        }
    }
}

/// Runs the Redis worker until `Stop`.
pub async fn run(plan: Plan, job: FanoutJob, ch: Channels) -> anyhow::Result<()> {
    let addr: SocketAddr =
        tokio::net::lookup_host(plan.servers.first().context("no redis address")?.as_str())
            .await?
            .next()
            .context("cannot resolve redis address")?;
    let mut run = WorkerRun::start(ch, |s: &Shared| (&s.counters, &s.stopping));
    let sources = Sources::new(plan.sources.clone());
    let mut groups = Vec::new();
    for g in job.first_group..job.first_group + job.groups {
        let channel = format!("lt{}:{g}", plan.run_id).into_bytes();
        groups.push(setup_group(&run.shared, &job, addr, &sources, g, channel).await?);
    }
    run.ready(0);
    while let Some(p) = run.next_phase().await {
        let r = phase(&run.clock, &run.shared, &job, &groups, &p).await;
        run.phase_done(r);
    }
    run.finish(|| {});
    Ok(())
}

/// Channel `channel` with its k-1 subscribers and its publisher, each on
/// its own connection.
async fn setup_group(
    shared: &Arc<Shared>,
    job: &FanoutJob,
    addr: SocketAddr,
    sources: &Sources,
    g: usize,
    channel: Vec<u8>,
) -> anyhow::Result<Arc<Group>> {
    let mut readers = Vec::new();
    let mut tracks = Vec::new();
    for _ in 1..job.group_size {
        let s = connect(addr, sources.next())
            .await
            .context("connect to redis")?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(&command(&[b"SUBSCRIBE", &channel])).await?;
        match read_resp(&mut r).await? {
            Resp::Array(a) if a.first() == Some(&Resp::Bulk(b"subscribe".to_vec())) => {}
            other => anyhow::bail!("unexpected SUBSCRIBE reply {other:?}"),
        }
        Counters::add(&shared.counters.conns_open, 1);
        let mut t = SeqTrack::default();
        t.start_after(0);
        let t = Arc::new(Mutex::new(t));
        tracks.push(t.clone());
        // The write half must outlive the subscription.
        readers.push((r, t, w));
    }
    let s = connect(addr, sources.next()).await?;
    Counters::add(&shared.counters.conns_open, 1);
    let (pr, pw) = s.into_split();
    let group = Arc::new(Group {
        index: g as u32,
        channel,
        receivers: (job.group_size - 1) as u32,
        completion: Mutex::default(),
        acked_max: AtomicU64::new(0),
        tracks,
        inflight: Arc::default(),
        publisher: tokio::sync::Mutex::new((pw, 0)),
    });
    tokio::spawn(publisher_replies(
        shared.clone(),
        group.clone(),
        BufReader::new(pr),
    ));
    for (r, t, w) in readers {
        let (shared, group) = (shared.clone(), group.clone());
        tokio::spawn(async move {
            let _keep = w;
            subscriber(shared, group, t, r).await;
        });
    }
    Ok(group)
}

async fn phase(
    clock: &Clock,
    shared: &Arc<Shared>,
    job: &FanoutJob,
    groups: &[Arc<Group>],
    p: &PhaseCmd,
) -> PhaseResult {
    *lock(&shared.hists) = MessageHists::default();
    let before = shared.counters.tick();
    let n = Schedule::count(p.duration_s, p.rate);
    let mut tasks = Vec::new();
    for g in groups {
        let schedule = Schedule::for_group(p.start_ns, p.rate, g.index, job.total_groups);
        let (g, shared, clock) = (g.clone(), shared.clone(), *clock);
        let payload_bytes = job.payload_bytes;
        tasks.push(tokio::spawn(async move {
            let mut pubr = g.publisher.lock().await;
            for i in 0..n {
                let intended = schedule.at(i);
                tokio::time::sleep_until(clock.instant_at(intended)).await;
                let counter = pubr.1;
                pubr.1 += 1;
                let h = Header {
                    sent_ns: intended,
                    group: g.index,
                    counter,
                };
                let cmd = command(&[b"PUBLISH", &g.channel, &h.plaintext(payload_bytes)]);
                lock(&g.inflight).push_back(intended);
                Counters::add(&shared.counters.sent, 1);
                if pubr.0.write_all(&cmd).await.is_err() {
                    Counters::add(&shared.counters.send_errors, 1);
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    wait_drained(p.drain_timeout_s, || {
        groups.iter().all(|g| {
            let head = g.acked_max.load(Ordering::Relaxed);
            lock(&g.inflight).is_empty() && g.tracks.iter().all(|t| lock(t).contiguous() >= head)
        })
    })
    .await;
    let after = shared.counters.tick();
    let mut corr = shared.counters.correctness();
    for g in groups {
        let tracks: Vec<SeqTrack> = g.tracks.iter().map(|t| lock(t).clone()).collect();
        corr.add_timeline(&tracks, g.acked_max.load(Ordering::Relaxed));
        corr.unacked += lock(&g.inflight).len() as u64;
    }
    PhaseResult {
        correctness: corr,
        hists: std::mem::take(&mut *lock(&shared.hists)).into_named(),
        last_event_ns: shared.last_event_ns.load(Ordering::Relaxed),
        ..PhaseResult::between(p.index, before, after)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resp_command_encoding() {
        assert_eq!(
            super::command(&[b"PUBLISH", b"c", b"x\r\n"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\nx\r\n\r\n".to_vec()
        );
    }
}
