//! One instance's experts at run time: the state (router, predictor, caches, the last routing of
//! each request) and the routing of each iteration's tokens into per-layer expert counts.
//!
//! The per-layer timeline that turns misses into stalls is in `timeline.rs`, token grouping in
//! `grouping.rs`.

use super::aggregate::IterationRouting;
use super::cache_policy::{BuiltinExpertCaches, ExpertCachePolicy, ExpertCacheSite, GpuExpertCaches};
use super::config::{CachePolicy, ExpertConfig, ExpertTier, RoutingSampling};
use super::residency::ExpertResidency;
use super::routing::{ExpertRouter, RoutingTrace};
use super::stats::ExpertStats;
use super::timeline::TimelineScratch;
use crate::cost::CostModel;
use crate::error::{Error, Result};
use crate::rng::RngStream;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

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

/// Hashes a request index by one multiplication (the per-token routing memory is looked up per
/// token; SipHash cost more than the routing draw itself).
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestHasher(u64);

impl Hasher for RequestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, x: u32) {
        self.0 = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Per request: the experts its last token chose, layer by layer.
pub(super) type RoutingMemory = HashMap<u32, Vec<u16>, BuildHasherDefault<RequestHasher>>;

/// An instance's experts at run time.
pub struct ExpertRuntime {
    /// The pool's expert settings.
    pub(super) cfg: ExpertConfig,
    /// Experts per MoE layer (the whole model's).
    pub(super) experts: u32,
    /// Experts each token chooses per layer.
    pub(super) k: u32,
    /// MoE layers.
    pub(super) layers: u32,
    /// GPUs the experts are spread over (expert parallelism).
    pub(super) ranks: u32,
    /// Draws each token's experts.
    pub(super) router: ExpertRouter,
    /// The prefetch predictor's random stream.
    pub(super) predictor: RngStream,
    /// Per GPU: the HBM expert caches of every layer (none when the experts are all in HBM).
    pub(super) caches: Vec<GpuExpertCaches>,
    /// Per request: the experts its last token chose, layer by layer.
    pub(super) last: RoutingMemory,
    /// Per-iteration routing (`sampling: per_iteration`).
    pub(super) aggregate: Option<IterationRouting>,
    /// Where one GPU's experts live.
    pub(super) residency: ExpertResidency,
    /// Bytes per second of one GPU's fetch path (host link, or the drive if slower).
    pub(super) link_bandwidth: f64,
    /// Seconds before a fetch's first byte.
    pub(super) link_latency: f64,
    /// This iteration's token-expert pairs, per layer and expert (weighted for sampled chunks).
    pub(super) counts: Vec<f64>,
    /// This iteration's prefetched experts, per layer and expert: when each arrives (-1: none).
    pub(super) staged: Vec<f64>,
    /// One token's experts, layer by layer.
    pub(super) scratch: Vec<u16>,
    /// Working buffers of the per-layer timeline, kept across iterations.
    pub(super) work: TimelineScratch,
    /// Counters.
    pub stats: ExpertStats,
    /// The first error an expert cache policy met.
    pub(super) error: Option<Error>,
}

/// Builds the expert cache policy of one GPU of the instance (a user's own, in place of the
/// configured built-in one).
pub type PluggedCaches<'a> = dyn Fn(ExpertCacheSite) -> Result<Box<dyn ExpertCachePolicy>> + 'a;

impl ExpertRuntime {
    /// The runtime of `cfg` on `cost`'s instance; `stream` names its random streams. With offloaded
    /// experts, `plugged` (when given) builds each GPU's expert cache policy in place of the
    /// configured built-in one.
    pub fn new(cfg: &ExpertConfig, cost: &CostModel, trace: Option<Arc<RoutingTrace>>, seed: u64, stream: &str, plugged: Option<&PluggedCaches>) -> Result<Self> {
        let m = cost.model();
        cfg.validate(m.num_experts, m.experts_per_token)?;
        if m.moe_layers() == 0 {
            return Err(Error::config("experts", format!("{} has no MoE layer (first_dense_layers and moe_layer_interval leave every layer dense): the expert settings would be ignored", m.name)));
        }
        if cfg.offloaded() && cost.pp() > 1 {
            return Err(Error::config("experts.placement", "offloaded experts with pipeline parallelism are not modelled; use pp = 1"));
        }
        if cfg.offloaded() && cost.gpu().host_link_bandwidth <= 0.0 {
            return Err(Error::config("experts.placement", format!("offloaded experts need the GPU's host_link_bandwidth, which {} does not set", cost.gpu().name)));
        }
        let layers = m.moe_layers();
        if let Some(p) = cfg.prefetch.as_ref().filter(|p| p.lead_layers >= layers) {
            // A prediction that many layers ahead never lands within an iteration, while its
            // staging buffers (1 + lead_layers layers of experts) still take HBM.
            return Err(Error::config(
                "experts.prefetch.lead_layers",
                format!("must be below {}'s {layers} MoE layers (a prefetch {} layers ahead never lands within an iteration), got {}", m.name, p.lead_layers, p.lead_layers),
            ));
        }
        let router = ExpertRouter::new(&cfg.routing, m.num_experts, m.experts_per_token, layers, trace, seed, &format!("{stream}.routing"))?;
        let aggregate = (cfg.routing.sampling == RoutingSampling::PerIteration).then(|| IterationRouting::new(&router, m.num_experts, seed, &format!("{stream}.routing.aggregate")));
        let residency = ExpertResidency::new(cfg, cost);
        let ranks = cost.ep();
        let caches = if cfg.offloaded() { Self::caches(cfg, &residency, ranks, layers, &router, plugged)? } else { Vec::new() };
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
            last: RoutingMemory::default(),
            aggregate,
            residency,
            link_bandwidth: bw,
            link_latency: lat,
            counts: vec![0.0; (layers * m.num_experts) as usize],
            staged: vec![-1.0; (layers * m.num_experts) as usize],
            scratch: vec![0; (layers * m.experts_per_token) as usize],
            work: TimelineScratch::default(),
            stats,
            error: None,
            cfg: cfg.clone(),
        })
    }

    /// The expert caches of each GPU: built by `plugged`, else the configured built-in policy.
    fn caches(cfg: &ExpertConfig, residency: &ExpertResidency, ranks: u32, layers: u32, router: &ExpertRouter, plugged: Option<&PluggedCaches>) -> Result<Vec<GpuExpertCaches>> {
        let per_gpu = residency.experts_per_gpu as usize;
        (0..ranks)
            .map(|rank| {
                let site = ExpertCacheSite { rank, layers, experts: residency.experts_per_gpu, capacity: residency.cached_per_gpu };
                match (plugged, cfg.cache.policy) {
                    (Some(make), _) => make(site).map(GpuExpertCaches::Plugged),
                    (None, CachePolicy::Policy) => Err(Error::config("experts.cache.policy", "names a policy object (a Python ExpertCachePolicy), which fleetwise's Python front plugs in; none was given")),
                    (None, policy) => {
                        let r = rank as usize;
                        Ok(GpuExpertCaches::Builtin(BuiltinExpertCaches::new(policy, site, |l| router.popularity(l)[r * per_gpu..(r + 1) * per_gpu].to_vec())))
                    }
                }
            })
            .collect()
    }

    /// The first error an expert cache policy met (the simulation stops on it).
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
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
    pub(super) fn route(&mut self, spans: &[TokenSpan]) {
        if self.aggregate.is_some() {
            return self.route_aggregate(spans);
        }
        self.counts.iter_mut().for_each(|c| *c = 0.0);
        let (e, k, layers) = (self.experts as usize, self.k as usize, self.layers);
        let ExpertRuntime { router, last, scratch, counts, stats, .. } = self;
        for s in spans {
            let n = s.tokens.min(router.max_sampled);
            stats.tokens += s.tokens as u64;
            if n == 0 {
                continue;
            }
            let weight = s.tokens as f64 / n as f64;
            // One lookup per span: its tokens are one request's; an empty memory is a request
            // without a routed token yet (filled by its first token below).
            let mem = last.entry(s.req).or_default();
            for i in 0..n {
                let pos = s.start + i as u64 * s.tokens as u64 / n as u64;
                let has_prev = !mem.is_empty();
                for l in 0..layers {
                    let lo = l as usize * k;
                    let p = if has_prev { Some(&mem[lo..lo + k]) } else { None };
                    router.route(s.req, pos, l, p, &mut scratch[lo..lo + k]);
                    let row = &mut counts[l as usize * e..(l as usize + 1) * e];
                    for &x in &scratch[lo..lo + k] {
                        row[x as usize] += weight;
                    }
                }
                if has_prev {
                    mem.copy_from_slice(scratch);
                } else {
                    mem.extend_from_slice(scratch);
                }
            }
        }
    }
}
