//! What a pool's mixture-of-experts settings say: where the experts live, how tokens are routed,
//! which experts stay cached in HBM, what is prefetched, and how tokens are grouped.

use crate::error::{Error, Result};
use crate::offload::FlashSpec;
use serde::{Deserialize, Serialize};

/// Where the routed experts' weights live when they are not cached in HBM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertTier {
    /// All experts resident in HBM: nothing is fetched (routing still sets the work per GPU).
    #[default]
    Hbm,
    /// Host DRAM: misses are copied over the host link (PCIe or NVLink-C2C).
    Dram,
    /// NVMe flash: misses are read from the drive, then copied over the host link.
    Flash,
}

/// How tokens choose their experts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingKind {
    /// Every expert equally likely.
    #[default]
    Uniform,
    /// Zipf-skewed popularity, with its own ranking of the experts in every layer.
    Zipf,
    /// Replay of a recorded routing trace (per token, per layer, expert ids).
    Trace,
}

/// How an iteration's routing is drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutingSampling {
    /// Every token's experts, layer by layer (prefill chunks sampled up to `max_sampled_tokens`).
    #[default]
    PerToken,
    /// Per layer and iteration, which experts the iteration's tokens activate and their expected
    /// load, drawn at once (uniform or Zipf routing without locality; see `aggregate.rs`).
    PerIteration,
}

/// The routing model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSpec {
    /// Which distribution.
    #[serde(default)]
    pub kind: RoutingKind,
    /// Zipf exponent s: the expert of rank r is chosen with weight 1 / r^s.
    #[serde(default = "one")]
    pub zipf_exponent: f64,
    /// Temporal locality: probability that a token reuses, in a layer, the experts its request's
    /// previous token chose there (otherwise it draws afresh).
    #[serde(default)]
    pub locality: f64,
    /// Tokens of a prefill chunk drawn one by one; longer chunks draw this many and weight them.
    #[serde(default = "default_sampled")]
    pub max_sampled_tokens: u32,
    /// Per-token draws, or per-iteration aggregates.
    #[serde(default)]
    pub sampling: RoutingSampling,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        RoutingSpec { kind: RoutingKind::Uniform, zipf_exponent: 1.0, locality: 0.0, max_sampled_tokens: default_sampled(), sampling: RoutingSampling::PerToken }
    }
}

/// Which cached experts make way for a fetched one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CachePolicy {
    /// Least recently used.
    #[default]
    Lru,
    /// Least frequently used (counts every access since the start; ties go to the least recent).
    Lfu,
    /// A fixed hot set: the most popular experts of each layer, never evicted.
    Static,
    /// A policy object plugged in by the caller (a Python `ExpertCachePolicy`); refused without one.
    Policy,
}

/// The HBM expert cache of each MoE layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Eviction policy.
    #[serde(default)]
    pub policy: CachePolicy,
    /// Experts of each layer kept in HBM (over the whole instance; 0: every use is fetched).
    #[serde(default)]
    pub experts_per_layer: u32,
}

/// Prefetching the experts a predictor names, `lead_layers` layers before they run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchSpec {
    /// Fraction of the experts a layer uses that the predictor names (the rest of its guesses are
    /// wrong experts, fetched for nothing).
    pub accuracy: f64,
    /// How many layers ahead the prediction is made (1: Pre-gated MoE's next-layer gate).
    #[serde(default = "one_u32")]
    pub lead_layers: u32,
}

/// Token grouping (ExpertFlow): when more requests decode than one iteration takes, pick those
/// whose experts overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupingSpec {
    /// Decoding requests per iteration.
    pub batch: u32,
    /// Choose by expert affinity (true) or by how long each request has waited (false: round robin).
    #[serde(default = "yes")]
    pub affinity: bool,
}

/// A pool's mixture-of-experts serving settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertConfig {
    /// Where uncached experts live.
    #[serde(default)]
    pub placement: ExpertTier,
    /// How tokens pick experts.
    #[serde(default)]
    pub routing: RoutingSpec,
    /// The HBM cache of offloaded experts.
    #[serde(default)]
    pub cache: CacheSpec,
    /// Prefetching from a routing predictor.
    #[serde(default)]
    pub prefetch: Option<PrefetchSpec>,
    /// Token grouping across requests.
    #[serde(default)]
    pub grouping: Option<GroupingSpec>,
    /// Expert buffers per layer in flight on each GPU (fetched experts wait there for their layer);
    /// default: a layer's experts on the GPU, times (1 + lead_layers) with prefetch.
    #[serde(default)]
    pub staging_experts: Option<u32>,
    /// The drive, for the flash tier.
    #[serde(default)]
    pub flash: Option<FlashSpec>,
    /// Reads in flight on the drive.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Size of one read from flash, KiB.
    #[serde(default = "default_chunk_kb")]
    pub read_chunk_kb: f64,
    /// Capacity of the DRAM or flash tier available to one GPU, GB (none: unlimited).
    #[serde(default)]
    pub capacity_gb: Option<f64>,
}

fn one() -> f64 {
    1.0
}

fn one_u32() -> u32 {
    1
}

fn yes() -> bool {
    true
}

fn default_sampled() -> u32 {
    256
}

fn default_queue_depth() -> u32 {
    32
}

fn default_chunk_kb() -> f64 {
    1024.0
}

impl ExpertConfig {
    /// All experts in HBM with uniform routing.
    pub fn resident() -> Self {
        ExpertConfig {
            placement: ExpertTier::Hbm,
            routing: RoutingSpec::default(),
            cache: CacheSpec::default(),
            prefetch: None,
            grouping: None,
            staging_experts: None,
            flash: None,
            queue_depth: default_queue_depth(),
            read_chunk_kb: default_chunk_kb(),
            capacity_gb: None,
        }
    }

    /// Checks every setting against a model of `experts` routed experts per layer, `k` per token.
    pub fn validate(&self, experts: u32, k: u32) -> Result<()> {
        if experts == 0 {
            return Err(Error::config("experts", "expert settings need a mixture-of-experts model"));
        }
        let r = &self.routing;
        if !(r.zipf_exponent >= 0.0 && r.zipf_exponent.is_finite()) {
            return Err(Error::config("experts.routing.zipf_exponent", format!("must be a finite number >= 0, got {}", r.zipf_exponent)));
        }
        if !(0.0..=1.0).contains(&r.locality) {
            return Err(Error::config("experts.routing.locality", format!("must be in [0, 1], got {}", r.locality)));
        }
        if r.max_sampled_tokens == 0 {
            return Err(Error::config("experts.routing.max_sampled_tokens", "must be at least 1"));
        }
        if r.sampling == RoutingSampling::PerIteration {
            if r.kind == RoutingKind::Trace {
                return Err(Error::config("experts.routing.sampling", "per_iteration draws from the uniform or zipf routing model; trace routing replays each token's recorded experts, use per_token"));
            }
            if r.locality > 0.0 {
                return Err(Error::config("experts.routing.sampling", format!("per_iteration keeps no per-request memory, so it cannot model locality ({}); set locality to 0 or use per_token", r.locality)));
            }
            if self.grouping.as_ref().is_some_and(|g| g.affinity) {
                return Err(Error::config("experts.routing.sampling", "per_iteration keeps no per-request experts, which token grouping by affinity compares; use grouping.affinity false or per_token"));
            }
        }
        if k == 0 || k > experts {
            return Err(Error::config("experts", format!("experts_per_token {k} must be between 1 and the {experts} experts")));
        }
        if self.cache.experts_per_layer > experts {
            return Err(Error::config("experts.cache.experts_per_layer", format!("must be at most the model's {experts} experts per layer, got {}", self.cache.experts_per_layer)));
        }
        if let Some(p) = &self.prefetch {
            if !(0.0..=1.0).contains(&p.accuracy) {
                return Err(Error::config("experts.prefetch.accuracy", format!("must be in [0, 1], got {}", p.accuracy)));
            }
            if p.lead_layers == 0 {
                return Err(Error::config("experts.prefetch.lead_layers", "must be at least 1"));
            }
        }
        if let Some(g) = &self.grouping {
            if g.batch == 0 {
                return Err(Error::config("experts.grouping.batch", "must be at least 1"));
            }
        }
        if self.placement == ExpertTier::Hbm && (self.prefetch.is_some() || self.cache.experts_per_layer > 0) {
            return Err(Error::config("experts.placement", "an expert cache or prefetching needs offloaded experts: placement dram or flash"));
        }
        if self.placement == ExpertTier::Hbm {
            for (field, set) in [("staging_experts", self.staging_experts.is_some()), ("capacity_gb", self.capacity_gb.is_some()), ("storage", self.flash.is_some())] {
                if set {
                    return Err(Error::config(format!("experts.{field}"), "applies to offloaded experts (placement dram or flash); with placement hbm it would be ignored"));
                }
            }
        }
        if self.staging_experts == Some(0) {
            return Err(Error::config("experts.staging_experts", "must be at least 1: a fetched expert lands in a staging buffer before it runs"));
        }
        crate::offload::validate_capacity("experts", self.capacity_gb)?;
        if self.placement == ExpertTier::Flash {
            crate::offload::validate_drive("experts", self.flash.as_ref(), self.queue_depth, self.read_chunk_bytes())?;
        }
        Ok(())
    }

    /// Size of one read from flash, bytes.
    pub fn read_chunk_bytes(&self) -> u64 {
        crate::offload::kib_to_bytes(self.read_chunk_kb)
    }

    /// Capacity of the DRAM or flash tier available to one GPU, bytes (`u64::MAX`: unlimited).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_gb.map_or(u64::MAX, crate::offload::gb_to_bytes)
    }

    /// Whether experts are fetched from outside HBM.
    pub fn offloaded(&self) -> bool {
        self.placement != ExpertTier::Hbm
    }
}
