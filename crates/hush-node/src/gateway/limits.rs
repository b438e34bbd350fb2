//! Abuse limits at the HTTP edge: rate limits per source address and per
//! account, and the cap on connections per source address.
//!
//! *Keys.* A source is the TCP peer's address (no `X-Forwarded-For`: behind
//! a proxy every client shares the proxy's address), IPv6 grouped by its
//! /64, which is what one subscriber usually holds. An account is a device
//! (logins) or a user (link codes).
//!
//! *Lockout-safe.* Per-account buckets are only drained by requests that
//! prove the account: a login whose signature verified, a link code asked
//! with the user's token. A stranger who knows a device id (anyone can look
//! one up) can spend only its own address's budget, never the device's.
//!
//! *Bounded.* Each table holds at most `rate_limits.tracked_keys` keys. An
//! entry whose bucket has refilled carries no information (a fresh bucket is
//! the same), so [`KeyedLimiter::sweep`] drops those, and a full table drops
//! them before it admits a new key; if none can go, the new key is refused
//! (RATE_LIMITED), so memory stays bounded under a flood of addresses. The
//! connection table holds an entry per address with a live connection.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hush_ds::TokenBucket;

/// The rate-limit key of a source address: IPv4 as is, IPv6 by /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(prefix)
                }
            },
        }
    }
}

/// A refusal: try again after this many ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

struct Entry {
    bucket: TokenBucket,
    last_ms: u64,
}

/// Token buckets by key, bounded (see the module docs).
pub struct KeyedLimiter<K> {
    table: Mutex<HashMap<K, Entry>>,
    rate_per_sec: f64,
    burst: f64,
    max_keys: usize,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    pub fn new(rate_per_sec: f64, burst: f64, max_keys: usize) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            rate_per_sec,
            burst,
            max_keys,
        }
    }

    /// How long a bucket takes to refill from empty, in ms.
    fn refill_ms(&self) -> u64 {
        if self.rate_per_sec > 0.0 {
            (self.burst / self.rate_per_sec * 1000.0).ceil() as u64
        } else {
            u64::MAX
        }
    }

    /// Takes one token for `key` at `now_ms`, or says how long to wait.
    pub fn check(&self, key: &K, now_ms: u64) -> Result<(), RetryAfter> {
        // A poisoned lock only means another request panicked mid-update;
        // the buckets are still usable.
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(key) && table.len() >= self.max_keys {
            self.drop_refilled(&mut table, now_ms);
            if table.len() >= self.max_keys {
                metrics::counter!("hush_rate_table_full_total").increment(1);
                return Err(RetryAfter(self.refill_ms().min(60_000)));
            }
        }
        let entry = table.entry(key.clone()).or_insert_with(|| Entry {
            bucket: TokenBucket::new(self.rate_per_sec, self.burst, now_ms),
            last_ms: now_ms,
        });
        entry.last_ms = now_ms.max(entry.last_ms);
        if entry.bucket.try_take(now_ms) {
            return Ok(());
        }
        let missing = (1.0 - entry.bucket.available()).max(0.0);
        let wait = if self.rate_per_sec > 0.0 {
            (missing / self.rate_per_sec * 1000.0).ceil() as u64
        } else {
            u64::MAX
        };
        Err(RetryAfter(wait.max(1)))
    }

    fn drop_refilled(&self, table: &mut HashMap<K, Entry>, now_ms: u64) -> usize {
        let refill = self.refill_ms();
        let before = table.len();
        table.retain(|_, e| now_ms.saturating_sub(e.last_ms) < refill);
        before - table.len()
    }

    /// Drops every entry whose bucket has refilled by `now_ms`; returns how
    /// many went.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.drop_refilled(&mut table, now_ms)
    }

    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The RATE_LIMITED answer to a request over a connection's (or device's)
/// request bucket: the hint is when the bucket holds one token again.
pub fn request_rate_limited(bucket: &TokenBucket, rate_per_sec: f64) -> crate::error::ApiError {
    let missing = (1.0 - bucket.available()).max(0.0);
    let wait = if rate_per_sec > 0.0 {
        (missing / rate_per_sec * 1000.0).ceil() as u64
    } else {
        60_000
    };
    crate::error::ApiError::rate_limited("request rate limit exceeded", wait.clamp(1, 60_000))
}

/// The refusal of one request over a request bucket, as a node sends it:
/// [`request_rate_limited`]'s hint, but at least the node's overload hint,
/// and counted as pressure (`admission.rs`): with "a token is back in
/// 2 ms" every refused message came straight back under overload.
pub fn refuse_request(
    app: &super::AppState,
    bucket: &TokenBucket,
    now_ms: u64,
) -> crate::error::ApiError {
    let mut e = request_rate_limited(bucket, app.config.limits.rate_per_sec);
    let hint = app.api.admission().refused_elsewhere(now_ms);
    e.retry_after_ms = e.retry_after_ms.max(hint);
    e
}

/// Live connections per source address.
#[derive(Default)]
pub struct ConnTable {
    counts: Mutex<HashMap<SourceKey, usize>>,
}

/// One accepted connection, counted until it is dropped (actix keeps it in
/// the connection's data, dropped when the connection ends).
pub struct ConnGuard {
    table: Arc<ConnTable>,
    key: SourceKey,
    /// This connection came in over the per-address cap: its requests are
    /// refused and it is closed.
    pub over_limit: bool,
}

impl ConnTable {
    /// Counts a new connection from `ip`; `over_limit` when it makes more
    /// than `max` live connections from that address.
    pub fn open(self: &Arc<Self>, ip: IpAddr, max: usize) -> ConnGuard {
        let key = SourceKey::of(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        *n += 1;
        ConnGuard {
            table: self.clone(),
            key,
            over_limit: *n > max,
        }
    }

    /// Live connections from `ip`'s address (or /64).
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&SourceKey::of(ip)).copied().unwrap_or(0)
    }

    /// Addresses with live connections.
    pub fn sources(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(
            SourceKey::of(mapped),
            SourceKey::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_ne!(
            SourceKey::of(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SourceKey::of(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }

    #[test]
    fn a_key_gets_its_burst_then_a_retry_after() {
        // 2 per second, burst 3.
        let l = KeyedLimiter::new(2.0, 3.0, 10);
        for _ in 0..3 {
            assert_eq!(l.check(&"a", 1_000), Ok(()));
        }
        assert_eq!(l.check(&"a", 1_000), Err(RetryAfter(500)));
        assert_eq!(l.check(&"b", 1_000), Ok(()), "keys are separate");
        assert!(matches!(l.check(&"a", 1_499), Err(RetryAfter(1..=2))));
        assert_eq!(l.check(&"a", 1_500), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded() {
        // Refills in 1.5 s; at most 2 keys.
        let l = KeyedLimiter::new(2.0, 3.0, 2);
        assert_eq!(l.check(&1, 0), Ok(()));
        assert_eq!(l.check(&2, 0), Ok(()));
        // Full, and nobody has refilled: a third key is refused.
        assert!(l.check(&3, 1_000).is_err());
        assert_eq!(l.len(), 2);
        // Known keys still work.
        assert_eq!(l.check(&1, 1_000), Ok(()));
        // Key 2 has refilled by 1.5 s: it makes room for key 3.
        assert_eq!(l.check(&3, 1_500), Ok(()));
        assert_eq!(l.len(), 2);
        // The sweeper drops refilled entries.
        assert_eq!(l.sweep(10_000), 2);
        assert!(l.is_empty());
    }

    #[test]
    fn a_request_refusal_says_when_a_token_is_back() {
        // 10 per second, burst 1: empty after one request, full in 100 ms.
        let mut b = TokenBucket::new(10.0, 1.0, 0);
        assert!(b.try_take(0));
        assert!(!b.try_take(0));
        let e = request_rate_limited(&b, 10.0);
        assert_eq!(e.code, hush_proto::ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, 100);
    }

    #[test]
    fn connections_are_counted_per_source_until_dropped() {
        let t = Arc::new(ConnTable::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let a = t.open(ip, 2);
        let b = t.open(ip, 2);
        let c = t.open(ip, 2);
        assert!(!a.over_limit && !b.over_limit && c.over_limit);
        assert!(!t.open(other, 2).over_limit);
        assert_eq!(t.count(ip), 3);
        drop(c);
        drop(b);
        assert_eq!(t.count(ip), 1);
        assert!(!t.open(ip, 2).over_limit);
        drop(a);
        assert_eq!(t.count(ip), 0);
        assert_eq!(t.sources(), 0, "no entry is left behind");
    }
}
