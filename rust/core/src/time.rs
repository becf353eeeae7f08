//! Simulated time: integer nanoseconds, so that event order never depends on float rounding.

/// A point in simulated time or a duration, in nanoseconds.
pub type Nanos = u64;

/// Nanoseconds in one second.
pub const NS_PER_SEC: f64 = 1e9;

/// Converts seconds to nanoseconds, rounding to the nearest nanosecond (never below 1 ns for a
/// positive duration, so an iteration always advances the clock).
pub fn secs_to_ns(secs: f64) -> Nanos {
    if secs <= 0.0 {
        return 0;
    }
    ((secs * NS_PER_SEC).round() as Nanos).max(1)
}

/// Converts nanoseconds to seconds.
pub fn ns_to_secs(ns: Nanos) -> f64 {
    ns as f64 / NS_PER_SEC
}
