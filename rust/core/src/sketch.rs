//! A streaming quantile sketch with bounded relative error (the DDSketch construction).
//!
//! Inter-token latencies are far too many to keep (one per decoded token); the sketch keeps one
//! counter per logarithmic bucket, so memory depends on the value range, not the sample count.

/// Quantiles of positive values with relative error at most `alpha`.
#[derive(Debug, Clone)]
pub struct QuantileSketch {
    gamma_ln: f64,
    offset: i32,
    counts: Vec<u64>,
    zeros: u64,
    total: u64,
    min: f64,
    max: f64,
    sum: f64,
    /// The last positive value added and its bucket: inter-token gaps repeat (a batch shares one),
    /// so most adds skip the logarithm.
    last: f64,
    last_bucket: i32,
}

impl QuantileSketch {
    /// A sketch with relative accuracy `alpha` (0.005 = 0.5%).
    pub fn new(alpha: f64) -> Self {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        QuantileSketch { gamma_ln: gamma.ln(), offset: 0, counts: Vec::new(), zeros: 0, total: 0, min: f64::INFINITY, max: 0.0, sum: 0.0, last: f64::NAN, last_bucket: 0 }
    }

    fn bucket(&self, x: f64) -> i32 {
        (x.ln() / self.gamma_ln).ceil() as i32
    }

    /// Adds one value (values <= 0 count as zero).
    pub fn add(&mut self, x: f64) {
        self.add_repeated(x, 1);
    }

    /// Adds `x` `n` times: the same state as `n` calls of [`add`](Self::add) (the sum still
    /// takes `n` additions, so it stays bit-identical), at the cost of one bucket lookup.
    pub fn add_repeated(&mut self, x: f64, n: u64) {
        if n == 0 {
            return;
        }
        self.total += n;
        self.sum = add_repeatedly(self.sum, x, n);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if x <= 0.0 {
            self.zeros += n;
            return;
        }
        let k = if x == self.last {
            self.last_bucket
        } else {
            let k = self.bucket(x);
            self.last = x;
            self.last_bucket = k;
            k
        };
        if self.counts.is_empty() {
            self.offset = k;
            self.counts.push(0);
        }
        if k < self.offset {
            let grow = (self.offset - k) as usize;
            let mut v = vec![0u64; grow];
            v.extend_from_slice(&self.counts);
            self.counts = v;
            self.offset = k;
        }
        let idx = (k - self.offset) as usize;
        if idx >= self.counts.len() {
            self.counts.resize(idx + 1, 0);
        }
        self.counts[idx] += n;
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Mean of the values added (exact).
    pub fn mean(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { self.sum / self.total as f64 }
    }

    /// Largest value added (exact).
    pub fn max(&self) -> f64 {
        if self.total == 0 { f64::NAN } else { self.max }
    }

    /// The q-quantile (0..=1), within the sketch's relative error; NaN when empty.
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
                return v.clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Memory held by the buckets, in bytes.
    pub fn footprint_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<u64>()
    }
}

/// `s` after `n` floating-point additions of `x` (`s += x`, rounded each time), bit for bit, in
/// O(binades crossed) rather than O(n) steps: while `s` stays in one binade [2^e, 2^(e+1)) its ulp
/// u is fixed, so every addition adds the same multiple of u (x rounded against u), unless x's
/// remainder modulo u is exactly u/2 (a tie, rounded to even: that case takes single steps).
fn add_repeatedly(mut s: f64, x: f64, mut n: u64) -> f64 {
    while n > 0 {
        let before = s;
        s += x;
        n -= 1;
        if n == 0 || !(before >= f64::MIN_POSITIVE && x > 0.0 && s.is_finite()) {
            continue;
        }
        let exp = before.to_bits() >> 52;
        if exp <= 53 || s.to_bits() >> 52 != exp {
            // A subnormal ulp, or this step left the binade: go on step by step from the new one.
            continue;
        }
        let u = f64::from_bits((exp - 52) << 52);
        let delta = s - before;
        if delta == 0.0 {
            // x < u/2: every further addition leaves s unchanged.
            return s;
        }
        if (x - delta).abs() == 0.5 * u {
            continue;
        }
        let top = f64::from_bits((exp + 1) << 52);
        // Steps whose results stay strictly inside the binade, each adding exactly `delta`.
        let (room, step) = (((top - s) / u) as u64, (delta / u) as u64);
        let k = n.min((room - 1) / step);
        s += (k * step) as f64 * u;
        n -= k;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_relative_error() {
        let mut s = QuantileSketch::new(0.005);
        let mut values: Vec<f64> = (1..=100_000).map(|i| (i as f64) * 1e-5).collect();
        for v in &values {
            s.add(*v);
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [0.01, 0.5, 0.9, 0.99, 0.999] {
            let exact = values[(q * (values.len() - 1) as f64).floor() as usize];
            let est = s.quantile(q);
            assert!((est - exact).abs() / exact < 0.0101, "q={q} exact={exact} est={est}");
        }
        assert_eq!(s.count(), 100_000);
    }

    #[test]
    fn repeated_adds_match_single_adds_bit_for_bit() {
        let mut one = QuantileSketch::new(0.005);
        let mut rep = QuantileSketch::new(0.005);
        let values = [0.013, 0.013, 0.013, 0.0, 0.021, 0.021, 0.0007, 0.013, 1.5];
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
    }

    #[test]
    fn memory_is_bounded_by_range_not_count() {
        let mut s = QuantileSketch::new(0.005);
        for i in 0..1_000_000u64 {
            s.add(0.01 + (i % 1000) as f64 * 1e-4);
        }
        assert!(s.footprint_bytes() < 16 * 1024);
    }

    #[test]
    fn repeated_addition_is_bit_identical_to_the_loop() {
        let naive = |mut s: f64, x: f64, n: u64| {
            for _ in 0..n {
                s += x;
            }
            s
        };
        let mut rng = crate::rng::RngStream::new(11, "sum");
        let mut checked = 0;
        for case in 0..4000 {
            // Gaps of ms-scale seconds into sums from 0 to 1e6 (a run's ITL sum), and hostile
            // ones: ties at the ulp, binade edges, tiny and huge x, zero.
            let s0 = match case % 5 {
                0 => 0.0,
                1 => rng.next_f64() * 1e6,
                2 => f64::from_bits((1023 + (case as u64 % 40)) << 52) - rng.next_f64() * 1e-6,
                3 => (1u64 << (case % 30)) as f64,
                _ => rng.next_f64() * 10.0,
            };
            let x = match case % 7 {
                0 => 0.001 * (1.0 + rng.next_f64()),
                1 => 0.5 * (s0.to_bits() >> 52).checked_sub(52).map_or(0.0, |e| f64::from_bits(e << 52)) * 3.0,
                2 => 1e-20,
                3 => 0.0,
                4 => 1e5 * rng.next_f64(),
                5 => 0.015625,
                _ => rng.next_f64() * 0.1,
            };
            let n = [1u64, 2, 3, 17, 45, 256, 10_000][case % 7];
            let (a, b) = (add_repeatedly(s0, x, n), naive(s0, x, n));
            assert_eq!(a.to_bits(), b.to_bits(), "s0={s0:e} x={x:e} n={n}: {a:e} vs {b:e}");
            checked += 1;
        }
        assert_eq!(checked, 4000);
        // A long run: 2M gaps of 12.3 ms from 0, crossing many binades.
        assert_eq!(add_repeatedly(0.0, 0.0123, 2_000_000).to_bits(), naive(0.0, 0.0123, 2_000_000).to_bits());
    }
}
