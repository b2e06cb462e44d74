//! What the shared backends' connection registries have in common: how
//! often an instance renews its liveness, how long it waits before trying
//! again, and timeouts that are multiplied without overflowing.

use std::time::Duration;

/// The first wait before trying an engine again.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before trying an engine again.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait after `b`: twice as long, up to [`MAX_BACKOFF`].
pub(crate) fn next_backoff(b: Duration) -> Duration {
    b.saturating_mul(2).min(MAX_BACKOFF)
}

/// `d` times `n`, or the longest duration there is when that overflows: a
/// timeout set very long (`Duration::MAX` for "never") must not panic
/// where it is multiplied.
pub(crate) fn times(d: Duration, n: u32) -> Duration {
    d.saturating_mul(n)
}

/// How often an instance renews its liveness record, which the engine
/// forgets at `age`: a quarter of it, so that three renewals in a row can
/// fail or come late before a healthy instance is taken for dead.
pub(crate) fn renewal(age: Duration) -> Duration {
    (age / 4).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_timeouts_saturate_instead_of_overflowing() {
        // `Duration::MAX * 2` panics; a timeout meaning "never" must not.
        assert_eq!(times(Duration::MAX, 2), Duration::MAX);
        assert_eq!(times(Duration::from_secs(u64::MAX / 3), 4), Duration::MAX);
        assert_eq!(times(Duration::from_secs(2), 3), Duration::from_secs(6));
    }

    #[test]
    fn liveness_is_renewed_well_within_its_age() {
        assert_eq!(
            renewal(Duration::from_secs(15)),
            Duration::from_millis(3750)
        );
        // Three renewals can be missed before the record expires.
        for age in [300, 600, 1000, 15_000] {
            let age = Duration::from_millis(age);
            assert!(renewal(age) * 3 < age, "{age:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_longest() {
        assert_eq!(next_backoff(MIN_BACKOFF), Duration::from_millis(200));
        assert_eq!(next_backoff(Duration::from_secs(4)), MAX_BACKOFF);
        assert_eq!(next_backoff(Duration::MAX), MAX_BACKOFF);
    }
}
