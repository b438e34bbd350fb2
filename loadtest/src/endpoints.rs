//! Where a worker's connections go and come from: the gateways' socket
//! addresses and HTTP clients (from the [`Plan`]'s server URLs), and the
//! source addresses handed out round-robin to client sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hush_client::http::Http;

use crate::conn::resolve;
use crate::protocol::Plan;

/// Source addresses (127.0.0.x) handed out round-robin, so connections
/// spread over address pairs; none: the OS picks.
#[derive(Debug)]
pub struct Sources {
    ips: Vec<IpAddr>,
    next: AtomicU64,
}

impl Sources {
    pub fn new(ips: Vec<IpAddr>) -> Self {
        Self {
            ips,
            next: AtomicU64::new(0),
        }
    }

    /// The next source address, `None` to let the OS pick.
    pub fn next(&self) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        Some(self.ips[i % self.ips.len()])
    }
}

/// Gateway addresses, their HTTP clients, and the source addresses.
pub struct Endpoints {
    pub addrs: Arc<Vec<SocketAddr>>,
    pub https: Vec<Http>,
    pub sources: Sources,
}

impl Endpoints {
    pub async fn new(plan: &Plan) -> anyhow::Result<Self> {
        let mut addrs = Vec::new();
        let mut https = Vec::new();
        for s in &plan.servers {
            addrs.push(resolve(s).await?);
            https.push(Http::new(s)?);
        }
        anyhow::ensure!(!addrs.is_empty(), "no server");
        Ok(Self {
            addrs: Arc::new(addrs),
            https,
            sources: Sources::new(plan.sources.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_robin() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s = Sources::new(vec![a, b]);
        assert_eq!([s.next(), s.next(), s.next()], [Some(a), Some(b), Some(a)]);
        assert_eq!(Sources::new(Vec::new()).next(), None);
    }
}
