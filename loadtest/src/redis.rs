//! The baseline worker: the fan-out workload against Redis, measured the
//! same way as Hush, in one of two modes ([`RedisMode`]).
//!
//! - **Pub/sub**: group g is channel `lt<run>:<g>` with k-1 subscriber
//!   connections and one publisher connection; the publisher sends `PUBLISH`
//!   on the same open-loop schedule, `ack` is its reply. Nothing is kept and
//!   the receivers acknowledge nothing.
//! - **Streams**: group g is stream `lt<run>:<g>`; the publisher sends `XADD`
//!   (its reply, the entry id, is the ack: with `appendfsync always` Redis
//!   answers once the entry is fsynced in its AOF), each receiver reads with
//!   `XREAD BLOCK 0` from the last id it saw (a reconnect would resume
//!   there) and, at most once per `ack_interval_ms`, stores that id as its
//!   cursor with a `SET` pipelined before its next `XREAD`: durable before
//!   acknowledged, per-receiver cursors, as Hush promises.
//!
//! The payload carries the same 24-byte header (intended send time, group,
//! counter) padded to the same size; `e2e` and `completion` as for Hush.
//! Redis has no sequence numbers; the publisher's counter + 1 stands in for
//! the seq (one publisher per channel or stream, so it must arrive dense and
//! in order). Speaks RESP directly over TCP (no client library).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::clock::{now_ns, Clock};
use crate::endpoints::Sources;
use crate::payload::Header;
use crate::protocol::{FanoutJob, PhaseCmd, PhaseResult, Plan, RedisMode};
use crate::stats::{Counters, MessageHists, Seen, SeqTrack};
use crate::sync::lock;
use crate::workload::{wait_drained, Channels, Schedule, WorkerRun};

/// One RESP value (only what pub/sub and streams answer with; a null
/// array, `*-1`, reads as an empty one).
#[derive(Debug, PartialEq)]
pub enum Resp {
    Int(i64),
    Bulk(Vec<u8>),
    Simple(String),
    Error(String),
    Array(Vec<Resp>),
}

/// Reads one RESP reply.
pub async fn read_resp<R: AsyncBufRead + Unpin + Send>(r: &mut R) -> anyhow::Result<Resp> {
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

/// One command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
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
            Err(e) => return reader_ended(&shared, &e),
        };
        let at = now_ns();
        let Resp::Array(mut parts) = v else { continue };
        if parts.len() != 3 || parts[0] != Resp::Bulk(b"message".to_vec()) {
            continue;
        }
        let Some(Resp::Bulk(payload)) = parts.pop() else {
            continue;
        };
        received(&shared, &group, &track, &payload, at);
    }
}

/// A receiver's connection ended: unexpected unless the run is stopping.
fn reader_ended(shared: &Shared, e: &anyhow::Error) {
    if !shared.stopping.load(Ordering::Relaxed) {
        tracing::warn!(error = %e, "receiver ended");
        Counters::add(&shared.counters.closed_unexpected, 1);
    }
}

/// One message reached one receiver at `at` (Unix ns).
fn received(shared: &Shared, group: &Group, track: &Mutex<SeqTrack>, payload: &[u8], at: u64) {
    let c = &shared.counters;
    let Some(h) = Header::decode(payload).filter(|h| h.group == group.index) else {
        Counters::add(&c.payload_errors, 1);
        return;
    };
    match lock(track).observe(h.counter + 1) {
        Seen::Setup | Seen::Duplicate => return,
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

/// The entries of an `XREAD` reply for one stream, as (id, payload): the
/// reply is `[[key, [[id, [field, value]], ...]]]`, or a null array when a
/// block timed out. An entry without a value is skipped.
fn stream_entries(reply: Resp) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Resp::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stream in streams {
        let Resp::Array(mut key_entries) = stream else {
            continue;
        };
        let Some(Resp::Array(entries)) = key_entries.pop() else {
            continue;
        };
        for entry in entries {
            let Resp::Array(mut id_fields) = entry else {
                continue;
            };
            let (Some(Resp::Array(mut fields)), Some(Resp::Bulk(id))) =
                (id_fields.pop(), id_fields.pop())
            else {
                continue;
            };
            if let Some(Resp::Bulk(value)) = fields.pop() {
                out.push((id, value));
            }
        }
    }
    out
}

/// A receiver of streams mode: blocking `XREAD`s from the last id seen;
/// every `ack_every` at most (never when zero), once something new has
/// come, a `SET` of that id to `cursor_key` goes out in the same write as
/// the next `XREAD`, and its `+OK` is read first.
async fn stream_reader(
    shared: Arc<Shared>,
    group: Arc<Group>,
    track: Arc<Mutex<SeqTrack>>,
    (mut r, mut w): (BufReader<OwnedReadHalf>, OwnedWriteHalf),
    cursor_key: Vec<u8>,
    ack_every: Option<Duration>,
) {
    let mut last_id = b"0-0".to_vec();
    let mut stored_id = last_id.clone();
    let mut stored_at = Instant::now();
    loop {
        let store =
            ack_every.is_some_and(|every| stored_at.elapsed() >= every) && last_id != stored_id;
        let mut out = Vec::new();
        if store {
            out.extend(command(&[b"SET", &cursor_key, &last_id]));
        }
        out.extend(command(&[
            b"XREAD",
            b"BLOCK",
            b"0",
            b"STREAMS",
            &group.channel,
            &last_id,
        ]));
        if let Err(e) = w.write_all(&out).await {
            return reader_ended(&shared, &anyhow::Error::from(e));
        }
        if store {
            match read_resp(&mut r).await {
                Ok(Resp::Simple(_)) => {
                    stored_id.clone_from(&last_id);
                    stored_at = Instant::now();
                }
                Ok(other) => {
                    tracing::warn!(reply = ?other, "cursor SET failed");
                    Counters::add(&shared.counters.send_errors, 1);
                }
                Err(e) => return reader_ended(&shared, &e),
            }
        }
        let reply = match read_resp(&mut r).await {
            Ok(Resp::Error(e)) => return reader_ended(&shared, &anyhow::anyhow!("XREAD: {e}")),
            Ok(v) => v,
            Err(e) => return reader_ended(&shared, &e),
        };
        let at = now_ns();
        for (id, payload) in stream_entries(reply) {
            received(&shared, &group, &track, &payload, at);
            last_id = id;
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
            // PUBLISH answers with the number of subscribers, XADD with
            // the entry's id.
            Resp::Int(_) | Resp::Bulk(_) => {
                acked += 1;
                Counters::add(&c.acked, 1);
                group.acked_max.fetch_max(acked, Ordering::Relaxed);
                lock(&shared.hists).ack.record_ns(intended, at);
            }
            other => {
                tracing::warn!(reply = ?other, "PUBLISH / XADD failed");
                Counters::add(&c.send_errors, 1);
            }
        }
    }
}

/// Runs the Redis worker until `Stop`.
pub async fn run(plan: Plan, job: FanoutJob, mode: RedisMode, ch: Channels) -> anyhow::Result<()> {
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
        let at = Target {
            addr,
            mode,
            run_id: &plan.run_id,
        };
        groups.push(setup_group(&run.shared, &job, &at, &sources, g, channel).await?);
    }
    run.ready(0);
    while let Some(p) = run.next_phase().await {
        let r = phase(&run.clock, &run.shared, &job, mode, &groups, &p).await;
        run.phase_done(r);
    }
    run.finish(|| {});
    Ok(())
}

/// Where and how a worker's groups meet Redis.
struct Target<'a> {
    addr: SocketAddr,
    mode: RedisMode,
    run_id: &'a str,
}

/// Channel or stream `channel` with its k-1 receivers and its publisher,
/// each on its own connection.
async fn setup_group(
    shared: &Arc<Shared>,
    job: &FanoutJob,
    at: &Target<'_>,
    sources: &Sources,
    g: usize,
    channel: Vec<u8>,
) -> anyhow::Result<Arc<Group>> {
    let mut readers = Vec::new();
    let mut tracks = Vec::new();
    for _ in 1..job.group_size {
        let s = connect(at.addr, sources.next())
            .await
            .context("connect to redis")?;
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        if at.mode == RedisMode::PubSub {
            w.write_all(&command(&[b"SUBSCRIBE", &channel])).await?;
            match read_resp(&mut r).await? {
                Resp::Array(a) if a.first() == Some(&Resp::Bulk(b"subscribe".to_vec())) => {}
                other => anyhow::bail!("unexpected SUBSCRIBE reply {other:?}"),
            }
        }
        Counters::add(&shared.counters.conns_open, 1);
        let mut t = SeqTrack::default();
        t.start_after(0);
        let t = Arc::new(Mutex::new(t));
        tracks.push(t.clone());
        readers.push((r, t, w));
    }
    let s = connect(at.addr, sources.next()).await?;
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
    let ack_every = (job.ack_interval_ms > 0).then(|| Duration::from_millis(job.ack_interval_ms));
    for (i, (r, t, w)) in readers.into_iter().enumerate() {
        let (shared, group) = (shared.clone(), group.clone());
        match at.mode {
            RedisMode::PubSub => {
                tokio::spawn(async move {
                    // The write half must outlive the subscription.
                    let _keep = w;
                    subscriber(shared, group, t, r).await;
                });
            }
            RedisMode::Streams => {
                let cursor_key = format!("lt{}:cursor:{g}:{i}", at.run_id).into_bytes();
                tokio::spawn(stream_reader(
                    shared,
                    group,
                    t,
                    (r, w),
                    cursor_key,
                    ack_every,
                ));
            }
        }
    }
    Ok(group)
}

async fn phase(
    clock: &Clock,
    shared: &Arc<Shared>,
    job: &FanoutJob,
    mode: RedisMode,
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
                let payload = h.plaintext(payload_bytes);
                let cmd = match mode {
                    RedisMode::PubSub => command(&[b"PUBLISH", &g.channel, &payload]),
                    RedisMode::Streams => command(&[b"XADD", &g.channel, b"*", b"p", &payload]),
                };
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
    use super::{command, read_resp, stream_entries, Resp};

    #[test]
    fn resp_command_encoding() {
        assert_eq!(
            command(&[b"PUBLISH", b"c", b"x\r\n"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$3\r\nx\r\n\r\n".to_vec()
        );
    }

    /// An XREAD reply as redis-server 7 sends it: one stream, two entries,
    /// then the null array of a timed-out block.
    #[tokio::test]
    async fn xread_replies_give_their_entries_in_order() {
        let wire: &[u8] = b"*1\r\n*2\r\n$4\r\nlt:0\r\n*2\r\n\
            *2\r\n$3\r\n1-0\r\n*2\r\n$1\r\np\r\n$5\r\nfirst\r\n\
            *2\r\n$3\r\n1-1\r\n*2\r\n$1\r\np\r\n$6\r\nsecond\r\n\
            *-1\r\n";
        let mut r = wire;
        let entries = stream_entries(read_resp(&mut r).await.unwrap());
        assert_eq!(
            entries,
            vec![
                (b"1-0".to_vec(), b"first".to_vec()),
                (b"1-1".to_vec(), b"second".to_vec())
            ]
        );
        let timed_out = read_resp(&mut r).await.unwrap();
        assert_eq!(timed_out, Resp::Array(Vec::new()));
        assert!(stream_entries(timed_out).is_empty());
        assert!(
            read_resp(&mut r).await.is_err(),
            "the connection's end is an error"
        );
    }

    #[tokio::test]
    async fn an_xadd_reply_is_its_id_and_an_error_stays_one() {
        let mut r: &[u8] = b"$15\r\n1733600000000-0\r\n-ERR wrong type\r\n";
        assert_eq!(
            read_resp(&mut r).await.unwrap(),
            Resp::Bulk(b"1733600000000-0".to_vec())
        );
        assert_eq!(
            read_resp(&mut r).await.unwrap(),
            Resp::Error("ERR wrong type".into())
        );
    }
}
