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
use tokio::sync::{mpsc, watch};

use crate::conn::{Conn, Push};
use crate::fanout::Endpoints;
use crate::payload::now_ns;
use crate::stats::{Correctness, Counters, Hist};
use crate::worker::{ConnectJob, FromWorker, PhaseCmd, PhaseResult, Plan, ToWorker};
use crate::{account, Clock};

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let conn = Conn::connect(addr, ep.source(), &token, sink.clone()).await?;
        conn.start_sync()?;
        tokio::time::timeout(crate::conn::REQUEST_TIMEOUT, rx.wait_for(|v| *v))
            .await
            .map_err(|_| crate::conn::ConnError::Timeout)?
            .map_err(|_| crate::conn::ConnError::Closed)?;
        Ok::<_, crate::conn::ConnError>(conn)
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
pub async fn run(
    plan: Plan,
    job: ConnectJob,
    mut cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
) -> anyhow::Result<()> {
    let clock = Clock::now();
    let shared = Arc::new(Shared::default());
    let ep = Arc::new(Endpoints::new(&plan).await?);
    let ticker = {
        let shared = shared.clone();
        crate::spawn_ticker(events.clone(), move || shared.counters.tick())
    };
    let setup = std::time::Instant::now();
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
    let _ = events.send(FromWorker::Ready {
        setup_s: setup.elapsed().as_secs_f64(),
        registered: tokens.len() as u64,
    });
    let mut conns: Vec<Conn> = Vec::new();
    let mut tokens = Some(tokens);
    while let Some(cmd) = cmds.recv().await {
        let p: PhaseCmd = match cmd {
            ToWorker::Stop => break,
            ToWorker::Phase(p) => p,
        };
        let before = shared.counters.tick();
        let period = 1e9 / p.rate;
        let mut tasks = Vec::new();
        for (n, token) in tokens.take().unwrap_or_default().into_iter().enumerate() {
            let intended = p.start_ns + (n as f64 * period) as u64;
            tokio::time::sleep_until(clock.instant_at(intended)).await;
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
        tokio::time::sleep_until(clock.instant_at(end)).await;
        let after = shared.counters.tick();
        let (hs, conn_h) = std::mem::take(&mut *lock(&shared.hists));
        let r = PhaseResult {
            index: p.index,
            sent: after.sent - before.sent,
            acked: after.acked - before.acked,
            delivered: 0,
            correctness: Correctness {
                conn_failures: after.conn_failures,
                closed_unexpected: after.closed_unexpected,
                ..Correctness::default()
            },
            hists: [
                ("handshake".to_string(), hs),
                ("connect".to_string(), conn_h),
            ]
            .into_iter()
            .collect(),
            last_event_ns: shared.last_ns.load(Ordering::Relaxed),
            conns_open: after.conns_open,
            failover: None,
        };
        let _ = events.send(FromWorker::PhaseDone(Box::new(r)));
    }
    shared.stopping.store(true, Ordering::SeqCst);
    for c in &conns {
        c.close();
    }
    ticker.abort();
    Ok(())
}
