//! The connect worker: registers one user per connection during setup, then
//! opens connections open-loop at the phase rate (attempt `i` is due at
//! `start + i / rate`), each authenticated by token and synced (`Sync` ->
//! `SyncCaughtUp`), and holds them idle until the phase ends. Histograms:
//! `handshake` (intended attempt time -> SyncCaughtUp, coordinated-omission
//! corrected) and `connect` (actual start -> SyncCaughtUp).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{self, StreamExt, TryStreamExt};
use hush_client::http::Token;
use hush_proto::server_frame::Body as S;
use tokio::sync::watch;

use crate::account;
use crate::clock::now_ns;
use crate::conn::{Conn, ConnError, Push, REQUEST_TIMEOUT};
use crate::endpoints::Endpoints;
use crate::protocol::{ConnectJob, PhaseResult, Plan};
use crate::stats::{Counters, Hist};
use crate::sync::lock;
use crate::workload::{Channels, Schedule, WorkerRun};

#[derive(Default)]
struct Shared {
    counters: Counters,
    stopping: AtomicBool,
    hists: Mutex<(Hist, Hist)>,
    last_ns: AtomicU64,
}

struct IdleSink {
    shared: Arc<Shared>,
    caught_up: watch::Sender<bool>,
    counted: AtomicBool,
}

impl Push for IdleSink {
    fn on_push(&self, frame: S, _at: u64) {
        if let S::SyncCaughtUp(_) = frame {
            let _ = self.caught_up.send(true);
        }
    }

    fn on_closed(&self, reason: &str, _server: usize, _at_ns: u64) {
        if !self.counted.load(Ordering::SeqCst) {
            return;
        }
        let c = &self.shared.counters;
        c.conns_open.fetch_sub(1, Ordering::Relaxed);
        if !self.shared.stopping.load(Ordering::Relaxed) {
            Counters::add(&c.closed_unexpected, 1);
            tracing::warn!(%reason, "idle connection closed");
        }
    }
}

async fn open(
    ep: Arc<Endpoints>,
    shared: Arc<Shared>,
    i: usize,
    token: Token,
    intended: u64,
) -> Option<Conn> {
    let started = now_ns();
    let (caught_up, mut rx) = watch::channel(false);
    let sink = Arc::new(IdleSink {
        shared: shared.clone(),
        caught_up,
        counted: AtomicBool::new(false),
    });
    let addr = ep.addrs[i % ep.addrs.len()];
    let r = async {
        let conn = Conn::connect(addr, ep.sources.next(), &token, sink.clone()).await?;
        conn.start_sync()?;
        tokio::time::timeout(REQUEST_TIMEOUT, rx.wait_for(|v| *v))
            .await
            .map_err(|_| ConnError::Timeout)?
            .map_err(|_| ConnError::Closed)?;
        Ok::<_, ConnError>(conn)
    }
    .await;
    let at = now_ns();
    let c = &shared.counters;
    match r {
        Ok(conn) => {
            sink.counted.store(true, Ordering::SeqCst);
            Counters::add(&c.conns_open, 1);
            Counters::add(&c.acked, 1);
            if conn.is_closed() {
                // Closed between SyncCaughtUp and here: on_closed saw
                // `counted` false, so undo the count ourselves.
                c.conns_open.fetch_sub(1, Ordering::Relaxed);
                Counters::add(&c.closed_unexpected, 1);
            }
            shared.last_ns.fetch_max(at, Ordering::Relaxed);
            let mut h = lock(&shared.hists);
            h.0.record_ns(intended, at);
            h.1.record_ns(started, at);
            Some(conn)
        }
        Err(e) => {
            tracing::warn!(error = %e, "connect failed");
            Counters::add(&c.conn_failures, 1);
            None
        }
    }
}

/// Runs the connect worker until `Stop`.
pub async fn run(plan: Plan, job: ConnectJob, ch: Channels) -> anyhow::Result<()> {
    let ep = Arc::new(Endpoints::new(&plan).await?);
    let mut run = WorkerRun::start(ch, |s: &Shared| (&s.counters, &s.stopping));
    let tokens: Vec<Token> = stream::iter(job.first..job.first + job.count)
        .map(|i| {
            let ep = ep.clone();
            let run = plan.run_id.clone();
            async move {
                let http = &ep.https[i % ep.https.len()];
                account::register(http, &account::handle(&run, 'c', i, 0))
                    .await
                    .map(|d| d.token)
            }
        })
        .buffered(job.setup_concurrency)
        .try_collect()
        .await?;
    run.ready(tokens.len() as u64);
    let shared = run.shared.clone();
    let mut conns: Vec<Conn> = Vec::new();
    let mut tokens = Some(tokens);
    while let Some(p) = run.next_phase().await {
        let before = shared.counters.tick();
        let schedule = Schedule::new(p.start_ns, p.rate);
        let mut tasks = Vec::new();
        for (n, token) in tokens.take().unwrap_or_default().into_iter().enumerate() {
            let intended = schedule.at(n as u64);
            tokio::time::sleep_until(run.clock.instant_at(intended)).await;
            Counters::add(&shared.counters.sent, 1);
            tasks.push(tokio::spawn(open(
                ep.clone(),
                shared.clone(),
                job.first + n,
                token,
                intended,
            )));
        }
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                conns.push(c);
            }
        }
        let end = p.start_ns + (p.duration_s * 1e9) as u64;
        tokio::time::sleep_until(run.clock.instant_at(end)).await;
        let after = shared.counters.tick();
        let (hs, conn_h) = std::mem::take(&mut *lock(&shared.hists));
        run.phase_done(PhaseResult {
            correctness: shared.counters.correctness(),
            hists: [
                ("handshake".to_string(), hs),
                ("connect".to_string(), conn_h),
            ]
            .into_iter()
            .collect(),
            last_event_ns: shared.last_ns.load(Ordering::Relaxed),
            ..PhaseResult::between(p.index, before, after)
        });
    }
    run.finish(|| {
        for c in &conns {
            c.close();
        }
    });
    Ok(())
}
