//! Simulated time: integer nanoseconds, so that event order never depends on float rounding.

/// A point in simulated time or a duration, in nanoseconds.
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NS_PER_SEC: f64 = 1e9;

/// The latest representable simulated time: outputs store times as signed 64-bit nanoseconds
/// (about 292 years). An event past it is an error, never a wrapped or negative time.
pub const MAX_TIME_NS: Nanos = i64::MAX as Nanos;

/// Converts seconds to nanoseconds, rounding to the nearest nanosecond (never below 1 ns for a
/// positive duration, so an iteration always advances the clock). Saturates: a duration too long
/// to represent, infinite or NaN becomes `Nanos::MAX`, which [`at`] refuses.
pub fn secs_to_ns(secs: f64) -> Nanos {
    if secs.is_nan() {
        return Nanos::MAX;
    }
    if secs <= 0.0 {
        return 0;
    }
    ((secs * NS_PER_SEC).round() as Nanos).max(1)
}

/// The time `duration` after `now`, or `None` when it would pass [`MAX_TIME_NS`] (checked time
/// arithmetic: the clock never overflows).
pub fn at(now: Nanos, duration: Nanos) -> Option<Nanos> {
    now.checked_add(duration).filter(|&t| t <= MAX_TIME_NS)
}

/// Converts nanoseconds to seconds.
pub fn ns_to_secs(ns: Nanos) -> f64 {
    ns as f64 / NS_PER_SEC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_and_addition_is_checked() {
        assert_eq!(secs_to_ns(1.5e-9), 2);
        assert_eq!(secs_to_ns(1e-12), 1);
        assert_eq!(secs_to_ns(-3.0), 0);
        assert_eq!(secs_to_ns(f64::NAN), Nanos::MAX);
        assert_eq!(secs_to_ns(f64::INFINITY), Nanos::MAX);
        assert_eq!(secs_to_ns(1e300), Nanos::MAX);
        assert_eq!(at(5, 7), Some(12));
        assert_eq!(at(MAX_TIME_NS - 1, 1), Some(MAX_TIME_NS));
        assert_eq!(at(MAX_TIME_NS, 1), None);
        assert_eq!(at(1, Nanos::MAX), None);
    }
}
