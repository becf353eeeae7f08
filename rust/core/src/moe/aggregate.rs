//! Per-iteration routing (`experts.routing.sampling: per_iteration`): per MoE layer and iteration,
//! which experts the iteration's tokens activate and how much load each gets, drawn at once instead
//! of token by token.
//!
//! Each token picks `k` distinct experts by successive draws from the layer's popularity `w`
//! (uniform or Zipf), so expert `e` is in one token's set with its inclusion probability `pi_e`
//! (computed once, exactly by enumerating ordered k-tuples when there are at most a million of
//! them, else by a seeded Monte Carlo estimate; `k / E` for uniform routing). Over `n` independent
//! tokens, `e` stays unused with probability `(1 - pi_e)^n`. The aggregate draws each expert's
//! "activated" flag with exactly that probability, independently across experts, conditioned on at
//! least `k` being activated (as one token alone activates `k`), and gives the activated experts
//! the iteration's `n * k` token-expert pairs in proportion to `pi_e` (whole pairs, at least one
//! each, by cumulative rounding). What it preserves: the total
//! pairs (exact), each expert's probability of being activated (exact up to the conditioning), so
//! the expected activated experts per layer, and each activated expert's expected share of the load.
//! What it drops: the negative correlation between experts of one token (an expert taken leaves
//! fewer slots for others), the sampling noise of each expert's load (with expert parallelism the
//! load imbalance reflects the popularity skew and the activated set only), and per-request memory
//! (hence no locality and no affinity grouping). With `n * k <= E` (a few tokens) the tokens are
//! drawn one by one instead, exactly as per-token routing does (without locality): that costs no
//! more than the aggregate and keeps small decode batches exact.

use super::routing::ExpertRouter;
use super::runtime::{ExpertRuntime, TokenSpan};
use crate::rng::RngStream;
use std::collections::HashMap;

/// Ordered k-tuples up to which inclusion probabilities are enumerated exactly.
const ENUMERATE_LIMIT: f64 = 1e6;
/// Tokens of the Monte Carlo estimate of inclusion probabilities beyond that.
const MONTE_CARLO_TOKENS: u64 = 200_000;
/// 2^53: a uniform draw's resolution (`RngStream::next_f64` is a multiple of 1 / 2^53).
const UNIT: f64 = (1u64 << 53) as f64;

/// The per-iteration routing state of one instance.
#[derive(Debug, Clone)]
pub struct IterationRouting {
    experts: usize,
    k: usize,
    /// Inclusion probability of the expert of each popularity rank (rank 0: most popular).
    inclusion: Vec<f64>,
    /// `ln(1 - inclusion)` by rank.
    ln_unused: Vec<f64>,
    /// Per layer and expert, the expert's popularity rank in its layer.
    rank: Vec<u32>,
    /// The token count `table` is for.
    unused_tokens: u64,
    /// What depends on the token count alone, for `unused_tokens` tokens.
    table: TokenTable,
    /// The tables of the other token counts met so far.
    tables: HashMap<u64, TokenTable>,
    /// Pairs kept in the tables' `full` shares.
    full_kept: usize,
    rng: RngStream,
}

/// What a layer's draw for one token count reuses.
#[derive(Debug, Clone)]
struct TokenTable {
    /// Per rank, the activation threshold: with `q` the probability that the tokens all miss the
    /// expert, `ceil(q * 2^53)`, so that a draw's 53 random bits `m` are at least it exactly when
    /// the draw `m / 2^53` is at least `q` (both exact in binary).
    unused: Box<[u64]>,
    /// Per layer and expert, the pairs when every expert of the layer is activated (the shares
    /// then depend on the layer and the token count only); NaN at a layer's first expert until
    /// computed. Empty until first needed, and left empty once [`FULL_SHARES_KEPT`] are kept.
    full: Vec<f64>,
}

/// Pairs (8 bytes each) kept for fully activated layers over all token counts: 16 MiB.
const FULL_SHARES_KEPT: usize = 1 << 21;

impl IterationRouting {
    /// The aggregate of `router`'s routing model, drawing from the stream `stream` seeded by `seed`.
    pub fn new(router: &ExpertRouter, experts: u32, seed: u64, stream: &str) -> Self {
        let (e, k, layers) = (experts as usize, router.k() as usize, router.layers());
        let mut rank = Vec::with_capacity(layers as usize * e);
        let mut sorted_w = Vec::new();
        for l in 0..layers {
            let w = router.popularity(l);
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| w[b].partial_cmp(&w[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
            let mut r = vec![0u32; e];
            for (pos, &x) in order.iter().enumerate() {
                r[x] = pos as u32;
            }
            rank.extend(r);
            if l == 0 {
                let total: f64 = w.iter().sum();
                sorted_w = order.iter().map(|&x| w[x] / total).collect();
            }
        }
        let inclusion = if sorted_w.iter().all(|&x| x == sorted_w[0]) { vec![k as f64 / e as f64; e] } else { inclusion_probabilities(&sorted_w, k, seed, stream) };
        let ln_unused = inclusion.iter().map(|&p| (1.0 - p).max(0.0).ln()).collect();
        let table = TokenTable { unused: vec![1 << 53; e].into(), full: Vec::new() };
        IterationRouting { experts: e, k, inclusion, ln_unused, rank, unused_tokens: 0, table, tables: HashMap::new(), full_kept: 0, rng: RngStream::new(seed, stream) }
    }

    /// Inclusion probability of each expert of `layer` (sums to `k`).
    #[cfg(test)]
    pub fn inclusion(&self, layer: u32) -> Vec<f64> {
        let lo = layer as usize * self.experts;
        self.rank[lo..lo + self.experts].iter().map(|&r| self.inclusion[r as usize]).collect()
    }

    /// Writes into `out` (one layer's experts, every entry overwritten) the token-expert pairs of `tokens` tokens
    /// (more than `E / k` of them) in `layer`: activated experts get their expected share. Returns
    /// the activated experts as bits (expert `i` at bit `i`; 0 past 64 experts).
    fn draw(&mut self, layer: u32, tokens: u64, out: &mut [f64]) -> u64 {
        if tokens != self.unused_tokens {
            self.switch_table(tokens);
        }
        let lo = layer as usize * self.experts;
        let ranks = &self.rank[lo..lo + self.experts];
        let unused = &self.table.unused;
        // The stream in a local (kept in registers, not stored back per draw).
        let mut rng = self.rng.clone();
        loop {
            // The activated experts as bits first (at most 64 experts; else flag by flag).
            let mut mask = 0u64;
            if self.experts <= 64 {
                for (i, &r) in ranks.iter().enumerate() {
                    // `next_f64() >= q`, on the integer draw (`next_f64` is `(next_u64() >> 11) / 2^53`).
                    mask |= ((rng.next_u64() >> 11 >= unused[r as usize]) as u64) << i;
                }
                // Every expert activated: the layer's shares for this token count, as computed
                // the first time (the same operations on the same values).
                if mask.count_ones() as usize == self.experts {
                    if let Some(full) = self.table.full.get(lo..lo + self.experts).filter(|f| !f[0].is_nan()) {
                        out.copy_from_slice(full);
                        self.rng = rng;
                        return mask;
                    }
                }
            }
            // Branch-free (the flags are random): an unused expert adds +0.0, which leaves the
            // sums as they were.
            let (mut mass, mut activated) = (0.0, 0);
            for (i, (o, &r)) in out.iter_mut().zip(ranks).enumerate() {
                let used = if self.experts <= 64 { mask >> i & 1 != 0 } else { rng.next_u64() >> 11 >= unused[r as usize] };
                *o = if used { self.inclusion[r as usize] } else { 0.0 };
                mass += *o;
                activated += used as usize;
            }
            if activated >= self.k && mass > 0.0 {
                self.rng = rng;
                if activated != self.experts {
                    self.shares(tokens, activated, mass, out);
                    return mask;
                }
                if self.table.full.is_empty() && self.full_kept + self.rank.len() <= FULL_SHARES_KEPT {
                    self.table.full = vec![f64::NAN; self.rank.len()];
                    self.full_kept += self.rank.len();
                }
                self.shares(tokens, activated, mass, out);
                if let Some(full) = self.table.full.get_mut(lo..lo + self.experts) {
                    full.copy_from_slice(out);
                }
                return mask;
            }
        }
    }

    /// Makes `tokens`' table the current one (kept with the others met so far).
    fn switch_table(&mut self, tokens: u64) {
        let next = self.tables.remove(&tokens).unwrap_or_else(|| TokenTable {
            unused: self.ln_unused.iter().map(|&ln| ((tokens as f64 * ln).exp() * UNIT).ceil() as u64).collect(),
            full: Vec::new(),
        });
        let previous = std::mem::replace(&mut self.table, next);
        self.tables.insert(self.unused_tokens, previous);
        self.unused_tokens = tokens;
    }

    /// Turns the activated experts' inclusion probabilities in `out` (0 for the others; `mass`
    /// their sum) into whole pairs: one per activated expert, the rest by cumulative rounding of
    /// the shares, so every layer's total is exactly `tokens * k` (and the kernel time repeats).
    fn shares(&self, tokens: u64, activated: usize, mass: f64, out: &mut [f64]) {
        let rest = tokens * self.k as u64 - activated as u64;
        let share = rest as f64 / mass;
        let (mut cum, mut given, mut last) = (0.0, 0u64, 0);
        // Branch-free too: an unused expert leaves `cum` as it is (it adds 0 * share), so
        // its `upto` is `given` again and it keeps 0. Through i64 (exact below 2^63), as
        // the unsigned conversions branch.
        for (i, o) in out.iter_mut().enumerate() {
            let on = *o > 0.0;
            cum += *o * share;
            // Rounded to nearest (cum >= 0), without a libm call.
            let upto = ((cum + 0.5) as i64 as u64).clamp(given, rest);
            *o = if on { (1 + upto - given) as i64 as f64 } else { 0.0 };
            given = upto;
            last = if on { i } else { last };
        }
        out[last] += (rest - given) as f64;
    }
}

/// Inclusion probability of each expert (by rank, `w` normalised and sorted) in one token's `k`
/// distinct experts drawn by successive sampling (each draw from `w`, repeats redrawn).
fn inclusion_probabilities(w: &[f64], k: usize, seed: u64, stream: &str) -> Vec<f64> {
    let e = w.len();
    let tuples: f64 = (0..k).map(|i| (e - i) as f64).product();
    let mut pi = vec![0.0; e];
    if tuples <= ENUMERATE_LIMIT {
        let mut chosen = Vec::with_capacity(k);
        enumerate(w, k, 1.0, 0.0, &mut chosen, &mut pi);
        return pi;
    }
    let mut rng = RngStream::new(seed, &format!("{stream}.inclusion"));
    let mut cdf = Vec::with_capacity(e);
    let mut acc = 0.0;
    for &x in w {
        acc += x;
        cdf.push(acc);
    }
    let mut taken = vec![false; e];
    let mut set = Vec::with_capacity(k);
    for _ in 0..MONTE_CARLO_TOKENS {
        set.clear();
        while set.len() < k {
            let u = rng.next_f64() * acc;
            let x = cdf.partition_point(|&c| c <= u).min(e - 1);
            if !taken[x] {
                taken[x] = true;
                set.push(x);
            }
        }
        for &x in &set {
            pi[x] += 1.0;
            taken[x] = false;
        }
    }
    pi.iter_mut().for_each(|p| *p /= MONTE_CARLO_TOKENS as f64);
    pi
}

/// Adds to `pi`, for every ordered continuation of `chosen` to `k` experts, its probability
/// (`p` so far; `used` the weight already taken) to each expert in it.
fn enumerate(w: &[f64], k: usize, p: f64, used: f64, chosen: &mut Vec<usize>, pi: &mut [f64]) {
    if chosen.len() == k {
        for &x in chosen.iter() {
            pi[x] += p;
        }
        return;
    }
    for x in 0..w.len() {
        if w[x] <= 0.0 || chosen.contains(&x) {
            continue;
        }
        chosen.push(x);
        enumerate(w, k, p * w[x] / (1.0 - used), used + w[x], chosen, pi);
        chosen.pop();
    }
}

impl ExpertRuntime {
    /// Per-iteration routing of `spans` into the per-layer expert counts: every token of the
    /// iteration counts (no prefill sampling); a few tokens are drawn one by one.
    /// With at most 64 experts it also keeps, for the bitmask timeline, each layer's used experts
    /// as bits and the pairs every layer has (`tokens k`, whole).
    pub(super) fn route_aggregate(&mut self, spans: &[TokenSpan]) {
        let tokens: u64 = spans.iter().map(|s| s.tokens as u64).sum();
        self.stats.tokens += tokens;
        let (e, k) = (self.experts as usize, self.k as usize);
        let masks = &mut self.work.route_masks;
        masks.clear();
        self.work.route_pairs = (tokens * k as u64) as f64;
        if tokens == 0 {
            self.counts.iter_mut().for_each(|c| *c = 0.0);
            masks.resize(self.layers as usize, 0);
            return;
        }
        let agg = self.aggregate.as_mut().expect("per-iteration routing has its aggregate");
        for l in 0..self.layers {
            let out = &mut self.counts[l as usize * e..(l as usize + 1) * e];
            if tokens * k as u64 <= e as u64 {
                out.iter_mut().for_each(|c| *c = 0.0);
                let scratch = &mut self.scratch[..k];
                for t in 0..tokens {
                    self.router.route(0, t, l, None, scratch);
                    for &x in scratch.iter() {
                        out[x as usize] += 1.0;
                    }
                }
                masks.push(out.iter().enumerate().fold(0u64, |m, (i, &c)| m | ((c != 0.0) as u64).checked_shl(i as u32).unwrap_or(0)));
            } else {
                masks.push(agg.draw(l, tokens, out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerated_inclusion_matches_monte_carlo_and_sums_to_k() {
        let w: Vec<f64> = (1..=8).map(|r| 1.0 / (r as f64).powf(0.8)).collect();
        let total: f64 = w.iter().sum();
        let w: Vec<f64> = w.iter().map(|x| x / total).collect();
        let mut exact = vec![0.0; 8];
        enumerate(&w, 2, 1.0, 0.0, &mut Vec::new(), &mut exact);
        assert!((exact.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        // Top-1: inclusion is the weight itself.
        let mut top1 = vec![0.0; 8];
        enumerate(&w, 1, 1.0, 0.0, &mut Vec::new(), &mut top1);
        assert!(top1.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-12));
        // The sampling law of the rejection draws: pi_0 = w0 + sum_{j != 0} w_j w0 / (1 - w_j).
        let pi0 = w[0] + (1..8).map(|j| w[j] * w[0] / (1.0 - w[j])).sum::<f64>();
        assert!((exact[0] - pi0).abs() < 1e-12);
        let mut rng = RngStream::new(1, "t");
        let mut mc = vec![0.0; 8];
        let n = 200_000;
        for _ in 0..n {
            let mut set: Vec<usize> = Vec::new();
            while set.len() < 2 {
                let u = rng.next_f64();
                let mut acc = 0.0;
                let x = w.iter().position(|&p| {
                    acc += p;
                    u < acc
                }).unwrap_or(7);
                if !set.contains(&x) {
                    set.push(x);
                }
            }
            set.iter().for_each(|&x| mc[x] += 1.0 / n as f64);
        }
        assert!(exact.iter().zip(&mc).all(|(a, b)| (a - b).abs() < 0.005), "{exact:?} {mc:?}");
    }

    #[test]
    fn integer_thresholds_decide_as_the_float_draws() {
        // `next_f64() >= q` and `(next_u64() >> 11) >= ceil(q * 2^53)` on the same bits, for
        // probabilities of every scale (exp underflows to subnormals and 0 for many tokens) and
        // draws right at the threshold.
        let ln: Vec<f64> = [1e-12, 1e-6, 0.05, 0.3, 0.75, 0.999_999, 1.0].iter().map(|&p: &f64| (1.0 - p).max(0.0).ln()).collect();
        let mut rng = RngStream::new(9, "t");
        for n in [1u64, 2, 7, 64, 1000, 40_000, 1 << 20] {
            for &l in &ln {
                let q = (n as f64 * l).exp();
                let t = (q * UNIT).ceil() as u64;
                let mut bits: Vec<u64> = (0..2000).map(|_| rng.next_u64() >> 11).collect();
                bits.extend([t.saturating_sub(1), t, t + 1, 0, (1 << 53) - 1].into_iter().filter(|&m| m < 1 << 53));
                for m in bits {
                    let f = m as f64 * (1.0 / (1u64 << 53) as f64);
                    assert_eq!(f >= q, m >= t, "n {n} q {q} m {m}");
                }
            }
        }
    }

    #[test]
    fn draw_keeps_pairs_and_activation_probability() {
        use crate::moe::config::{RoutingKind, RoutingSampling, RoutingSpec};
        let spec = RoutingSpec { kind: RoutingKind::Zipf, zipf_exponent: 0.8, sampling: RoutingSampling::PerIteration, ..RoutingSpec::default() };
        let router = ExpertRouter::new(&spec, 8, 2, 2, None, 5, "t").unwrap();
        let mut agg = IterationRouting::new(&router, 8, 5, "t.agg");
        let pi = agg.inclusion(1);
        assert!((pi.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        let (n, runs) = (6u64, 50_000);
        let mut seen = [0.0; 8];
        let mut out = [0.0; 8];
        for _ in 0..runs {
            out.iter_mut().for_each(|o| *o = 0.0);
            agg.draw(1, n, &mut out);
            assert_eq!(out.iter().sum::<f64>(), 12.0);
            assert!(out.iter().all(|&c| c == c.round()));
            assert!(out.iter().filter(|&&c| c > 0.0).count() >= 2);
            for (s, &c) in seen.iter_mut().zip(&out) {
                if c > 0.0 {
                    *s += 1.0 / runs as f64;
                }
            }
        }
        for (s, p) in seen.iter().zip(&pi) {
            let want = 1.0 - (1.0 - p).powi(n as i32);
            assert!((s - want).abs() < 0.01, "activated {s} want {want}");
        }
    }
}
