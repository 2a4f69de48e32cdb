//! Exponential backoff with jitter for reconnecting to the coordinator.
//!
//! Jitter matters: when a coordinator restarts, every worker of the cluster notices at once;
//! without it they would all reconnect in the same millisecond, forever in step.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each drawn uniformly from [d/2, d].
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, never exceeding `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempt += 1;
        let half = ceiling / 2;
        half + ceiling.mul_f64(rand::random::<f64>() * 0.5)
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_within_jitter_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, c) in delays.iter().zip(ceilings) {
            let c = Duration::from_millis(c);
            assert!(*d >= c / 2 && *d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
        assert_eq!(b.attempt(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
