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
