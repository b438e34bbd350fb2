//! The node's shutdown signal: a flag every part may ask cheaply, and a
//! watch that connection loops wait on to close with 4004 at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Cloning shares the same signal.
#[derive(Clone)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    watch: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
            watch: watch::Sender::new(false),
        }
    }
}

impl Shutdown {
    /// True once the node started shutting down: refuse new work.
    pub fn is_shutting_down(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Refuse new work from now on.
    pub fn begin(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Tells every waiting connection to close now.
    pub fn close_connections(&self) {
        self.watch.send_replace(true);
    }

    /// Resolves once [`Shutdown::close_connections`] is called (or the
    /// signal is gone). A connection loop makes it once and polls it pinned,
    /// never a fresh wait per turn: every fresh wait registers with, and its
    /// drop unregisters from, the one waiter list all connections share: a
    /// lock every connection would take twice per frame it handles.
    pub fn connections_closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.watch.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}
