//! CPU, RSS and open files of processes, read from `/proc/<pid>/stat`
//! (utime + stime), `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/fd`,
//! sampled on an interval; at the edges of each phase also per thread
//! (`/proc/<pid>/task/<tid>/stat`), so a report says which of the node's
//! threads (gateway workers, actor runtime, store writer) spent its CPU.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// One sample of one process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the monitor started.
    pub t: f64,
    /// CPU seconds used so far (user + system).
    pub cpu_s: f64,
    /// Resident set size in bytes.
    pub rss: u64,
    /// Open file descriptors (`/proc/<pid>/fd`), when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fds: Option<f64>,
}

/// One thread's CPU seconds so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadCpu {
    pub tid: u32,
    /// The thread's name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    pub cpu_s: f64,
}

/// The threads of one process at one time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadSample {
    pub t: f64,
    pub threads: Vec<ThreadCpu>,
}

/// The samples of one watched process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
    /// Per-thread samples, taken at phase edges ([`Monitor::sample_now`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<ThreadSample>,
}

impl Series {
    /// CPU seconds used between two times (nearest samples).
    pub fn cpu_between(&self, t0: f64, t1: f64) -> f64 {
        let at = |t: f64| {
            self.samples
                .iter()
                .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
                .map(|s| s.cpu_s)
                .unwrap_or(0.0)
        };
        (at(t1) - at(t0)).max(0.0)
    }

    /// CPU seconds per thread name between the per-thread samples nearest
    /// to `t0` and `t1`, over the threads alive at both (a thread that
    /// started or ended in between is left out, with its CPU).
    pub fn thread_cpu_between(&self, t0: f64, t1: f64) -> BTreeMap<String, f64> {
        let at = |t: f64| {
            self.threads
                .iter()
                .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
        };
        let mut by_name = BTreeMap::new();
        let (Some(a), Some(b)) = (at(t0), at(t1)) else {
            return by_name;
        };
        for end in &b.threads {
            if let Some(start) = a.threads.iter().find(|x| x.tid == end.tid) {
                *by_name.entry(end.name.clone()).or_insert(0.0) +=
                    (end.cpu_s - start.cpu_s).max(0.0);
            }
        }
        by_name
    }

    /// RSS at the sample nearest to `t`.
    pub fn rss_at(&self, t: f64) -> u64 {
        self.samples
            .iter()
            .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
            .map(|s| s.rss)
            .unwrap_or(0)
    }

    /// Largest RSS seen.
    pub fn peak_rss(&self) -> u64 {
        self.samples.iter().map(|s| s.rss).max().unwrap_or(0)
    }
}

fn clock_ticks() -> f64 {
    // sysconf(_SC_CLK_TCK) without libc: ask getconf once; 100 is what
    // Linux uses on every common architecture.
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads (cpu seconds, rss bytes) of a process, `None` once it is gone.
pub fn read(pid: u32, ticks: f64) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (cpu, _) = stat_cpu(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((cpu / ticks, rss_kb * 1024))
}

/// (utime + stime) in ticks from a `stat` line (the name is in
/// parentheses and may hold spaces: the fields after the last ')' start at
/// field 3, state), and the name.
fn stat_cpu(stat: &str) -> Option<(f64, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let f: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime, name))
}

/// The CPU of each thread of a process now (empty once it is gone).
pub fn read_threads(pid: u32, ticks: f64) -> Vec<ThreadCpu> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let tid: u32 = t.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let (cpu, name) = stat_cpu(&stat)?;
            Some(ThreadCpu {
                tid,
                name: name.to_string(),
                cpu_s: cpu / ticks,
            })
        })
        .collect()
}

/// One sample of every process in `series` at `t` (those gone are
/// skipped), per thread too when `threads`.
fn sample_all(series: &Mutex<Vec<Series>>, t: f64, ticks: f64, threads: bool) {
    for p in lock(series).iter_mut() {
        if let Some((cpu_s, rss)) = read(p.pid, ticks) {
            let fds = open_files(p.pid);
            p.samples.push(Sample { t, cpu_s, rss, fds });
            if threads {
                let threads = read_threads(p.pid, ticks);
                p.threads.push(ThreadSample { t, threads });
            }
        }
    }
}

/// How many files a process has open, `None` if its fd folder is not
/// readable (another user's process).
pub fn open_files(pid: u32) -> Option<f64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as f64)
}

/// Samples a set of processes until dropped.
pub struct Monitor {
    series: Arc<Mutex<Vec<Series>>>,
    task: tokio::task::JoinHandle<()>,
    start: std::time::Instant,
}

impl Monitor {
    /// Starts sampling `procs` (name, pid) every `every`.
    pub fn start(procs: Vec<(String, u32)>, every: Duration) -> Self {
        let series = Arc::new(Mutex::new(
            procs
                .into_iter()
                .map(|(name, pid)| Series {
                    name,
                    pid,
                    samples: Vec::new(),
                    threads: Vec::new(),
                })
                .collect::<Vec<_>>(),
        ));
        let start = std::time::Instant::now();
        let task = {
            let series = series.clone();
            tokio::spawn(async move {
                let ticks = clock_ticks();
                let mut iv = tokio::time::interval(every);
                loop {
                    iv.tick().await;
                    sample_all(&series, start.elapsed().as_secs_f64(), ticks, false);
                }
            })
        };
        Self {
            series,
            task,
            start,
        }
    }

    /// When the monitor started (the zero of every sample's `t`).
    pub fn started(&self) -> std::time::Instant {
        self.start
    }

    /// Seconds since the monitor started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Adds a process to watch from now on.
    pub fn watch(&self, name: String, pid: u32) {
        lock(&self.series).push(Series {
            name,
            pid,
            samples: Vec::new(),
            threads: Vec::new(),
        });
    }

    /// A handle that adds processes to watch (a node started again).
    pub fn watcher(&self) -> Watcher {
        Watcher {
            series: self.series.clone(),
        }
    }

    /// Takes one sample of everything right now, per thread too (so phase
    /// edges are exact).
    pub fn sample_now(&self) {
        sample_all(&self.series, self.now(), clock_ticks(), true);
    }

    /// The samples so far.
    pub fn series(&self) -> Vec<Series> {
        lock(&self.series).clone()
    }
}

/// Adds processes to a [`Monitor`] from elsewhere.
#[derive(Clone)]
pub struct Watcher {
    series: Arc<Mutex<Vec<Series>>>,
}

impl Watcher {
    /// Adds a process to watch from now on.
    pub fn watch(&self, name: String, pid: u32) {
        lock(&self.series).push(Series {
            name,
            pid,
            samples: Vec::new(),
            threads: Vec::new(),
        });
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let (cpu, rss) = super::read(std::process::id(), 100.0).unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_its_name() {
        let stat = "4242 (actix-server wo) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(stat_cpu(stat), Some((300.0, "actix-server wo")));
        let odd = "7 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 3 4 0 0";
        assert_eq!(stat_cpu(odd), Some((7.0, "a) b (c)")));
        assert_eq!(stat_cpu("garbage"), None);
    }

    /// A busy thread of this process, named, shows up under its name with
    /// the CPU it spent between two per-thread samples.
    #[test]
    fn the_cpu_of_a_named_thread_between_two_samples() {
        let ticks = clock_ticks();
        let pid = std::process::id();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::Builder::new()
            .name("procmon-busy".into())
            .spawn(move || {
                started_tx.send(()).unwrap();
                while stop_rx.try_recv().is_err() {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        started_rx.recv().unwrap();
        let busy_cpu = |threads: &[ThreadCpu]| {
            threads
                .iter()
                .find(|t| t.name == "procmon-busy")
                .map(|t| t.cpu_s)
        };
        let first = read_threads(pid, ticks);
        let before = busy_cpu(&first).expect("the busy thread is listed");
        // Until the kernel has counted some of its CPU (ticks of 10 ms).
        let second = loop {
            let now = read_threads(pid, ticks);
            if busy_cpu(&now).expect("still listed") > before {
                break now;
            }
            std::thread::yield_now();
        };
        stop_tx.send(()).unwrap();
        busy.join().unwrap();
        let series = Series {
            name: "self".into(),
            pid,
            samples: Vec::new(),
            threads: vec![
                ThreadSample {
                    t: 0.0,
                    threads: first,
                },
                ThreadSample {
                    t: 1.0,
                    threads: second,
                },
            ],
        };
        let by_name = series.thread_cpu_between(0.0, 1.0);
        assert!(by_name["procmon-busy"] > 0.0, "{by_name:?}");
        assert!(by_name.values().all(|&c| c >= 0.0), "{by_name:?}");
        assert!(series.thread_cpu_between(0.0, 0.0)["procmon-busy"] == 0.0);
    }
}
