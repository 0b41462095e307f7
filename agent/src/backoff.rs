//! The one back-off schedule of the agent: Modbus devices and lines, and uplink reconnects.
//!
//! Exponential with "equal jitter": the delay before attempt `n` (≥ 1) is uniform in
//! `[b/2, b]` with `b = min(initial * 2^(n-1), max)`. Half of the base is never skipped, so a
//! failing peer is never retried faster than `initial / 2`; the random half spreads gateways that
//! lost the same PLC or broker at once. Pure: the caller supplies the random unit.

use std::time::Duration;

/// Back-off before attempt number `failures` (≥ 1; 0 behaves like 1), `unit` uniform in `[0, 1)`.
pub(crate) fn delay(failures: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let base = initial.saturating_mul(1u32 << doublings).min(max);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A failure counter with its schedule, for a driver that retries one thing.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// Record a failure and return how long to wait before the next attempt.
    pub(crate) fn fail(&mut self, unit: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        delay(self.failures, self.initial, self.max, unit)
    }

    /// Record a success: the next failure starts from `initial` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }
}

/// A random unit for [`delay`] and [`Backoff::fail`]. Drivers call this; pure cores take the unit.
pub(crate) fn random_unit() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_from_initial_to_max_with_equal_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let top = |n| delay(n, initial, max, 1.0);
        let bottom = |n| delay(n, initial, max, 0.0);
        assert_eq!(
            [top(1), top(2), top(3), top(4), top(5)].map(|d| d.as_millis()),
            [100, 200, 400, 800, 1000]
        );
        assert_eq!(bottom(1), Duration::from_millis(50));
        assert_eq!(bottom(40), Duration::from_millis(500));
        assert_eq!(
            delay(u32::MAX, initial, max, 0.5),
            Duration::from_millis(750)
        );
        assert_eq!(
            delay(0, initial, max, 1.0),
            initial,
            "0 failures behaves like 1"
        );
    }

    #[test]
    fn backoff_grows_per_failure_and_resets_on_success() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        assert_eq!(b.fail(1.0), Duration::from_millis(250));
        assert_eq!(b.fail(1.0), Duration::from_millis(500));
        assert_eq!(b.failures(), 2);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail(0.0), Duration::from_millis(125));
    }
}
