//! One instance's experts at run time: routing each iteration's tokens, the per-layer timeline of
//! expert caches, fetches and prefetches, and token grouping.
//!
//! An iteration runs the MoE layers in order. Each layer first runs its non-expert operators
//! (attention, projections, router), then its experts as one fused grouped GEMM, which needs every
//! expert the layer's tokens chose on the GPU. A needed expert is a hit if cached in HBM, a
//! prefetch hit if a prefetch brought it, and a miss otherwise: the miss is fetched over the GPU's
//! link (host link, after the drive for flash) once the router has run, and the layer's experts
//! start when the last of them arrives. Fetches queue first-come first-served on the link.
//! With prefetching, when layer `l`'s router runs the predictor names the experts of layer
//! `l + lead` and the ones not cached are fetched behind `l`'s own misses, overlapping compute.
//! The layer's stall is how much later its experts finish than they would with every expert in HBM.

use super::cache::ExpertCache;
use super::config::{ExpertConfig, ExpertTier};
use super::routing::{ExpertRouter, RoutingTrace};
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::request::Request;
use crate::rng::RngStream;
use crate::time::Nanos;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Counters of an instance's experts over a run (bytes per GPU).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExpertStats {
    /// Expert lookups: for every iteration, MoE layer and GPU, each expert its tokens chose.
    pub lookups: u64,
    /// Lookups found cached in HBM.
    pub hits: u64,
    /// Lookups served by an earlier prefetch.
    pub prefetch_hits: u64,
    /// Lookups fetched on demand.
    pub misses: u64,
    /// Bytes fetched on demand.
    pub demand_bytes: u64,
    /// Bytes prefetched.
    pub prefetch_bytes: u64,
    /// Prefetched bytes the layer did not use.
    pub wasted_prefetch_bytes: u64,
    /// Time iterations stalled on expert fetches.
    pub stall_ns: u64,
    /// Experts activated: distinct experts per MoE layer, summed over layers and iterations.
    pub activated: u64,
    /// Iterations that ran the MoE layers.
    pub iterations: u64,
    /// Tokens through the MoE layers.
    pub tokens: u64,
    /// Sum over iterations and layers of the busiest GPU's token-expert pairs over the mean
    /// (expert-parallel load imbalance; 1 = balanced).
    pub imbalance_sum: f64,
    /// Layers behind `imbalance_sum`.
    pub imbalance_layers: u64,
    /// Expert weight bytes each GPU keeps in HBM (cache and staging buffers, or all).
    pub hbm_bytes: u64,
    /// Expert weight bytes each GPU does not keep in HBM.
    pub hbm_saved_bytes: u64,
}

/// What one iteration's MoE layers cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExpertIteration {
    /// The whole iteration, seconds (non-layer operators, every layer, stalls).
    pub seconds: f64,
    /// Seconds of it spent waiting for experts.
    pub stall_seconds: f64,
    /// Bytes fetched per GPU (on demand and prefetched).
    pub fetch_bytes: u64,
}

/// One iteration's share of a request: `tokens` tokens from position `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSpan {
    /// Request index.
    pub req: u32,
    /// Position of its first token in the request (prompt then output).
    pub start: u64,
    /// Tokens.
    pub tokens: u32,
}

/// How the experts of one GPU are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertResidency {
    /// Bytes of one expert's weights on one GPU.
    pub expert_bytes: f64,
    /// Experts of one layer on one GPU.
    pub experts_per_gpu: u32,
    /// Experts of one layer cached on one GPU.
    pub cached_per_gpu: u32,
    /// Staging buffers (experts) on one GPU.
    pub staging: u32,
    /// MoE layers.
    pub layers: u32,
}

impl ExpertResidency {
    /// The layout `cfg` gives `cost`'s model.
    pub fn new(cfg: &ExpertConfig, cost: &CostModel) -> Self {
        let m = cost.model();
        let ep = cost.ep();
        let experts_per_gpu = m.num_experts / ep;
        let lead = cfg.prefetch.as_ref().map_or(0, |p| p.lead_layers);
        ExpertResidency {
            expert_bytes: cost.expert_bytes_per_gpu(),
            experts_per_gpu,
            cached_per_gpu: cfg.cache.experts_per_layer.div_ceil(ep).min(experts_per_gpu),
            staging: cfg.staging_experts.unwrap_or(experts_per_gpu * (1 + lead)),
            layers: m.moe_layers(),
        }
    }

    /// Bytes of all routed experts on one GPU.
    pub fn all_bytes(&self) -> u64 {
        (self.expert_bytes * (self.layers * self.experts_per_gpu) as f64).round() as u64
    }

    /// Bytes of routed experts one GPU keeps in HBM when they are offloaded.
    pub fn resident_bytes(&self) -> u64 {
        let slots = (self.layers * self.cached_per_gpu + self.staging) as f64;
        ((self.expert_bytes * slots).round() as u64).min(self.all_bytes())
    }
}

/// An instance's experts at run time.
pub struct ExpertRuntime {
    cfg: ExpertConfig,
    experts: u32,
    k: u32,
    layers: u32,
    ranks: u32,
    router: ExpertRouter,
    predictor: RngStream,
    caches: Vec<ExpertCache>,
    last: HashMap<u32, Vec<u16>>,
    residency: ExpertResidency,
    link_bandwidth: f64,
    link_latency: f64,
    counts: Vec<f64>,
    staged: Vec<f64>,
    scratch: Vec<u16>,
    /// Counters.
    pub stats: ExpertStats,
}

impl ExpertRuntime {
    /// The runtime of `cfg` on `cost`'s instance; `stream` names its random streams.
    pub fn new(cfg: &ExpertConfig, cost: &CostModel, trace: Option<Arc<RoutingTrace>>, seed: u64, stream: &str) -> Result<Self> {
        let m = cost.model();
        cfg.validate(m.num_experts, m.experts_per_token)?;
        if cfg.offloaded() && cost.pp() > 1 {
            return Err(Error::config("experts.placement", "offloaded experts with pipeline parallelism are not modelled; use pp = 1"));
        }
        if cfg.offloaded() && cost.gpu().host_link_bandwidth <= 0.0 {
            return Err(Error::config("experts.placement", format!("offloaded experts need the GPU's host_link_bandwidth, which {} does not set", cost.gpu().name)));
        }
        let layers = m.moe_layers();
        let router = ExpertRouter::new(&cfg.routing, m.num_experts, m.experts_per_token, layers, trace, seed, &format!("{stream}.routing"))?;
        let residency = ExpertResidency::new(cfg, cost);
        let ranks = cost.ep();
        let per_gpu = residency.experts_per_gpu as usize;
        let mut caches = Vec::with_capacity((layers * ranks) as usize);
        for l in 0..layers {
            let pop = router.popularity(l);
            for r in 0..ranks as usize {
                let local = &pop[r * per_gpu..(r + 1) * per_gpu];
                caches.push(ExpertCache::new(cfg.cache.policy, residency.experts_per_gpu, residency.cached_per_gpu, local));
            }
        }
        let gpu = cost.gpu();
        let (mut bw, mut lat) = (gpu.host_link_bandwidth, gpu.host_link_latency);
        if cfg.placement == ExpertTier::Flash {
            let f = cfg.flash.as_ref().expect("validated: flash has a drive");
            // Drive reads and host-link copies pipeline: the slower stage sets the pace.
            bw = bw.min(f.throughput(cfg.queue_depth, cfg.read_chunk_bytes()));
            lat = lat.max(f.latency);
        }
        let mut stats = ExpertStats::default();
        if cfg.offloaded() {
            let stored = residency.all_bytes();
            if stored > cfg.capacity_bytes() {
                return Err(Error::Capacity { what: format!("{} experts offloaded to {:?} per GPU", m.name, cfg.placement), needed_bytes: stored, available_bytes: cfg.capacity_bytes() });
            }
            stats.hbm_bytes = residency.resident_bytes();
            stats.hbm_saved_bytes = stored - stats.hbm_bytes;
        } else {
            stats.hbm_bytes = residency.all_bytes();
        }
        Ok(ExpertRuntime {
            experts: m.num_experts,
            k: m.experts_per_token,
            layers,
            ranks,
            router,
            predictor: RngStream::new(seed, &format!("{stream}.predictor")),
            caches,
            last: HashMap::new(),
            residency,
            link_bandwidth: bw,
            link_latency: lat,
            counts: vec![0.0; (layers * m.num_experts) as usize],
            staged: vec![-1.0; (layers * m.num_experts) as usize],
            scratch: vec![0; (layers * m.experts_per_token) as usize],
            stats,
            cfg: cfg.clone(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ExpertConfig {
        &self.cfg
    }

    /// Where the experts of one GPU live.
    pub fn residency(&self) -> &ExpertResidency {
        &self.residency
    }

    /// Seconds to fetch one expert to one GPU (link latency plus bytes over the link or drive).
    pub fn fetch_seconds(&self) -> f64 {
        self.link_latency + self.residency.expert_bytes / self.link_bandwidth
    }

    /// Drops what the runtime remembers of a finished request.
    pub fn forget(&mut self, req: u32) {
        self.last.remove(&req);
    }

    /// Draws the routing of every token of `spans` into the per-layer expert counts.
    fn route(&mut self, spans: &[TokenSpan]) {
        self.counts.iter_mut().for_each(|c| *c = 0.0);
        let (e, k, layers) = (self.experts as usize, self.k as usize, self.layers);
        for s in spans {
            let n = s.tokens.min(self.router.max_sampled);
            let weight = s.tokens as f64 / n as f64;
            self.stats.tokens += s.tokens as u64;
            for i in 0..n {
                let pos = s.start + i as u64 * s.tokens as u64 / n as u64;
                let prev = self.last.get(&s.req);
                for l in 0..layers {
                    let lo = l as usize * k;
                    let p = prev.map(|v| &v[lo..lo + k]);
                    self.router.route(s.req, pos, l, p, &mut self.scratch[lo..lo + k]);
                    for &x in &self.scratch[lo..lo + k] {
                        self.counts[l as usize * e + x as usize] += weight;
                    }
                }
                match self.last.get_mut(&s.req) {
                    Some(v) => v.copy_from_slice(&self.scratch),
                    None => {
                        self.last.insert(s.req, self.scratch.clone());
                    }
                }
            }
        }
    }

    /// Runs one iteration over `spans`: `fixed` seconds of non-layer work plus, per MoE layer,
    /// `base` seconds of non-expert work and the experts `cost` charges for the routed tokens.
    pub fn iteration(&mut self, spans: &[TokenSpan], cost: &CostModel, base: f64, fixed: f64) -> ExpertIteration {
        self.route(spans);
        self.stats.iterations += 1;
        let (e, per_gpu) = (self.experts as usize, self.residency.experts_per_gpu as usize);
        let offloaded = self.cfg.offloaded();
        let fetch = self.fetch_seconds();
        let eb = self.residency.expert_bytes;
        let lead = self.cfg.prefetch.as_ref().map(|p| (p.lead_layers, p.accuracy));
        let mut link_free = vec![0.0f64; self.ranks as usize];
        let (mut t, mut stall) = (0.0f64, 0.0f64);
        let (mut demand, mut prefetched, mut wasted) = (0.0f64, 0.0f64, 0.0f64);
        self.staged.iter_mut().for_each(|s| *s = -1.0);
        for l in 0..self.layers as usize {
            let router_t = t + base;
            let (mut end, mut ideal) = (router_t, router_t);
            let mut rank_pairs = Vec::with_capacity(self.ranks as usize);
            for (r, free) in link_free.iter_mut().enumerate() {
                let lo = l * e + r * per_gpu;
                let counts = &self.counts[lo..lo + per_gpu];
                let pairs: f64 = counts.iter().sum();
                let touched = counts.iter().filter(|&&c| c > 0.0).count();
                rank_pairs.push(pairs);
                self.stats.activated += touched as u64;
                let compute = if touched > 0 { cost.expert_seconds(pairs, touched as f64) } else { 0.0 };
                let mut ready = router_t;
                if offloaded {
                    let cache = &mut self.caches[l * self.ranks as usize + r];
                    // Cached experts are looked up first, so that admitting this layer's fetched
                    // experts cannot evict one the layer still needs.
                    let hit: Vec<bool> = counts.iter().enumerate().map(|(i, &c)| c > 0.0 && cache.contains(i as u16)).collect();
                    for i in (0..per_gpu).filter(|&i| hit[i]) {
                        self.stats.lookups += 1;
                        self.stats.hits += 1;
                        cache.access(i as u16);
                    }
                    for (i, &c) in counts.iter().enumerate() {
                        let staged = self.staged[lo + i];
                        if c == 0.0 {
                            if staged >= 0.0 {
                                wasted += eb;
                            }
                            continue;
                        }
                        if hit[i] {
                            continue;
                        }
                        self.stats.lookups += 1;
                        cache.access(i as u16);
                        if staged >= 0.0 {
                            self.stats.prefetch_hits += 1;
                            ready = ready.max(staged);
                        } else {
                            self.stats.misses += 1;
                            *free = free.max(router_t) + fetch;
                            ready = ready.max(*free);
                            demand += eb;
                        }
                        cache.admit(i as u16);
                    }
                }
                end = end.max(ready + compute);
                ideal = ideal.max(router_t + compute);
            }
            if self.ranks > 1 {
                let mean = rank_pairs.iter().sum::<f64>() / self.ranks as f64;
                if mean > 0.0 {
                    self.stats.imbalance_sum += rank_pairs.iter().cloned().fold(0.0, f64::max) / mean;
                    self.stats.imbalance_layers += 1;
                }
            }
            if let (true, Some((d, accuracy))) = (offloaded, lead) {
                let target = l + d as usize;
                if target < self.layers as usize {
                    prefetched += self.prefetch(target, router_t, accuracy, fetch, &mut link_free);
                }
            }
            stall += end - ideal;
            t = end;
        }
        let bytes = demand + prefetched;
        self.stats.demand_bytes += demand.round() as u64;
        self.stats.prefetch_bytes += prefetched.round() as u64;
        self.stats.wasted_prefetch_bytes += wasted.round() as u64;
        ExpertIteration { seconds: fixed + t, stall_seconds: stall, fetch_bytes: bytes.round() as u64 }
    }

    /// Issues at `now` the prefetches of layer `target`: the predictor names each expert the layer
    /// will use with probability `accuracy`, otherwise a wrong one of the same GPU. Returns bytes.
    fn prefetch(&mut self, target: usize, now: f64, accuracy: f64, fetch: f64, link_free: &mut [f64]) -> f64 {
        let (e, per_gpu) = (self.experts as usize, self.residency.experts_per_gpu as usize);
        let mut bytes = 0.0;
        for (r, free) in link_free.iter_mut().enumerate() {
            let lo = target * e + r * per_gpu;
            let mut named: Vec<usize> = Vec::new();
            for i in 0..per_gpu {
                if self.counts[lo + i] == 0.0 {
                    continue;
                }
                if self.predictor.next_f64() < accuracy {
                    named.push(i);
                    continue;
                }
                let wrong: Vec<usize> = (0..per_gpu).filter(|&j| self.counts[lo + j] == 0.0 && !named.contains(&j)).collect();
                if !wrong.is_empty() {
                    named.push(wrong[self.predictor.below(wrong.len() as u64) as usize]);
                }
            }
            let cache = &self.caches[target * self.ranks as usize + r];
            for i in named {
                if cache.contains(i as u16) || self.staged[lo + i] >= 0.0 {
                    continue;
                }
                *free = free.max(now) + fetch;
                self.staged[lo + i] = *free;
                bytes += self.residency.expert_bytes;
            }
        }
        bytes
    }

    /// Token grouping: of the `running` requests, which decoding ones sit out this iteration so
    /// that at most `batch` decode. With affinity, the request that has waited longest since its
    /// last token seeds the group, and requests are added one by one, each time the one whose last
    /// token's experts add the fewest experts neither in the group's set nor cached (ties: the
    /// longest waiting); without affinity, the `batch` longest waiting decode.
    pub fn park(&self, running: &[u32], reqs: &[Request]) -> Vec<u32> {
        let Some(g) = &self.cfg.grouping else { return Vec::new() };
        let decoding: Vec<u32> = running.iter().copied().filter(|&r| reqs[r as usize].is_decoding()).collect();
        let batch = g.batch as usize;
        if decoding.len() <= batch {
            return Vec::new();
        }
        let wait_key = |r: u32| -> (Nanos, u32) { (reqs[r as usize].last_token, r) };
        let mut chosen: Vec<u32> = Vec::with_capacity(batch);
        let mut left = decoding.clone();
        left.sort_by_key(|&r| wait_key(r));
        if !g.affinity {
            chosen.extend(left.iter().take(batch));
        } else {
            let (e, k) = (self.experts as usize, self.k as usize);
            let mut in_set = vec![false; self.layers as usize * e];
            chosen.push(left.remove(0));
            self.mark(chosen[0], &mut in_set);
            while chosen.len() < batch {
                let mut best = (usize::MAX, 0usize);
                for (i, &r) in left.iter().enumerate() {
                    let new = match self.last.get(&r) {
                        Some(v) => v.iter().enumerate().filter(|&(j, &x)| {
                            let l = j / k;
                            !in_set[l * e + x as usize] && !self.cached(l, x)
                        }).count(),
                        None => self.layers as usize * k,
                    };
                    if new < best.0 {
                        best = (new, i);
                    }
                }
                let r = left.remove(best.1);
                self.mark(r, &mut in_set);
                chosen.push(r);
            }
        }
        decoding.into_iter().filter(|r| !chosen.contains(r)).collect()
    }

    fn mark(&self, req: u32, in_set: &mut [bool]) {
        if let Some(v) = self.last.get(&req) {
            let (e, k) = (self.experts as usize, self.k as usize);
            for (j, &x) in v.iter().enumerate() {
                in_set[(j / k) * e + x as usize] = true;
            }
        }
    }

    fn cached(&self, layer: usize, expert: u16) -> bool {
        if !self.cfg.offloaded() {
            return false;
        }
        let per_gpu = self.residency.experts_per_gpu as usize;
        let (r, i) = (expert as usize / per_gpu, expert as usize % per_gpu);
        self.caches[layer * self.ranks as usize + r].contains(i as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Efficiency;
    use crate::hardware::GpuSpec;
    use crate::model::ModelSpec;
    use crate::moe::config::{CachePolicy, CacheSpec, GroupingSpec, PrefetchSpec, RoutingKind, RoutingSpec};

    /// A small MoE: 4 layers of 4 experts, top-1, experts of 3 x 1024 x 2048 x 2 B = 12.58 MB.
    fn model() -> ModelSpec {
        ModelSpec {
            name: "tiny-moe".into(),
            num_layers: 4,
            hidden_size: 1024,
            num_heads: 8,
            num_kv_heads: 8,
            head_dim: 128,
            intermediate_size: 2048,
            vocab_size: 1000,
            max_position_embeddings: 4096,
            dtype_bytes: 2,
            num_experts: 4,
            experts_per_token: 1,
            moe_intermediate_size: 2048,
            ..Default::default()
        }
    }

    /// A GPU whose host link moves one expert in `fetch` seconds.
    fn cost(fetch: f64) -> CostModel {
        let eb = 3.0 * 1024.0 * 2048.0 * 2.0;
        let gpu = GpuSpec { name: "g".into(), peak_flops: 1e15, memory_bytes: 80_000_000_000, memory_bandwidth: 2e12, link_bandwidth: 1e11, link_latency: 0.0, nic_bandwidth: 0.0, nic_latency: 0.0, host_link_bandwidth: eb / fetch, host_link_latency: 0.0, tdp_watts: 0.0, idle_watts: 0.0, memory_bound_activity: 0.3, sm_count: 0 };
        let eff = Efficiency { gemm_compute: 1.0, attention_compute: 1.0, memory: 1.0, attention_memory: None, elementwise_memory: None, collective: 1.0, iteration_overhead: 0.0, layer_overhead: 0.0, attention_cta: None, gemm_ridge_exponent: None, prefill_pad_tokens: None, ..Default::default() };
        CostModel::build(&crate::cost::InstanceSpec::new(model(), gpu, eff, 1)).unwrap()
    }

    /// One request whose token t picks expert `(t + l) mod 4` in layer l (a new expert every layer).
    fn trace(tokens: u64) -> Arc<RoutingTrace> {
        let experts = (0..tokens).flat_map(|t| (0..4).map(move |l| ((t + l) % 4) as u16)).collect();
        Arc::new(RoutingTrace { layers: 4, k: 1, offsets: vec![0, tokens], experts })
    }

    fn config(cache: u32, prefetch: Option<f64>) -> ExpertConfig {
        ExpertConfig {
            placement: ExpertTier::Dram,
            routing: RoutingSpec { kind: RoutingKind::Trace, ..RoutingSpec::default() },
            cache: CacheSpec { policy: CachePolicy::Lru, experts_per_layer: cache },
            prefetch: prefetch.map(|accuracy| PrefetchSpec { accuracy, lead_layers: 1 }),
            ..ExpertConfig::resident()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    const DECODE: [TokenSpan; 1] = [TokenSpan { req: 0, start: 0, tokens: 1 }];

    #[test]
    fn on_demand_misses_stall_every_layer() {
        let (f, base) = (0.5e-3, 1e-3);
        let cm = cost(f);
        let c = cm.expert_seconds(1.0, 1.0);
        let mut rt = ExpertRuntime::new(&config(0, None), &cm, Some(trace(4)), 1, "t").unwrap();
        assert!(close(rt.fetch_seconds(), f));
        let x = rt.iteration(&DECODE, &cm, base, 2e-3);
        // Every layer: router at +base, fetch f, experts c.
        assert!(close(x.seconds, 2e-3 + 4.0 * (base + f + c)));
        assert!(close(x.stall_seconds, 4.0 * f));
        assert_eq!((rt.stats.lookups, rt.stats.misses, rt.stats.hits), (4, 4, 0));
        assert_eq!(x.fetch_bytes, (4.0 * cm.expert_bytes_per_gpu()) as u64);
        assert_eq!(rt.stats.activated, 4);
    }

    #[test]
    fn pregated_prefetch_hides_fetches_shorter_than_a_layer() {
        // f < base + c: the next layer's expert arrives while this layer computes; only layer 0 stalls.
        let (f, base) = (0.5e-3, 1e-3);
        let cm = cost(f);
        let c = cm.expert_seconds(1.0, 1.0);
        let mut rt = ExpertRuntime::new(&config(0, Some(1.0)), &cm, Some(trace(4)), 1, "t").unwrap();
        let x = rt.iteration(&DECODE, &cm, base, 0.0);
        assert!(close(x.seconds, 4.0 * (base + c) + f));
        assert!(close(x.stall_seconds, f));
        assert_eq!((rt.stats.misses, rt.stats.prefetch_hits), (1, 3));
        assert_eq!(rt.stats.wasted_prefetch_bytes, 0);
    }

    #[test]
    fn pregated_prefetch_is_link_bound_when_fetches_outlast_layers() {
        // f > base + c: the link runs back to back from layer 0's router on; the iteration ends one
        // expert compute after the last fetch: base + 4 f + c.
        let (f, base) = (5e-3, 1e-3);
        let cm = cost(f);
        let c = cm.expert_seconds(1.0, 1.0);
        let mut rt = ExpertRuntime::new(&config(0, Some(1.0)), &cm, Some(trace(4)), 1, "t").unwrap();
        let x = rt.iteration(&DECODE, &cm, base, 0.0);
        assert!(close(x.seconds, base + 4.0 * f + c));
        assert!(close(x.stall_seconds, x.seconds - 4.0 * (base + c)));
        // On demand it is 4 (base + f + c): prefetch saves 3 (base + c).
        let mut od = ExpertRuntime::new(&config(0, None), &cm, Some(trace(4)), 1, "t").unwrap();
        assert!(close(od.iteration(&DECODE, &cm, base, 0.0).seconds - x.seconds, 3.0 * (base + c)));
    }

    #[test]
    fn wrong_predictions_waste_bytes_and_save_nothing() {
        let (f, base) = (0.5e-3, 1e-3);
        let cm = cost(f);
        let c = cm.expert_seconds(1.0, 1.0);
        let mut rt = ExpertRuntime::new(&config(0, Some(0.0)), &cm, Some(trace(4)), 1, "t").unwrap();
        let x = rt.iteration(&DECODE, &cm, base, 0.0);
        // Each wrong prefetch finishes before the next layer's router, so demand fetches never queue.
        assert!(close(x.seconds, 4.0 * (base + f + c)));
        let eb = cm.expert_bytes_per_gpu();
        assert_eq!(rt.stats.wasted_prefetch_bytes, (3.0 * eb) as u64);
        assert_eq!(rt.stats.prefetch_bytes, (3.0 * eb) as u64);
        assert_eq!(rt.stats.misses, 4);
    }

    #[test]
    fn cached_experts_hit_on_the_next_token() {
        // Token t uses expert (t + l) mod 4 in layer l, so tokens 0-3 each bring a new expert into
        // every layer and tokens 4-7 find all of them cached (capacity 4 per layer).
        let cm = cost(1e-3);
        let mut rt = ExpertRuntime::new(&config(4, None), &cm, Some(trace(8)), 1, "t").unwrap();
        for t in 0..8 {
            rt.iteration(&[TokenSpan { req: 0, start: t, tokens: 1 }], &cm, 1e-3, 0.0);
        }
        // 32 lookups: the first 4 tokens miss in every layer (16), the next 4 hit (16).
        assert_eq!((rt.stats.lookups, rt.stats.misses, rt.stats.hits), (32, 16, 16));
        let x = rt.iteration(&[TokenSpan { req: 0, start: 8, tokens: 1 }], &cm, 1e-3, 0.0);
        assert_eq!((x.stall_seconds, x.fetch_bytes), (0.0, 0));
        // HBM: 4 layers x 4 cached + 4 staging buffers = all 16 experts: nothing saved.
        assert_eq!(rt.stats.hbm_saved_bytes, 0);
        let two = ExpertRuntime::new(&config(2, None), &cm, Some(trace(8)), 1, "t").unwrap();
        let eb = cm.expert_bytes_per_gpu();
        assert_eq!(two.stats.hbm_bytes, (eb * 12.0).round() as u64);
        assert_eq!(two.stats.hbm_saved_bytes, (eb * 16.0).round() as u64 - (eb * 12.0).round() as u64);
    }

    #[test]
    fn resident_experts_never_stall() {
        let cm = cost(1e-3);
        let mut rt = ExpertRuntime::new(&ExpertConfig { routing: RoutingSpec { kind: RoutingKind::Trace, ..RoutingSpec::default() }, ..ExpertConfig::resident() }, &cm, Some(trace(4)), 1, "t").unwrap();
        let c = cm.expert_seconds(1.0, 1.0);
        let x = rt.iteration(&DECODE, &cm, 1e-3, 0.0);
        assert!(close(x.seconds, 4.0 * (1e-3 + c)));
        assert_eq!((x.stall_seconds, x.fetch_bytes, rt.stats.lookups), (0.0, 0, 0));
    }

    #[test]
    fn unique_experts_of_a_long_prefill_match_the_uniform_expectation() {
        // 4 experts, top-1, uniform: 2 tokens touch 4 (1 - (3/4)^2) = 1.75 experts on average.
        let cm = cost(1e-3);
        let mut rt = ExpertRuntime::new(&ExpertConfig::resident(), &cm, None, 5, "t").unwrap();
        let n = 4000;
        for i in 0..n {
            rt.iteration(&[TokenSpan { req: i, start: 0, tokens: 2 }], &cm, 0.0, 0.0);
        }
        let per_layer = rt.stats.activated as f64 / (n as f64 * 4.0);
        assert!((per_layer - cm.model().expected_unique_experts(2.0)).abs() < 0.02, "{per_layer}");
    }

    #[test]
    fn grouping_picks_requests_that_share_experts() {
        let cm = cost(1e-3);
        let mut cfg = config(0, None);
        cfg.grouping = Some(GroupingSpec { batch: 2, affinity: true });
        // Requests 0..4: request r's token 0 uses expert (r mod 2) in every layer... built as a trace:
        // requests 0 and 2 use expert 0, requests 1 and 3 expert 1.
        let experts = (0..4u16).flat_map(|r| std::iter::repeat_n(r % 2, 4)).collect();
        let t = Arc::new(RoutingTrace { layers: 4, k: 1, offsets: vec![0, 1, 2, 3, 4], experts });
        let mut rt = ExpertRuntime::new(&cfg, &cm, Some(t), 1, "t").unwrap();
        let spans: Vec<TokenSpan> = (0..4).map(|r| TokenSpan { req: r, start: 0, tokens: 1 }).collect();
        rt.iteration(&spans, &cm, 0.0, 0.0);
        let mut reqs: Vec<Request> = (0..4).map(|_| Request::new(0, 10, 5)).collect();
        for (i, r) in reqs.iter_mut().enumerate() {
            r.computed = 10;
            r.generated = 1;
            r.last_token = [5, 1, 3, 2][i];
        }
        // Request 1 waited longest and seeds the group; request 3 shares its experts.
        let running = [0, 1, 2, 3];
        assert_eq!(rt.park(&running, &reqs), vec![0, 2]);
        // Now request 2 has waited longest: it seeds the group and request 0 shares its experts.
        reqs[2].last_token = 0;
        assert_eq!(rt.park(&running, &reqs), vec![1, 3]);
        // Without affinity the two longest waiting run: 2 and 1.
        cfg.grouping = Some(GroupingSpec { batch: 2, affinity: false });
        let rr = ExpertRuntime::new(&cfg, &cm, Some(trace(1)), 1, "t").unwrap();
        assert_eq!(rr.park(&running, &reqs), vec![0, 3]);
    }
}
