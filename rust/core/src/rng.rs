//! Deterministic random streams: one independent stream per component, derived from the seed.
//!
//! xoshiro256** seeded through SplitMix64; a stream is named by a string so that adding a
//! component never shifts the numbers another component draws.

/// A seeded pseudo-random stream.
#[derive(Debug, Clone)]
pub struct RngStream {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A uniform float in [0, 1) for item `index` of the stream called `name` in the run seeded with
/// `seed`, drawn without state: the item's number is SplitMix64's `index`-th output from the
/// stream's seed, whatever else is drawn and in whatever order.
pub fn uniform_at(seed: u64, name: &str, index: u64) -> f64 {
    let mut state = (seed ^ fnv1a(name).rotate_left(17)).wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (splitmix64(&mut state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl RngStream {
    /// The stream called `name` for the run seeded with `seed`.
    pub fn new(seed: u64, name: &str) -> Self {
        let mut state = seed ^ fnv1a(name).rotate_left(17);
        let s = [splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state), splitmix64(&mut state)];
        RngStream { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in [0, n); `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the tiny bias is irrelevant for routing decisions.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_name_repeat() {
        let mut a = RngStream::new(7, "router");
        let mut b = RngStream::new(7, "router");
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn streams_are_independent_by_name_and_seed() {
        let a: Vec<u64> = { let mut r = RngStream::new(7, "router"); (0..8).map(|_| r.next_u64()).collect() };
        let b: Vec<u64> = { let mut r = RngStream::new(7, "faults"); (0..8).map(|_| r.next_u64()).collect() };
        let c: Vec<u64> = { let mut r = RngStream::new(8, "router"); (0..8).map(|_| r.next_u64()).collect() };
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_moments() {
        let mut r = RngStream::new(1, "t");
        let n = 200_000;
        let mean = (0..n).map(|_| r.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let mut counts = [0u32; 4];
        for _ in 0..n {
            counts[r.below(4) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 / n as f64 - 0.25).abs() < 0.01);
        }
    }
}
