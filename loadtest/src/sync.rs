//! Locking that survives a panicked handler.

use std::sync::{Mutex, MutexGuard};

/// Locks `m` even if a holder panicked: the data (counters, bookkeeping,
/// waiting requests) is still usable, and a load run must not stop over it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
