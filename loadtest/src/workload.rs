//! What every workload ([`crate::fanout`], [`crate::connect`],
//! [`crate::redis`]) does the same way on its worker: the run's frame
//! ([`WorkerRun`]: clock, shared state, counters reported on a ticker, the
//! setup timer, the phase loop, the stop), the open-loop [`Schedule`], and
//! the wait for a phase to drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::protocol::{FromWorker, PhaseCmd, PhaseResult, ToWorker};
use crate::stats::Counters;

/// How often a worker sends its cumulative counters to the coordinator
/// (the progress line and the throughput series are made of them).
const TICK_INTERVAL: Duration = Duration::from_millis(500);

/// How often a worker checks whether a phase has drained.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A worker's end of the worker protocol: commands in, events out.
pub struct Channels {
    pub cmds: mpsc::UnboundedReceiver<ToWorker>,
    pub events: mpsc::UnboundedSender<FromWorker>,
}

/// Where a workload's shared state keeps what the run needs: the counters
/// the ticker reports, and the flag that says the run is stopping (a
/// connection closed after it is not a failure).
pub type RunParts<S> = fn(&S) -> (&Counters, &AtomicBool);

/// One worker's run of a workload, from setup to `Stop`.
pub struct WorkerRun<S> {
    /// Maps the phases' Unix-ns schedules to instants; taken at the start.
    pub clock: Clock,
    pub shared: Arc<S>,
    parts: RunParts<S>,
    cmds: mpsc::UnboundedReceiver<ToWorker>,
    events: mpsc::UnboundedSender<FromWorker>,
    ticker: JoinHandle<()>,
    setup_started: Instant,
}

impl<S: Default + Send + Sync + 'static> WorkerRun<S> {
    /// Starts a run: the clock, fresh shared state, the ticker that reports
    /// its counters, and the setup timer.
    pub fn start(ch: Channels, parts: RunParts<S>) -> Self {
        let clock = Clock::now();
        let shared = Arc::new(S::default());
        let ticker = {
            let shared = shared.clone();
            let events = ch.events.clone();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(TICK_INTERVAL);
                loop {
                    iv.tick().await;
                    let tick = parts(&shared).0.tick();
                    if events.send(FromWorker::Tick(tick)).is_err() {
                        return;
                    }
                }
            })
        };
        Self {
            clock,
            shared,
            parts,
            cmds: ch.cmds,
            events: ch.events,
            ticker,
            setup_started: Instant::now(),
        }
    }

    /// Setup is done: tells the coordinator how long it took and how many
    /// users it registered.
    pub fn ready(&self, registered: u64) {
        let _ = self.events.send(FromWorker::Ready {
            setup_s: self.setup_started.elapsed().as_secs_f64(),
            registered,
        });
    }

    /// The next phase to run; `None` once the coordinator says `Stop` (or
    /// is gone).
    pub async fn next_phase(&mut self) -> Option<PhaseCmd> {
        match self.cmds.recv().await? {
            ToWorker::Phase(p) => Some(p),
            ToWorker::Stop => None,
        }
    }

    /// Reports a finished phase.
    pub fn phase_done(&self, r: PhaseResult) {
        let _ = self.events.send(FromWorker::PhaseDone(Box::new(r)));
    }

    /// Ends the run: marks it stopping (so what `close` closes is not
    /// counted as a failure), runs `close`, stops the ticker and sends the
    /// final counters.
    pub fn finish(self, close: impl FnOnce()) {
        let (counters, stopping) = (self.parts)(&self.shared);
        stopping.store(true, Ordering::SeqCst);
        close();
        self.ticker.abort();
        let _ = self.events.send(FromWorker::Tick(counters.tick()));
    }
}

impl<S> Drop for WorkerRun<S> {
    /// A run that ends early (a failed setup) stops its ticker too.
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// An open-loop schedule: event `i` is due at `start + i / rate` (Unix ns)
/// whether or not earlier ones were answered, so a stalled server shows up
/// as latency, not as a lower rate.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start_ns: u64,
    period_ns: f64,
}

impl Schedule {
    /// `rate` events per second from `start_ns`.
    pub fn new(start_ns: u64, rate: f64) -> Self {
        Self {
            start_ns,
            period_ns: 1e9 / rate,
        }
    }

    /// The schedule of group `index` of `total`: shifted by its share of
    /// one period, so the groups' sends interleave instead of bunching.
    pub fn for_group(start_ns: u64, rate: f64, index: u32, total: usize) -> Self {
        let s = Self::new(start_ns, rate);
        let offset = (index as f64 / total as f64) * s.period_ns;
        Self {
            start_ns: start_ns + offset as u64,
            ..s
        }
    }

    /// Events in a phase of `duration_s` seconds at `rate` per second.
    pub fn count(duration_s: f64, rate: f64) -> u64 {
        (duration_s * rate).floor() as u64
    }

    /// When event `i` is due (Unix ns).
    pub fn at(&self, i: u64) -> u64 {
        self.start_ns + (i as f64 * self.period_ns) as u64
    }
}

/// Waits until `drained()` holds, or `timeout_s` seconds at most.
pub async fn wait_drained(timeout_s: f64, drained: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout_s);
    while !drained() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    #[test]
    fn schedules_interleave_groups() {
        let s = Schedule::new(1_000, 10.0);
        assert_eq!(
            (s.at(0), s.at(1), s.at(3)),
            (1_000, 100_001_000, 300_001_000)
        );
        let g = Schedule::for_group(1_000, 10.0, 1, 4);
        assert_eq!((g.at(0), g.at(1)), (25_001_000, 125_001_000));
        assert_eq!(Schedule::count(2.0, 30.0), 60);
        assert_eq!(Schedule::count(0.99, 1.0), 0);
    }
}
