//! The per-iteration roofline cost model.
//!
//! One iteration of an instance runs every layer once over all tokens of the batch. Each operator
//! costs `max(flops / (peak * eff_compute), bytes / (bandwidth * eff_memory))`; a layer is the sum
//! of its operators, the iteration is layers x layer + embedding + LM head + overheads. Tensor
//! parallelism divides heads and the MLP across GPUs and adds two all-reduces per layer.
//!
//! Attention is charged on the batch aggregate, as one variable-length kernel per layer (as
//! FlashAttention's varlen kernels and vLLM's paged attention run it), so the cost is O(1) per
//! iteration whatever the batch size: the scheduler accumulates a [`BatchShape`].
//!
//! Layout, one concept per file:
//! - `setup.rs`: the [`InstanceSpec`] and [`CostModel::build`], which validates it;
//! - `batch.rs`: the [`BatchShape`] an iteration is costed on; `ops.rs`: the operators and their costs;
//! - `roofline.rs`: kernel times (GEMM ridge blend, memory time, the power-cap stretch, padding);
//! - `attention.rs`: Q/K/V and output projections, prefill and decode attention (GQA, MLA, the
//!   decode-attention tail); `ffn.rs`: dense MLPs and shared experts; `experts.rs`: routed experts
//!   (MoE); `elementwise.rs`: norms, RoPE, residuals, activations, cache writes;
//! - `collectives.rs`: tensor-parallel all-reduce, expert all-to-all, pipeline sends, node links;
//! - `quantization.rs`: the [`Quantization`] of weights, GEMM activations and the KV cache;
//! - `memory.rs`: weight, KV and activation bytes per GPU; `weight_fetch.rs`: offloaded weights
//!   streamed in; `pim.rs`: processing-in-memory queries;
//! - `iteration.rs`: one iteration assembled from the operator families, and its summaries;
//!   `decode_memo.rs`: decode-only iterations' operators other than attention, remembered per batch size;
//!   `pipeline.rs`: the per-stage times of a batch through an asynchronous pipeline.

mod acceptance_classes;
mod acceptance_history;
mod adaptive_verification;
mod attention;
mod batch;
mod collectives;
mod decode_memo;
mod draft_lengths;
mod elementwise;
mod experts;
mod ffn;
#[cfg(test)]
mod fixtures;
mod iteration;
mod memory;
mod ops;
mod pim;
mod pipeline;
mod prefill_memo;
mod quantization;
mod roofline;
mod setup;
mod speculative;
mod speculative_config;
mod weight_fetch;

pub use acceptance_classes::{ClassCaps, RequestClasses, CLASS_STREAM, DRAWN_CLASS};
pub use acceptance_history::{AcceptanceHistory, HISTORY_DECAY};
pub use batch::{BatchShape, VerifyChunks};
pub use decode_memo::OpsMemo;
pub use ops::{IterationCost, Op, OpCost};
pub use pipeline::StageCosts;
pub use quantization::{ActivationFormat, KvCacheFormat, Quantization, WeightFormat, DEFAULT_GROUP_SIZE};
pub use speculative::{expected_tokens_per_step, SpecSeq, Speculator};
pub use speculative_config::{AcceptanceClass, AcceptanceRate, AdaptiveEstimate, SpecMethod, SpeculativeConfig, MAX_SPECULATIVE_TOKENS};
pub use setup::{InstanceSpec, MAX_ITERATION_OVERHEAD, MAX_LAYER_OVERHEAD, MIN_EFFICIENCY};
pub use weight_fetch::WeightStream;

use crate::calibration::Efficiency;
use crate::hardware::{GpuSpec, PimSpec, PowerModel};
use crate::model::ModelSpec;
use crate::offload::OffloadSpec;
use attention::Attention;

/// A roofline cost model for one instance: a model on `tp` GPUs of one kind. Equal models (every
/// field equal) predict the same times, so the identical instances of a pool may share one.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    model: ModelSpec,
    gpu: GpuSpec,
    eff: Efficiency,
    tp: u32,
    // Per-GPU shapes after tensor-parallel sharding.
    attn: Attention,
    // Dense MLP width, the shared experts' combined width, and the activated FFN width of a MoE layer.
    dense_width: f64,
    shared_width: f64,
    moe_act_width: f64,
    // Shares of the layers with a dense MLP and with experts (they sum to 1).
    dense_share: f64,
    moe_share: f64,
    vocab_shard: f64,
    quant: Quantization,
    /// Bytes per element of 16-bit activations (and of the embedding and LM head weights).
    b: f64,
    /// Bytes per decoder-layer weight (quantized).
    wb: f64,
    /// Bytes per element of a quantized GEMM's input activations.
    xb: f64,
    /// Bytes per cached key or value element.
    kvb: f64,
    h: f64,
    layers: f64,
    /// Layers per pipeline stage, `ceil(layers / pp)` (kept: every costing reads it).
    stage_layers: f64,
    /// `1 / pp` where `pp` is a power of two (multiplying by it divides by `pp` exactly).
    stage_reciprocal: Option<f64>,
    /// FLOP/s of the decoder layers' (quantized) linear layers.
    flops_gemm: f64,
    /// FLOP/s of 16-bit GEMMs (the LM head, the MoE router) and elementwise kernels.
    flops_16bit: f64,
    flops_attn: f64,
    bw: f64,
    bw_attn: f64,
    bw_elem: f64,
    /// Bandwidth of a MoE layer's dispatch and combine, where the engine sets one apart from the
    /// elementwise kernels' (`Efficiency::moe_dispatch_memory`).
    bw_dispatch: Option<f64>,
    /// Routed experts' grouped-GEMM FLOP/s and bytes/s.
    flops_expert: f64,
    bw_expert: f64,
    power: PowerModel,
    slow_compute: f64,
    slow_memory: f64,
    pp: u32,
    ep: u32,
    microbatches: u32,
    gpus_per_node: u32,
    pim: Option<PimSpec>,
    offload: Option<OffloadSpec>,
    expert_hbm_saved: u64,
}

impl CostModel {
    /// The power model of one GPU of this instance.
    pub fn power(&self) -> &PowerModel {
        &self.power
    }

    /// The model this cost model describes.
    pub fn model(&self) -> &ModelSpec {
        &self.model
    }

    /// The GPU this cost model describes.
    pub fn gpu(&self) -> &GpuSpec {
        &self.gpu
    }

    /// The quantization of weights, GEMM activations and the KV cache.
    pub fn quantization(&self) -> &Quantization {
        &self.quant
    }

    /// Tensor-parallel degree.
    pub fn tp(&self) -> u32 {
        self.tp
    }

    /// Pipeline stages.
    pub fn pp(&self) -> u32 {
        self.pp
    }

    /// Expert-parallel degree.
    pub fn ep(&self) -> u32 {
        self.ep
    }

    /// GPUs of the instance (tp x pp).
    pub fn gpus(&self) -> u32 {
        self.tp * self.pp
    }

    /// An empty batch shape that counts attention within the model's sliding window, if any.
    pub fn empty_shape(&self) -> BatchShape {
        BatchShape::windowed(self.model.sliding_window)
    }
}
