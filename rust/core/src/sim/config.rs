//! The run's configuration as the core reads it (Python sends it as JSON): pools, router,
//! seed, and the workload to replay.

use crate::calibration::Efficiency;
use crate::cost::{Quantization, SpeculativeConfig};
use crate::hardware::{GpuSpec, PimSpec};
use crate::instance::PipelineMode;
use crate::memory::MemoryConfig;
use crate::model::ModelSpec;
use crate::moe::{ExpertConfig, RoutingTrace};
use crate::offload::OffloadSpec;
use crate::router::RouterConfig;
use crate::scheduler::SchedulerConfig;
use crate::time::Nanos;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

use super::mixed_pool::MixedPoolConfig;
use super::Role;

/// A group of identical instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Number of instances.
    pub count: u32,
    /// GPU of every instance.
    pub gpu: GpuSpec,
    /// Model served.
    pub model: ModelSpec,
    /// How each instance spreads the model over GPUs.
    pub parallelism: Parallelism,
    /// Cost-model efficiency factors for this GPU.
    pub calibration: Efficiency,
    /// Memory settings.
    pub memory: MemoryConfig,
    /// Batch scheduler.
    pub scheduler: SchedulerConfig,
    /// Power cap per GPU, watts (none: the GPU's TDP).
    #[serde(default)]
    pub power_cap_watts: Option<f64>,
    /// A PIM device attached to each GPU's memory.
    #[serde(default)]
    pub pim: Option<PimSpec>,
    /// Weights kept in host DRAM or flash and streamed in.
    #[serde(default)]
    pub offload: Option<OffloadSpec>,
    /// Quantization of weights, GEMM activations and the KV cache (default none).
    #[serde(default)]
    pub quantization: Quantization,
    /// Speculative decoding: a draft model or an EAGLE / MTP head proposes tokens the model verifies.
    #[serde(default)]
    pub speculative: Option<SpeculativeConfig>,
    /// Keep prompt prefixes cached and share them between requests (needs hashes in the workload).
    #[serde(default)]
    pub prefix_caching: bool,
    /// Mixture-of-experts settings: expert placement, routing, caches, prefetch, token grouping.
    #[serde(default)]
    pub experts: Option<ExpertConfig>,
    /// Role in a disaggregated cluster (mixed, prefill, decode).
    #[serde(default)]
    pub role: Role,
    /// Prefill instances: send KV after the prefill (`serialized`) or layer by layer during it (`layerwise`).
    #[serde(default)]
    pub kv_transfer: KvTransfer,
    /// Prefill pools: the kind of link the KV transfers out of this pool's instances use at both
    /// ends (out of the prefill instance and into the decode instance): the NICs, or NVLink when
    /// prefill and decode instances share nodes (DistServe's high node affinity). A decode pool's
    /// own setting is not used (the Python schema refuses one that differs).
    #[serde(default)]
    pub kv_link: KvLink,
    /// Setup and synchronisation latency of one KV transfer out of this pool's instances, seconds
    /// (registration, the completion signal the receiver waits on); a latency phase of every KV
    /// flow on top of the link's own. Default [`DEFAULT_KV_TRANSFER_LATENCY`].
    #[serde(default = "default_kv_transfer_latency")]
    pub kv_transfer_latency: f64,
}

/// The default setup/synchronisation latency of a KV transfer, seconds: Splitwise measured ~5 ms
/// of layer-wise transfer left after the prompt on DGX-H100 for BLOOM-176B, of which the last
/// layer's KV over 8 x 400 Gb/s takes 0.2-1 ms at its prompt sizes; the rest, ~4 ms, is this.
pub const DEFAULT_KV_TRANSFER_LATENCY: f64 = 4e-3;

/// The longest KV transfer latency accepted, seconds.
pub const MAX_KV_TRANSFER_LATENCY: f64 = 1.0;

fn default_kv_transfer_latency() -> f64 {
    DEFAULT_KV_TRANSFER_LATENCY
}

/// How one instance spreads the model over GPUs (a pool's `parallelism` in the scenario).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallelism {
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline-parallel stages (GPUs per instance = tp x pp).
    #[serde(default = "one")]
    pub pp: u32,
    /// Micro-batches per iteration with pipeline parallelism (default: pp).
    #[serde(default)]
    pub microbatches: Option<u32>,
    /// GPUs per node (NVLink domain); instances larger than a node use the NICs between nodes.
    #[serde(default = "eight")]
    pub gpus_per_node: u32,
    /// Expert-parallel degree for MoE models (1, or equal to tp).
    #[serde(default = "one")]
    pub ep: u32,
    /// How a pipeline runs its batches (default: asynchronous for pp > 1, unless `microbatches` or
    /// a setting that needs the synchronous iteration is given; see `instance::pipeline_mode`).
    #[serde(default)]
    pub pipeline: Option<PipelineMode>,
}

impl Default for Parallelism {
    /// One GPU per instance, nodes of eight.
    fn default() -> Self {
        Parallelism { tp: 1, pp: 1, microbatches: None, gpus_per_node: 8, ep: 1, pipeline: None }
    }
}

/// When a prefill instance sends a request's KV cache to its decode instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvTransfer {
    /// After the prefill iteration ends.
    #[default]
    Serialized,
    /// Layer by layer while the prefill iteration that completes the prompt runs (Splitwise):
    /// all but the last layer's KV from the iteration's start, overlapping it; the last layer's
    /// (and a speculating pool's proposer KV) once the prefill and that flow are both done (the
    /// non-hidden tail).
    Layerwise,
}

/// Which links carry an instance's KV transfers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvLink {
    /// The GPUs' NICs (instances on different nodes).
    #[default]
    Nic,
    /// NVLink (prefill and decode instances on the same node).
    Nvlink,
}

fn one() -> u32 {
    1
}

fn eight() -> u32 {
    8
}

/// Everything the core needs to run: pools, router, seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Instance pools.
    pub pools: Vec<PoolConfig>,
    /// Router across all instances.
    pub router: RouterConfig,
    /// Keep one row per iteration (for plots and tests; off for large runs).
    #[serde(default)]
    pub record_iterations: bool,
    /// Tokens each prefix-block hash of the workload covers (e.g. 512 in Mooncake traces).
    #[serde(default)]
    pub hash_block_tokens: Option<u32>,
    /// Splitwise's mixed pool: when prompt and token machines take work of the other kind.
    #[serde(default)]
    pub mixed_pool: Option<MixedPoolConfig>,
}

/// The requests to replay: arrival times (sorted), prompt and output tokens.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// Arrival times, non-decreasing.
    pub arrival: Vec<Nanos>,
    /// Prompt tokens per request.
    pub prompt: Vec<u32>,
    /// Output tokens per request.
    pub output: Vec<u32>,
    /// Prefix-block hashes per request (empty, or one list per request).
    pub hashes: Vec<Vec<u64>>,
    /// A recorded expert routing trace, for pools whose experts replay it.
    pub routing: Option<Arc<RoutingTrace>>,
    /// The acceptance class the workload gives each request, by pool index: one entry per
    /// request, the index of one of the pool's `speculative.acceptance_classes` or
    /// [`crate::cost::DRAWN_CLASS`] (drawn by share). A pool not listed draws every request's.
    pub given_classes: HashMap<usize, Arc<[u8]>>,
}
