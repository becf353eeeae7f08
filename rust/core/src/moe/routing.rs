//! Routing models: which experts each token of each layer picks.
//!
//! Synthetic routing draws `k` distinct experts per token and layer, uniformly or from a Zipf law
//! whose ranking of the experts differs per layer. With temporal locality `p`, a token reuses in a
//! layer the experts its request's previous token chose there with probability `p`. A recorded
//! trace replays real routing decisions instead ([`RoutingTrace`]).

use super::config::{RoutingKind, RoutingSpec};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use std::sync::Arc;

/// A recorded routing trace: for each recorded request, for each of its tokens (prompt then
/// output), for each MoE layer, the `k` experts chosen, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingTrace {
    /// MoE layers per token.
    pub layers: u32,
    /// Experts per token and layer.
    pub k: u32,
    /// Token offsets: request `r` owns tokens `offsets[r]..offsets[r + 1]`.
    pub offsets: Vec<u64>,
    /// Expert ids, `layers * k` per token.
    pub experts: Vec<u16>,
}

impl RoutingTrace {
    /// Checks the trace's shape against a model with `experts` experts, `layers` MoE layers, top-`k`.
    pub fn validate(&self, experts: u32, layers: u32, k: u32) -> Result<()> {
        if self.layers != layers || self.k != k {
            return Err(Error::config("experts.routing.trace", format!("the trace has {} layers x top-{}; the model has {layers} MoE layers x top-{k}", self.layers, self.k)));
        }
        if self.offsets.len() < 2 || self.offsets[0] != 0 || self.offsets.windows(2).any(|w| w[1] <= w[0]) {
            return Err(Error::config("experts.routing.trace", "needs at least one request, each with at least one token"));
        }
        let per_token = (layers * k) as u64;
        if *self.offsets.last().unwrap() * per_token != self.experts.len() as u64 {
            return Err(Error::config("experts.routing.trace", format!("{} expert ids do not match {} tokens x {per_token}", self.experts.len(), self.offsets.last().unwrap())));
        }
        if let Some(e) = self.experts.iter().find(|&&e| e as u32 >= experts) {
            return Err(Error::config("experts.routing.trace", format!("expert id {e} is out of range for {experts} experts")));
        }
        Ok(())
    }

    /// The experts of token `pos` of request `req` in `layer`: requests beyond the trace reuse
    /// it from the start (request `req mod R`), tokens beyond a recorded request wrap around it.
    pub fn lookup(&self, req: u32, pos: u64, layer: u32) -> &[u16] {
        let r = req as usize % (self.offsets.len() - 1);
        let (lo, hi) = (self.offsets[r], self.offsets[r + 1]);
        let token = lo + pos % (hi - lo);
        let start = ((token * self.layers as u64 + layer as u64) * self.k as u64) as usize;
        &self.experts[start..start + self.k as usize]
    }

    /// How often each expert is chosen in `layer` over the whole trace.
    pub fn counts(&self, layer: u32, experts: u32) -> Vec<f64> {
        let mut c = vec![0.0; experts as usize];
        let per_token = (self.layers * self.k) as usize;
        for token in self.experts.chunks_exact(per_token) {
            for &e in &token[(layer * self.k) as usize..((layer + 1) * self.k) as usize] {
                c[e as usize] += 1.0;
            }
        }
        c
    }
}

/// Draws which experts each token goes to (the MoE gate), for one instance; not to be confused
/// with [`crate::router::Router`], which places requests on instances.
#[derive(Debug, Clone)]
pub struct ExpertRouter {
    kind: RoutingKind,
    experts: u32,
    k: u32,
    layers: u32,
    locality: f64,
    /// Per layer, cumulative probabilities over expert ids (Zipf only).
    cdf: Vec<Vec<f64>>,
    trace: Option<Arc<RoutingTrace>>,
    rng: RngStream,
    /// Largest number of tokens of one prefill chunk drawn individually.
    pub max_sampled: u32,
}

impl ExpertRouter {
    /// A router for `layers` MoE layers of `experts` experts, top-`k`, seeded from `seed` and named
    /// by `stream` (one independent stream per instance).
    pub fn new(spec: &RoutingSpec, experts: u32, k: u32, layers: u32, trace: Option<Arc<RoutingTrace>>, seed: u64, stream: &str) -> Result<Self> {
        if spec.kind == RoutingKind::Trace {
            let t = trace.as_ref().ok_or_else(|| Error::config("experts.routing.kind", "trace routing needs a routing trace file (experts.routing.trace)"))?;
            t.validate(experts, layers, k)?;
        }
        let mut cdf = Vec::new();
        if spec.kind == RoutingKind::Zipf {
            let mut perm_rng = RngStream::new(seed, &format!("{stream}.ranking"));
            for _ in 0..layers {
                // A Fisher-Yates shuffle gives each layer its own ranking of the experts.
                let mut rank: Vec<usize> = (0..experts as usize).collect();
                for i in (1..rank.len()).rev() {
                    rank.swap(i, perm_rng.below(i as u64 + 1) as usize);
                }
                let mut w = vec![0.0; experts as usize];
                for (r, &e) in rank.iter().enumerate() {
                    w[e] = 1.0 / ((r + 1) as f64).powf(spec.zipf_exponent);
                }
                let total: f64 = w.iter().sum();
                let mut acc = 0.0;
                cdf.push(w.iter().map(|x| {
                    acc += x / total;
                    acc
                }).collect());
            }
        }
        Ok(ExpertRouter { kind: spec.kind, experts, k, layers, locality: spec.locality, cdf, trace: if spec.kind == RoutingKind::Trace { trace } else { None }, rng: RngStream::new(seed, stream), max_sampled: spec.max_sampled_tokens })
    }

    /// MoE layers.
    pub fn layers(&self) -> u32 {
        self.layers
    }

    /// Experts per token.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// How likely each expert of `layer` is to be chosen (relative weights).
    pub fn popularity(&self, layer: u32) -> Vec<f64> {
        match self.kind {
            RoutingKind::Uniform => vec![1.0; self.experts as usize],
            RoutingKind::Zipf => {
                let c = &self.cdf[layer as usize];
                (0..c.len()).map(|i| c[i] - if i == 0 { 0.0 } else { c[i - 1] }).collect()
            }
            RoutingKind::Trace => self.trace.as_ref().expect("trace routing has a trace").counts(layer, self.experts),
        }
    }

    fn draw_one(&mut self, layer: u32) -> u16 {
        if self.kind == RoutingKind::Zipf {
            let c = &self.cdf[layer as usize];
            let u = self.rng.next_f64();
            // The cdf is nondecreasing, so the entries <= u are a prefix: counting them is the
            // binary search's answer, without its unpredictable branches (few experts).
            let below = if c.len() <= 64 { c.iter().map(|&x| (x <= u) as usize).sum() } else { c.partition_point(|&x| x <= u) };
            return below.min(c.len() - 1) as u16;
        }
        self.rng.below(self.experts as u64) as u16
    }

    /// Writes the experts of token `pos` of request `req` in `layer` into `out` (k entries); `prev`
    /// holds the experts its previous token chose there, if it had one.
    pub fn route(&mut self, req: u32, pos: u64, layer: u32, prev: Option<&[u16]>, out: &mut [u16]) {
        if let Some(t) = &self.trace {
            out.copy_from_slice(t.lookup(req, pos, layer));
            return;
        }
        if let Some(p) = prev {
            if self.locality > 0.0 && self.rng.next_f64() < self.locality {
                out.copy_from_slice(p);
                return;
            }
        }
        let k = self.k as usize;
        let mut n = 0;
        let mut tries = 0;
        while n < k {
            let e = if tries < 64 * k { self.draw_one(layer) } else { (0..self.experts as u16).find(|e| !out[..n].contains(e)).expect("k <= experts") };
            tries += 1;
            if !out[..n].contains(&e) {
                out[n] = e;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: RoutingKind, locality: f64) -> RoutingSpec {
        RoutingSpec { kind, zipf_exponent: 1.2, locality, max_sampled_tokens: 256, ..RoutingSpec::default() }
    }

    #[test]
    fn draws_k_distinct_experts_in_range() {
        for kind in [RoutingKind::Uniform, RoutingKind::Zipf] {
            let mut r = ExpertRouter::new(&spec(kind, 0.0), 8, 2, 4, None, 7, "t").unwrap();
            let mut out = [0u16; 2];
            for i in 0..1000 {
                r.route(0, i, (i % 4) as u32, None, &mut out);
                assert!(out[0] != out[1] && out[0] < 8 && out[1] < 8);
            }
        }
    }

    #[test]
    fn zipf_frequencies_follow_the_law() {
        // Top-1 of 8 experts with s = 1.2: the most popular expert's share is 1 / H where
        // H = sum_r r^-1.2 over r = 1..8.
        let s = RoutingSpec { kind: RoutingKind::Zipf, zipf_exponent: 1.2, locality: 0.0, max_sampled_tokens: 1, ..RoutingSpec::default() };
        let mut r = ExpertRouter::new(&s, 8, 1, 1, None, 3, "t").unwrap();
        let h: f64 = (1..=8).map(|x| (x as f64).powf(-1.2)).sum();
        let pop = r.popularity(0);
        let top = (0..8).max_by(|&a, &b| pop[a].partial_cmp(&pop[b]).unwrap()).unwrap();
        assert!((pop[top] - 1.0 / h).abs() < 1e-12);
        let mut out = [0u16; 1];
        let n = 200_000;
        let hits = (0..n).filter(|&i| {
            r.route(0, i, 0, None, &mut out);
            out[0] as usize == top
        }).count();
        assert!((hits as f64 / n as f64 - 1.0 / h).abs() < 0.005);
    }

    #[test]
    fn locality_reuses_the_previous_tokens_experts() {
        let mut r = ExpertRouter::new(&spec(RoutingKind::Uniform, 0.75), 64, 2, 1, None, 11, "t").unwrap();
        let prev = [5u16, 9u16];
        let mut out = [0u16; 2];
        let n = 100_000;
        let same = (0..n).filter(|&i| {
            r.route(0, i, 0, Some(&prev), &mut out);
            out == prev
        }).count();
        // 0.75 by reuse, plus the tiny chance that a fresh draw repeats the pair in order.
        assert!((same as f64 / n as f64 - 0.75).abs() < 0.01);
    }

    #[test]
    fn trace_lookup_wraps_requests_and_tokens() {
        // Two requests: 2 tokens and 1 token; 2 layers, top-1.
        let t = Arc::new(RoutingTrace { layers: 2, k: 1, offsets: vec![0, 2, 3], experts: vec![0, 1, 2, 3, 4, 5] });
        t.validate(8, 2, 1).unwrap();
        assert_eq!(t.lookup(0, 0, 1), &[1]);
        assert_eq!(t.lookup(0, 1, 0), &[2]);
        assert_eq!(t.lookup(0, 2, 0), &[0]); // token 2 wraps to token 0
        assert_eq!(t.lookup(1, 0, 1), &[5]);
        assert_eq!(t.lookup(2, 1, 1), &[3]); // request 2 replays request 0
        assert!(t.validate(4, 2, 1).is_err()); // expert 5 out of range
        assert!(t.validate(8, 3, 1).is_err());
        let mut r = ExpertRouter::new(&RoutingSpec { kind: RoutingKind::Trace, ..spec(RoutingKind::Trace, 0.0) }, 8, 1, 2, Some(t), 1, "t").unwrap();
        let mut out = [0u16; 1];
        r.route(1, 0, 0, None, &mut out);
        assert_eq!(out, [4]);
        assert!(ExpertRouter::new(&spec(RoutingKind::Trace, 0.0), 8, 1, 2, None, 1, "t").is_err());
    }
}
