//! CPU, RSS and open files of processes, read from `/proc/<pid>/stat`
//! (utime + stime), `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/fd`,
//! sampled on an interval.

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

/// The samples of one watched process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub pid: u32,
    pub samples: Vec<Sample>,
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
    // The command name is in parentheses and may contain spaces: fields
    // after the last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(((utime + stime) / ticks, rss_kb * 1024))
}

/// One sample of every process in `series` at `t` (those gone are skipped).
fn sample_all(series: &Mutex<Vec<Series>>, t: f64, ticks: f64) {
    for p in lock(series).iter_mut() {
        if let Some((cpu_s, rss)) = read(p.pid, ticks) {
            let fds = open_files(p.pid);
            p.samples.push(Sample { t, cpu_s, rss, fds });
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
                    sample_all(&series, start.elapsed().as_secs_f64(), ticks);
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
        });
    }

    /// A handle that adds processes to watch (a node started again).
    pub fn watcher(&self) -> Watcher {
        Watcher {
            series: self.series.clone(),
        }
    }

    /// Takes one sample of everything right now (so phase edges are exact).
    pub fn sample_now(&self) {
        sample_all(&self.series, self.now(), clock_ticks());
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
    #[test]
    fn reads_itself() {
        let (cpu, rss) = super::read(std::process::id(), 100.0).unwrap();
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }
}
