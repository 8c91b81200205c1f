//! Exponential backoff with jitter: the one schedule every retry loop of the crate
//! uses (the owed-work replay, the bus reconnection, the breaker's probe, a lease
//! waiter's polls).

use std::time::Duration;

/// Delays that start at `first` and double up to `cap`, each lengthened by a
/// random part of up to `jitter` (a fraction) so that instances retrying the same
/// server do not retry in step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    /// A schedule from `first` (at most `cap`) doubling up to `cap`, plus up to
    /// `jitter` × each delay.
    pub(crate) fn new(first: Duration, cap: Duration, jitter: f64) -> Self {
        let first = first.min(cap);
        Backoff {
            first,
            cap,
            jitter: jitter.clamp(0.0, 1.0),
            next: first,
        }
    }

    /// The next delay (with its jitter); the one after is twice as long, up to
    /// the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = base.saturating_mul(2).min(self.cap);
        base + base.mul_f64(fastrand::f64() * self.jitter)
    }

    /// Sleeps for the next delay.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over from the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut plain = Backoff::new(ms(50), ms(300), 0.0);
        let delays: Vec<_> = (0..5).map(|_| plain.next_delay()).collect();
        assert_eq!(delays, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        plain.reset();
        assert_eq!(plain.next_delay(), ms(50));

        let mut jittered = Backoff::new(ms(100), ms(100), 0.25);
        for _ in 0..1000 {
            let d = jittered.next_delay();
            assert!(d >= ms(100) && d <= ms(125), "{d:?}");
        }
        assert_eq!(Backoff::new(ms(10), ms(5), 0.0).next_delay(), ms(5));
    }
}
