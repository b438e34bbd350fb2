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
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::payload::{now_ns, Header};
use crate::stats::{Correctness, Counters, Hist, Seen, SeqTrack};
use crate::worker::{FanoutJob, FromWorker, PhaseCmd, PhaseResult, Plan, ToWorker};
use crate::Clock;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
    hists: Mutex<(Hist, Hist, Hist)>, // ack, e2e, completion
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
        hs.1.record_ns(h.sent_ns, at);
        if done {
            hs.2.record_ns(h.sent_ns, at);
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
                lock(&shared.hists).0.record_ns(intended, at);
            }
            other => {
                tracing::warn!(reply = ?other, "PUBLISH failed");
                Counters::add(&c.send_errors, 1);
            }
        }
    }
}

/// Runs the Redis worker until `Stop`.
pub async fn run(
    plan: Plan,
    job: FanoutJob,
    mut cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
) -> anyhow::Result<()> {
    let clock = Clock::now();
    let addr: SocketAddr =
        tokio::net::lookup_host(plan.servers.first().context("no redis address")?.as_str())
            .await?
            .next()
            .context("cannot resolve redis address")?;
    let shared = Arc::new(Shared::default());
    let ticker = {
        let shared = shared.clone();
        crate::spawn_ticker(events.clone(), move || shared.counters.tick())
    };
    let setup = std::time::Instant::now();
    let mut src = 0usize;
    let mut next_source = || {
        src += 1;
        (!plan.sources.is_empty()).then(|| plan.sources[src % plan.sources.len()])
    };
    let mut groups = Vec::new();
    for g in job.first_group..job.first_group + job.groups {
        let channel = format!("lt{}:{g}", plan.run_id).into_bytes();
        let mut readers = Vec::new();
        let mut tracks = Vec::new();
        for _ in 1..job.group_size {
            let s = connect(addr, next_source())
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
        let s = connect(addr, next_source()).await?;
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
        groups.push(group);
    }
    let _ = events.send(FromWorker::Ready {
        setup_s: setup.elapsed().as_secs_f64(),
        registered: 0,
    });
    while let Some(cmd) = cmds.recv().await {
        let p: PhaseCmd = match cmd {
            ToWorker::Stop => break,
            ToWorker::Phase(p) => p,
        };
        let r = phase(&clock, &shared, &job, &groups, &p).await;
        let _ = events.send(FromWorker::PhaseDone(Box::new(r)));
    }
    shared.stopping.store(true, Ordering::SeqCst);
    ticker.abort();
    Ok(())
}

async fn phase(
    clock: &Clock,
    shared: &Arc<Shared>,
    job: &FanoutJob,
    groups: &[Arc<Group>],
    p: &PhaseCmd,
) -> PhaseResult {
    *lock(&shared.hists) = Default::default();
    let before = shared.counters.tick();
    let period = 1e9 / p.rate;
    let n = (p.duration_s * p.rate).floor() as u64;
    let mut tasks = Vec::new();
    for g in groups {
        let offset = (g.index as f64 / job.total_groups as f64) * period;
        let start = p.start_ns + offset as u64;
        let (g, shared, clock) = (g.clone(), shared.clone(), *clock);
        let payload_bytes = job.payload_bytes;
        tasks.push(tokio::spawn(async move {
            let mut pubr = g.publisher.lock().await;
            for i in 0..n {
                let intended = start + (i as f64 * period) as u64;
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
    let drained = || {
        groups.iter().all(|g| {
            let head = g.acked_max.load(Ordering::Relaxed);
            lock(&g.inflight).is_empty() && g.tracks.iter().all(|t| lock(t).contiguous() >= head)
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(p.drain_timeout_s);
    while !drained() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = shared.counters.tick();
    let mut corr = Correctness {
        send_errors: after.send_errors,
        payload_errors: shared.counters.payload_errors.load(Ordering::Relaxed),
        closed_unexpected: after.closed_unexpected,
        ..Correctness::default()
    };
    for g in groups {
        let tracks: Vec<SeqTrack> = g.tracks.iter().map(|t| lock(t).clone()).collect();
        let head = tracks
            .iter()
            .map(|t| t.max_seen())
            .max()
            .unwrap_or(0)
            .max(g.acked_max.load(Ordering::Relaxed));
        for t in &tracks {
            corr.lost += t.lost(head);
            corr.duplicated += t.duplicates;
            corr.reordered += t.reordered;
        }
        corr.unacked += lock(&g.inflight).len() as u64;
    }
    let (ack, e2e, completion) = std::mem::take(&mut *lock(&shared.hists));
    PhaseResult {
        index: p.index,
        sent: after.sent - before.sent,
        acked: after.acked - before.acked,
        delivered: after.delivered - before.delivered,
        correctness: corr,
        hists: [
            ("ack".to_string(), ack),
            ("e2e".to_string(), e2e),
            ("completion".to_string(), completion),
        ]
        .into_iter()
        .collect(),
        last_event_ns: shared.last_event_ns.load(Ordering::Relaxed),
        conns_open: after.conns_open,
        failover: None,
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
