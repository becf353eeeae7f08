//! A streaming quantile sketch with bounded relative error (the DDSketch construction), of
//! durations in integer nanoseconds.
//!
//! Inter-token latencies are far too many to keep (one per decoded token); the sketch keeps one
//! counter per logarithmic bucket, so memory depends on the value range, not the sample count.
//! Every statistic it keeps is independent of the order the values come in: bucket counts, the
//! extremes and the sum are integers (the mean is the exact sum divided once at the end), so
//! instances may feed it in any interleaving and a run stays byte-identical.

/// Quantiles of non-negative durations (nanoseconds) with relative error at most `alpha`.
#[derive(Debug, Clone)]
pub struct QuantileSketch {
    gamma_ln: f64,
    offset: i32,
    counts: Vec<u64>,
    zeros: u64,
    total: u64,
    min_ns: u64,
    max_ns: u64,
    /// The exact sum of every value added, nanoseconds.
    sum_ns: u128,
    /// Per bucket (indexed as `counts`): the exact range of values it holds, `(lo, hi)`, found
    /// the first time a value falls there ((0, 0) until then); the bucket is monotone in the
    /// value, so any value within falls there, and the logarithm is taken only on a bucket's
    /// first value.
    bounds: Vec<(u64, u64)>,
    /// The bucket last found for values in each span of 2^[`HINT_SPAN_SHIFT`] nanoseconds, by a
    /// hash of the span (direct-mapped; entry `(tag, bucket)`, the tag the span's number + 1, 0
    /// when empty): the many instances and micro-batches feeding one sketch each repeat their own
    /// few gaps, which one remembered bucket could not hold for them all.
    hints: Vec<(u64, i32)>,
}

/// Values in one span of 2^this many nanoseconds (16 us) share a hint entry.
const HINT_SPAN_SHIFT: u32 = 14;
/// Hint entries (a power of two).
const HINTS: usize = 1024;

/// The hint entry of span tag `tag`.
#[inline]
fn hint_slot(tag: u64) -> usize {
    (tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - HINTS.trailing_zeros())) as usize
}

/// Seconds of `ns` nanoseconds, as the sketch reports values.
fn secs(ns: u64) -> f64 {
    ns as f64 * 1e-9
}

impl QuantileSketch {
    /// A sketch with relative accuracy `alpha` (0.005 = 0.5%).
    pub fn new(alpha: f64) -> Self {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        QuantileSketch { gamma_ln: gamma.ln(), offset: 0, counts: Vec::new(), zeros: 0, total: 0, min_ns: u64::MAX, max_ns: 0, sum_ns: 0, bounds: Vec::new(), hints: Vec::new() }
    }

    fn bucket(&self, ns: u64) -> i32 {
        (secs(ns).ln() / self.gamma_ln).ceil() as i32
    }

    /// Adds one duration of `ns` nanoseconds (zero counts as zero).
    pub fn add(&mut self, ns: u64) {
        self.add_repeated(ns, 1);
    }

    /// Adds a duration of `ns` nanoseconds `n` times: the same state as `n` calls of
    /// [`add`](Self::add), at the cost of one bucket lookup.
    #[inline(always)]
    pub fn add_repeated(&mut self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.total += n;
        self.sum_ns += ns as u128 * n as u128;
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        if ns == 0 {
            self.zeros += n;
            return;
        }
        let k = self.find_bucket(ns);
        self.counts[(k - self.offset) as usize] += n;
    }

    /// The bucket of `ns` (> 0), with room for it in `counts` and its bounds known: from its
    /// span's hint when `ns` lies within that bucket's exact bounds, else from the logarithm.
    fn find_bucket(&mut self, ns: u64) -> i32 {
        let tag = (ns >> HINT_SPAN_SHIFT) + 1;
        let slot = hint_slot(tag);
        if let Some(&(held, k)) = self.hints.get(slot) {
            if held == tag && self.holds(k, ns) {
                return k;
            }
        }
        // A neighbouring span's bucket, or the next one over, when its exact bounds hold `ns`
        // (gaps drift slowly: a new span mostly falls where its neighbour's values did).
        let near = [tag - 1, tag + 1].into_iter().filter_map(|t| self.hints.get(hint_slot(t)).filter(|&&(held, _)| held == t)).find_map(|&(_, k)| [k, k + 1, k - 1].into_iter().find(|&k| self.holds(k, ns)));
        let k = match near {
            Some(k) => k,
            None => self.bucket(ns),
        };
        self.make_room(k);
        let i = (k - self.offset) as usize;
        if self.bounds[i].1 == 0 {
            self.bounds[i] = self.bucket_bounds(k, ns);
        }
        if self.hints.is_empty() {
            self.hints.resize(HINTS, (0, 0));
        }
        self.hints[slot] = (tag, k);
        k
    }

    /// Whether bucket `k`'s bounds are known and hold `ns`.
    #[inline]
    fn holds(&self, k: i32, ns: u64) -> bool {
        let i = k.wrapping_sub(self.offset);
        matches!(self.bounds.get(i as usize), Some(&(lo, hi)) if i >= 0 && lo <= ns && ns <= hi && hi > 0)
    }

    /// Grows `counts` and `bounds` to hold bucket `k`.
    fn make_room(&mut self, k: i32) {
        if self.counts.is_empty() {
            self.offset = k;
            self.counts.push(0);
            self.bounds.push((0, 0));
        }
        if k < self.offset {
            let grow = (self.offset - k) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.bounds.splice(0..0, std::iter::repeat_n((0, 0), grow));
            self.offset = k;
        }
        let idx = (k - self.offset) as usize;
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
            self.bounds.resize(idx + 1, (0, 0));
        }
    }

    /// The smallest and largest values of bucket `k`, which holds `ns`: by bisection on
    /// [`Self::bucket`] itself, so that they agree with it exactly.
    fn bucket_bounds(&self, k: i32, ns: u64) -> (u64, u64) {
        // Smallest value whose bucket is k: in (below, ns], below's bucket < k.
        let (mut below, mut lo) = (0u64, ns);
        while lo - below > 1 {
            let mid = below + (lo - below) / 2;
            if self.bucket(mid) >= k { lo = mid } else { below = mid }
        }
        // Largest value whose bucket is k: in [ns, above), above's bucket > k.
        let mut above = ns.saturating_mul(2).max(ns.saturating_add(1));
        while above < u64::MAX && self.bucket(above) <= k {
            above = above.saturating_mul(2);
        }
        let mut hi = ns;
        while above - hi > 1 {
            let mid = hi + (above - hi) / 2;
            if self.bucket(mid) <= k { hi = mid } else { above = mid }
        }
        (lo, hi)
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Mean of the values added, seconds: the exact sum divided by the count, rounded once.
    pub fn mean(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { (self.sum_ns as f64 / self.total as f64) * 1e-9 }
    }

    /// Largest value added, seconds (exact).
    pub fn max(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { secs(self.max_ns) }
    }

    /// The q-quantile (0..=1), seconds, within the sketch's relative error; NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.total - 1) as f64).floor() as u64;
        if rank < self.zeros {
            return 0.0;
        }
        let mut seen = self.zeros;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let k = (i as i32 + self.offset) as f64;
                let v = 2.0 * (k * self.gamma_ln).exp() / (1.0 + self.gamma_ln.exp());
                return v.clamp(secs(self.min_ns), secs(self.max_ns));
            }
        }
        secs(self.max_ns)
    }

    /// Memory held by the buckets, in bytes.
    pub fn footprint_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>() + self.bounds.capacity() * std::mem::size_of::<(u64, u64)>() + self.hints.capacity() * std::mem::size_of::<(u64, i32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_relative_error() {
        let mut s = QuantileSketch::new(0.005);
        // 10 us .. 1 s in 10 us steps.
        let mut values: Vec<u64> = (1..=100_000u64).map(|i| i * 10_000).collect();
        for v in &values {
            s.add(*v);
        }
        values.sort();
        for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize] as f64 * 1e-9;
            let est = s.quantile(q);
            assert!((est - exact).abs() / exact < 0.0101, "q={q} exact={exact} est={est}");
        }
        assert_eq!(s.count(), 100_000);
        // The mean is exact: 10 us x (1 + ... + 100,000) / 100,000 = 0.500005 s.
        assert_eq!(s.mean(), 0.500005);
        assert_eq!(s.max(), 1.0);
    }

    #[test]
    fn repeated_adds_match_single_adds() {
        let mut one = QuantileSketch::new(0.005);
        let mut rep = QuantileSketch::new(0.005);
        let values = [13_000_000u64, 13_000_000, 13_000_000, 0, 21_000_000, 21_000_000, 700_000, 13_000_000, 1_500_000_000];
        for v in values {
            one.add(v);
        }
        let mut i = 0;
        while i < values.len() {
            let n = values[i..].iter().take_while(|&&v| v == values[i]).count();
            rep.add_repeated(values[i], n as u64);
            i += n;
        }
        assert_eq!(one.count(), rep.count());
        assert_eq!(one.mean().to_bits(), rep.mean().to_bits());
        for q in [0.0, 0.1, 0.5, 0.9, 1.0] {
            assert_eq!(one.quantile(q).to_bits(), rep.quantile(q).to_bits(), "q={q}");
        }
        assert_eq!(one.counts, rep.counts);
        // 0.0 below the zeros' share; the largest value's bucket at the top, the largest exact.
        assert_eq!((one.quantile(0.0), one.max()), (0.0, 1.5));
        assert!((one.quantile(1.0) - 1.5).abs() < 0.005 * 1.5);
    }

    #[test]
    fn order_of_additions_does_not_matter() {
        // The same gaps in two interleavings (two instances feeding one run's sketch): every
        // statistic bit-identical, the mean included (a floating-point sum would differ).
        let a: Vec<u64> = (0..5000u64).map(|i| 10_000_000 + (i * 7919) % 3_000_001).collect();
        let b: Vec<u64> = (0..5000u64).map(|i| 40_000_000 + (i * 104_729) % 9_000_001).collect();
        let (mut x, mut y) = (QuantileSketch::new(0.005), QuantileSketch::new(0.005));
        for v in a.iter().chain(&b) {
            x.add(*v);
        }
        for (u, v) in b.iter().rev().zip(a.iter().rev()) {
            y.add(*u);
            y.add(*v);
        }
        assert_eq!(x.mean().to_bits(), y.mean().to_bits());
        assert_eq!(x.counts, y.counts);
        for q in [0.1, 0.5, 0.99] {
            assert_eq!(x.quantile(q).to_bits(), y.quantile(q).to_bits());
        }
        let exact: u128 = a.iter().chain(&b).map(|&v| v as u128).sum();
        assert_eq!(x.mean(), (exact as f64 / 10_000.0) * 1e-9);
    }

    #[test]
    fn remembered_bucket_bounds_give_the_logarithms_buckets() {
        // Values walking up and down across many bucket boundaries, two walks interleaved (two
        // micro-batches' gaps), and jumps: each lands in the bucket its own logarithm gives,
        // whether it came from remembered bounds or not.
        let mut s = QuantileSketch::new(0.005);
        let mut rng = crate::rng::RngStream::new(5, "sketch");
        let (mut x, mut y) = (50_000_000u64, 3_000u64);
        let mut want = std::collections::BTreeMap::new();
        for i in 0..200_000 {
            x = (x as i64 + (rng.next_f64() * 200_000.0) as i64 - 100_000).clamp(1, 10_000_000_000) as u64;
            y = (y as i64 + (rng.next_f64() * 40.0) as i64 - 20).clamp(1, 10_000_000) as u64;
            let jump = 1 + (rng.next_f64() * 1e10) as u64;
            for v in [x, y, if i % 97 == 0 { jump } else { x }] {
                assert_eq!(s.find_bucket(v), s.bucket(v), "{v} ns");
                *want.entry(s.bucket(v)).or_insert(0u64) += 1;
                s.add(v);
            }
        }
        let got: std::collections::BTreeMap<i32, u64> = s.counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| (i as i32 + s.offset, c)).collect();
        assert_eq!(got, want);
        // Every remembered range is exactly its bucket: one below and one above fall outside.
        for (i, &(lo, hi)) in s.bounds.iter().enumerate() {
            if hi > 0 {
                let k = i as i32 + s.offset;
                assert_eq!((s.bucket(lo), s.bucket(hi)), (k, k));
                assert!(s.bucket(lo - 1) < k && s.bucket(hi + 1) > k, "bucket {k}: {lo}..={hi}");
            }
        }
    }

    #[test]
    fn memory_is_bounded_by_range_not_count() {
        let mut s = QuantileSketch::new(0.005);
        for i in 0..1_000_000u64 {
            s.add(10_000_000 + (i % 1000) * 100_000);
        }
        assert!(s.footprint_bytes() < 40 * 1024);
    }
}
