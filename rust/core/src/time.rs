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
    let x = secs * NS_PER_SEC;
    // `x.round()` (half away from zero) without the library call x86-64's baseline makes for it:
    // below 2^52 the truncation and the fraction `x - t` are exact. (Through i64, which x86-64
    // converts in one instruction each way, where u64 takes a branchy sequence; the same values
    // in this range.)
    let ns = if x < 4_503_599_627_370_496.0 {
        let t = x as i64;
        (if x - t as f64 >= 0.5 { t + 1 } else { t }) as Nanos
    } else {
        x.round() as Nanos
    };
    ns.max(1)
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

    #[test]
    fn conversion_rounds_as_the_library_does() {
        // Halves, their neighbours, values near 2^52 and random magnitudes: the inline rounding
        // gives `f64::round`'s nanoseconds.
        let reference = |s: f64| ((s * NS_PER_SEC).round() as Nanos).max(1);
        let mut rng = crate::rng::RngStream::new(3, "round");
        let mut cases: Vec<f64> = vec![0.5e-9, 1.5e-9, 2.5e-9, 4.5e-9, 4_503_599_627_370_495.5e-9, 4_503_599_627_370_496e-9, 9e9, 0.49999999999999994e-9];
        for _ in 0..200_000 {
            let x = rng.next_f64() * 10f64.powi((rng.next_f64() * 30.0) as i32 - 12);
            let h = (x * NS_PER_SEC).floor() + 0.5;
            cases.extend([x, h / NS_PER_SEC, f64::from_bits((h / NS_PER_SEC).to_bits() + 1), f64::from_bits((h / NS_PER_SEC).to_bits().saturating_sub(1))]);
        }
        for s in cases {
            if s > 0.0 {
                assert_eq!(secs_to_ns(s), reference(s), "{s:e} s");
            }
        }
    }
}
