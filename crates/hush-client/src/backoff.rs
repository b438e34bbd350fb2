//! [`Backoff`]: the delays between retries, doubling from a first delay up
//! to a cap. Pure arithmetic (no clock, no sleeping), so each retry loop
//! keeps its own limits and does its own waiting.

use std::time::Duration;

/// Delays that double after each use, from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first`; no delay ever exceeds `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first.min(max),
        }
    }

    /// The delay to wait now; the next one is twice as long (at most `max`).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.max);
        delay
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(2000));
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 2000, 2000].map(ms).to_vec()
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }
}
