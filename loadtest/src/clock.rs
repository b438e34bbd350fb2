//! Time: Unix nanoseconds (every timestamp the generator records, on every
//! worker, so they compare across processes) and the [`Clock`] that turns a
//! Unix-ns schedule into tokio instants.

use std::time::Duration;

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Maps Unix nanoseconds to tokio instants (taken once per worker, so a
/// schedule never drifts with the wall clock's adjustments mid-run).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    at: tokio::time::Instant,
    unix_ns: u64,
}

impl Clock {
    pub fn now() -> Self {
        Self {
            at: tokio::time::Instant::now(),
            unix_ns: now_ns(),
        }
    }

    /// The instant of a Unix-ns time (now, if it is in the past).
    pub fn instant_at(&self, unix_ns: u64) -> tokio::time::Instant {
        self.at + Duration::from_nanos(unix_ns.saturating_sub(self.unix_ns))
    }
}
