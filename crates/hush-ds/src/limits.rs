//! Rate limiting with an injected clock.

/// A token bucket: holds up to `burst` tokens, refills at `rate_per_sec`.
///
/// The clock is passed in (`now_ms`, any monotonic millisecond counter);
/// this type never reads one. If `now_ms` goes backwards the bucket simply
/// does not refill until the clock passes the last seen value again.
///
/// Non-finite or negative `rate_per_sec`/`burst` are treated as 0 (a bucket
/// that never grants), so a bad config value fails closed.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

fn sanitize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

impl TokenBucket {
    /// A full bucket at time `now_ms`.
    pub fn new(rate_per_sec: f64, burst: f64, now_ms: u64) -> Self {
        let burst = sanitize(burst);
        TokenBucket {
            rate_per_ms: sanitize(rate_per_sec) / 1000.0,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token if available at `now_ms`.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available at the last call (for metrics and tests).
    pub fn available(&self) -> f64 {
        self.tokens
    }

    /// Milliseconds from `now_ms` until a token is available (0: one is
    /// now; `u64::MAX`: never, a bucket that does not refill).
    pub fn wait_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            return 0;
        }
        if self.rate_per_ms <= 0.0 || self.burst < 1.0 {
            return u64::MAX;
        }
        // Less a hair, so float rounding never adds a millisecond.
        let wait = ((1.0 - self.tokens) / self.rate_per_ms - 1e-6)
            .ceil()
            .max(1.0);
        if wait >= u64::MAX as f64 {
            u64::MAX
        } else {
            wait as u64
        }
    }

    /// Whether the bucket is full at `now_ms`: it then behaves exactly like
    /// a new one, so a keyed set may forget it.
    fn is_full(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.burst
    }

    /// Milliseconds from `now_ms` until the bucket is full again.
    fn full_in_ms(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= self.burst {
            return 0;
        }
        if self.rate_per_ms <= 0.0 {
            return u64::MAX;
        }
        let wait = ((self.burst - self.tokens) / self.rate_per_ms - 1e-6)
            .ceil()
            .max(1.0);
        if wait >= u64::MAX as f64 {
            u64::MAX
        } else {
            wait as u64
        }
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms <= self.last_ms {
            return;
        }
        // u64 -> f64 loses precision only past 2^53 ms (285k years).
        let elapsed = (now_ms - self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        self.last_ms = now_ms;
    }
}

/// One token bucket per key (a user, say), all with the same rate and
/// burst, in bounded memory: at most `max_keys` buckets are held. A full
/// bucket is the same as none, so when the set is at its bound the full
/// ones are forgotten; if none is full, a new key is refused until one is
/// (it fails closed: memory never grows past the bound, and keys already
/// held keep their limits).
#[derive(Debug, Clone)]
pub struct KeyedBuckets<K: Ord + Clone> {
    rate_per_sec: f64,
    burst: f64,
    max_keys: usize,
    buckets: std::collections::BTreeMap<K, TokenBucket>,
}

impl<K: Ord + Clone> KeyedBuckets<K> {
    pub fn new(rate_per_sec: f64, burst: f64, max_keys: usize) -> Self {
        KeyedBuckets {
            rate_per_sec,
            burst,
            max_keys,
            buckets: std::collections::BTreeMap::new(),
        }
    }

    /// `Ok` if `key` has a token at `now_ms` (none is taken), else the
    /// milliseconds until it has one.
    pub fn check(&mut self, key: &K, now_ms: u64) -> Result<(), u64> {
        if let Some(b) = self.buckets.get_mut(key) {
            return match b.wait_ms(now_ms) {
                0 => Ok(()),
                wait => Err(wait),
            };
        }
        if self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now_ms));
            if self.buckets.len() >= self.max_keys {
                // Every held bucket is in use: the first to fill up again
                // frees a place.
                let soonest = self
                    .buckets
                    .values_mut()
                    .map(|b| b.full_in_ms(now_ms))
                    .min()
                    .unwrap_or(u64::MAX);
                return Err(soonest.max(1));
            }
        }
        // A new key gets a full bucket.
        if TokenBucket::new(self.rate_per_sec, self.burst, now_ms).wait_ms(now_ms) == 0 {
            Ok(())
        } else {
            Err(u64::MAX)
        }
    }

    /// Takes a token of `key` at `now_ms`; call after [`KeyedBuckets::check`]
    /// said `Ok` (otherwise it takes nothing).
    pub fn take(&mut self, key: &K, now_ms: u64) {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            return;
        }
        let (rate, burst) = (self.rate_per_sec, self.burst);
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now_ms))
            .try_take(now_ms);
    }

    /// Buckets held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let mut b = TokenBucket::new(2.0, 3.0, 1_000);
        assert!(b.try_take(1_000));
        assert!(b.try_take(1_000));
        assert!(b.try_take(1_000));
        assert!(!b.try_take(1_000));
        // 2 tokens/s -> one token after 500 ms.
        assert!(!b.try_take(1_499));
        assert!(b.try_take(1_500));
        assert!(!b.try_take(1_500));
        // Long idle refills only up to burst.
        for _ in 0..3 {
            assert!(b.try_take(100_000));
        }
        assert!(!b.try_take(100_000));
    }

    #[test]
    fn wait_says_when_the_next_token_comes() {
        let mut b = TokenBucket::new(2.0, 1.0, 1_000);
        assert_eq!(b.wait_ms(1_000), 0);
        assert!(b.try_take(1_000));
        assert_eq!(b.wait_ms(1_000), 500);
        assert_eq!(b.wait_ms(1_200), 300);
        assert_eq!(b.wait_ms(1_500), 0);
        let mut never = TokenBucket::new(0.0, 1.0, 0);
        assert!(never.try_take(0));
        assert_eq!(never.wait_ms(1_000_000), u64::MAX);
    }

    #[test]
    fn keyed_buckets_limit_each_key_alone() {
        let mut k = KeyedBuckets::new(1.0, 2.0, 16);
        for _ in 0..2 {
            assert_eq!(k.check(&"a", 0), Ok(()));
            k.take(&"a", 0);
        }
        assert_eq!(k.check(&"a", 0), Err(1_000));
        // Another key is not affected.
        assert_eq!(k.check(&"b", 0), Ok(()));
        k.take(&"b", 0);
        // Checking takes nothing.
        assert_eq!(k.check(&"b", 0), Ok(()));
        assert_eq!(k.check(&"a", 999), Err(1));
        assert_eq!(k.check(&"a", 1_000), Ok(()));
    }

    #[test]
    fn keyed_buckets_stay_bounded_and_fail_closed() {
        let mut k = KeyedBuckets::new(1.0, 1.0, 2);
        for key in [1, 2] {
            assert_eq!(k.check(&key, 0), Ok(()));
            k.take(&key, 0);
        }
        // Both held buckets are in use: a third key waits for one to fill.
        assert_eq!(k.check(&3, 0), Err(1_000));
        k.take(&3, 0);
        assert_eq!(k.len(), 2);
        // Once they refilled they are forgotten and the new key fits.
        assert_eq!(k.check(&3, 1_000), Ok(()));
        k.take(&3, 1_000);
        assert_eq!(k.len(), 1);
        assert_eq!(k.check(&3, 1_000), Err(1_000));
        // A forgotten key starts again with a full bucket.
        assert_eq!(k.check(&1, 1_000), Ok(()));
    }

    #[test]
    fn bucket_tolerates_clock_going_backwards() {
        let mut b = TokenBucket::new(1.0, 1.0, 10_000);
        assert!(b.try_take(10_000));
        assert!(!b.try_take(5_000));
        assert!(!b.try_take(10_500));
        assert!(b.try_take(11_000));
    }

    #[test]
    fn bucket_with_bad_config_fails_closed() {
        // Bad burst: never grants.
        for burst in [f64::NAN, -1.0, 0.0, f64::NEG_INFINITY] {
            let mut b = TokenBucket::new(10.0, burst, 0);
            assert!(!b.try_take(0));
            assert!(!b.try_take(1_000_000));
        }
        // Bad rate: the initial burst is spent, then nothing refills.
        for rate in [f64::NAN, -1.0, f64::INFINITY] {
            let mut b = TokenBucket::new(rate, 2.0, 0);
            assert!(b.try_take(0));
            assert!(b.try_take(0));
            assert!(!b.try_take(1_000_000));
        }
    }
}
