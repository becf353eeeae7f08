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

use crate::calibration::Efficiency;
use crate::error::{Error, Result};
use crate::hardware::{GpuSpec, PimSpec, PowerModel};
use crate::offload::OffloadSpec;
use crate::model::ModelSpec;
use serde::Serialize;

/// Attention shapes on one GPU after tensor-parallel sharding of the query heads.
#[derive(Debug, Clone, Copy)]
enum Attention {
    /// Grouped-query attention: query width (heads x head_dim / tp) and the width of K (or V) of
    /// the GPU's KV heads.
    Gqa { q: f64, kv: f64 },
    /// Multi-head latent attention: `heads` query heads on the GPU, per-head sizes, the KV latent
    /// width `lora` and the query latent width, if any.
    Mla { heads: f64, nope: f64, rope: f64, v: f64, lora: f64, q_lora: Option<f64> },
}

/// One kernel of an operator: its FLOPs and bytes on one layer, and the share of the layers that
/// run it (1 for every layer; a MoE model's leading dense layers run other FFN kernels).
#[derive(Debug, Clone, Copy, Default)]
struct Kernel {
    flops: f64,
    bytes: f64,
    share: f64,
    /// A lower bound on the kernel's time, seconds (the decode-attention tail), 0 for none.
    floor: f64,
}

impl Kernel {
    /// `(flops, bytes)` run by `share` of the layers.
    fn on(share: f64, (flops, bytes): (f64, f64)) -> Self {
        Kernel { flops, bytes, share, floor: 0.0 }
    }

    /// `(flops, bytes)` run by every layer.
    fn all(work: (f64, f64)) -> Self {
        Self::on(1.0, work)
    }
}

/// What one iteration computes, summarised so that its cost is O(1) to evaluate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchShape {
    /// Tokens of prefill chunks.
    pub prefill_tokens: u64,
    /// Query-key pairs of causal prefill attention: sum over chunks of q * (c + (q + 1) / 2) for a
    /// chunk of q tokens after c cached tokens.
    pub prefill_pairs: f64,
    /// Keys (and values) the prefill chunks read: sum of c + q.
    pub prefill_kv_tokens: u64,
    /// Sequences decoding one token.
    pub decode_seqs: u64,
    /// Keys the decodes read: sum of their context lengths including the new token.
    pub decode_kv_tokens: u64,
    /// The longest decode context, including the new token.
    pub decode_max_context: u64,
    /// Sequences that sample a token at the end of the iteration (decodes and finished prefills).
    pub sampled: u64,
}

impl BatchShape {
    /// Adds a prefill chunk of `q` tokens after `cached` tokens; `samples` when it ends the prompt.
    pub fn add_prefill(&mut self, q: u64, cached: u64, samples: bool) {
        self.prefill_tokens += q;
        self.prefill_pairs += q as f64 * (cached as f64 + (q as f64 + 1.0) / 2.0);
        self.prefill_kv_tokens += cached + q;
        self.sampled += samples as u64;
    }

    /// Adds one decode whose context, including the token being processed, is `context` tokens.
    pub fn add_decode(&mut self, context: u64) {
        self.decode_seqs += 1;
        self.decode_kv_tokens += context;
        self.decode_max_context = self.decode_max_context.max(context);
        self.sampled += 1;
    }

    /// All tokens that pass through the linear layers.
    pub fn tokens(&self) -> u64 {
        self.prefill_tokens + self.decode_seqs
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens() == 0
    }
}

/// The operators the cost model charges, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Embedding lookup (once per iteration).
    Embedding,
    /// Fused Q/K/V projection (MLA: the query and latent projections, the expansion of prefill
    /// chunks' latents to K and V, and the key up-projection absorbed into decode queries).
    QkvProj,
    /// Causal attention over prefill chunks.
    PrefillAttention,
    /// Attention of decodes over their KV cache.
    DecodeAttention,
    /// Attention output projection (MLA: after the decodes' latent-to-value up-projection).
    OProj,
    /// MLP gate and up projections.
    MlpGateUp,
    /// MLP down projection.
    MlpDown,
    /// RMSNorms, RoPE, residual adds, SiLU-and-multiply, KV-cache writes.
    Elementwise,
    /// Tensor-parallel all-reduces (two per layer).
    AllReduce,
    /// MoE router (gate) GEMM.
    MoeRouter,
    /// Routed experts: a grouped GEMM over the token-expert pairs, reading the experts touched.
    MoeExperts,
    /// Expert-parallel all-to-all: dispatch tokens to their experts' GPUs and combine them back.
    AllToAll,
    /// Activations sent between pipeline stages.
    PipelineSend,
    /// Offloaded weights streamed in from host DRAM or flash (the part not hidden by compute).
    WeightFetch,
    /// Final norm, LM head for sampled tokens only, logits gather.
    LmHead,
    /// Fixed per-iteration and per-layer overheads.
    Overhead,
}

/// One operator's cost over the whole iteration (all layers).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OpCost {
    /// Which operator.
    pub op: Op,
    /// Floating-point operations on one GPU.
    pub flops: f64,
    /// Bytes moved to or from HBM (or over the link, for collectives) on one GPU.
    pub bytes: f64,
    /// Predicted time, seconds.
    pub seconds: f64,
    /// Whether compute (rather than memory or link bandwidth) bounds it.
    pub compute_bound: bool,
    /// Whether it runs on the PIM device rather than the GPU.
    pub on_pim: bool,
}

/// A roofline cost model for one instance: a model on `tp` GPUs of one kind.
#[derive(Debug, Clone)]
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
    b: f64,
    h: f64,
    layers: f64,
    flops_gemm: f64,
    flops_attn: f64,
    bw: f64,
    bw_attn: f64,
    bw_elem: f64,
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

/// One iteration's predicted duration and how much of it compute bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IterationCost {
    /// Duration, seconds.
    pub seconds: f64,
    /// Seconds spent in compute-bound operators.
    pub compute_bound_seconds: f64,
    /// Seconds of `seconds` that are offloaded weights stalling the iteration (without contention).
    pub weight_stall_seconds: f64,
}

/// The offloaded weights one iteration streams in, split by the path they take.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightStream {
    /// Bytes read from flash (then over the host link), per GPU.
    pub flash_bytes: u64,
    /// Bytes from host DRAM (the DRAM tier, or flash's DRAM cache) over the host link, per GPU.
    pub dram_bytes: u64,
    /// Whether the stream runs under the iteration's compute.
    pub overlap: bool,
}

/// The lowest efficiency factor accepted: a kernel reaching under 1% of a peak describes no real
/// engine, and such values make simulated iterations absurdly long.
pub const MIN_EFFICIENCY: f64 = 0.01;
/// The largest fixed cost of one iteration accepted, seconds.
pub const MAX_ITERATION_OVERHEAD: f64 = 10.0;
/// The largest fixed cost per layer per iteration accepted, seconds.
pub const MAX_LAYER_OVERHEAD: f64 = 1.0;

impl CostModel {
    /// A cost model; fails when `tp` does not divide the attention heads or the MLP.
    pub fn new(model: ModelSpec, gpu: GpuSpec, eff: Efficiency, tp: u32) -> Result<Self> {
        if tp == 0 || !model.num_heads.is_multiple_of(tp) {
            return Err(Error::config(
                "parallelism.tp",
                format!("tp={tp} must be a positive divisor of {}'s {} attention heads", model.name, model.num_heads),
            ));
        }
        if model.first_dense_layers > model.num_layers {
            return Err(Error::config(
                "model.first_dense_layers",
                format!("{} exceeds {}'s {} layers", model.first_dense_layers, model.name, model.num_layers),
            ));
        }
        if model.dense_layers() > 0 && !model.intermediate_size.is_multiple_of(tp) {
            return Err(Error::config(
                "parallelism.tp",
                format!("tp={tp} must divide {}'s MLP size {}", model.name, model.intermediate_size),
            ));
        }
        if let Some(m) = &model.mla {
            if m.kv_lora_rank == 0 || m.qk_head_dim() == 0 || m.v_head_dim == 0 || m.q_lora_rank == Some(0) {
                return Err(Error::config("model.mla", format!("{}: kv_lora_rank, the query/key and value head sizes and q_lora_rank must be positive", model.name)));
            }
        }
        let attention_memory = eff.attention_memory.unwrap_or(eff.memory);
        let elementwise_memory = eff.elementwise_memory.unwrap_or(eff.memory);
        for (name, v) in [
            ("gemm_compute", eff.gemm_compute),
            ("attention_compute", eff.attention_compute),
            ("memory", eff.memory),
            ("attention_memory", attention_memory),
            ("elementwise_memory", elementwise_memory),
            ("collective", eff.collective),
        ] {
            if !(MIN_EFFICIENCY..=1.0).contains(&v) {
                return Err(Error::config(format!("calibration.{name}"), format!("must be a fraction of peak in [{MIN_EFFICIENCY}, 1], got {v:?}")));
            }
        }
        for (name, v, max) in [("iteration_overhead", eff.iteration_overhead, MAX_ITERATION_OVERHEAD), ("layer_overhead", eff.layer_overhead, MAX_LAYER_OVERHEAD)] {
            if !(0.0..=max).contains(&v) {
                return Err(Error::config(format!("calibration.{name}"), format!("must be between 0 and {max} seconds, got {v:?}")));
            }
        }
        gpu.validate()?;
        if let Some(v) = eff.attention_cta {
            if !(v > 0.0 && v <= 4.0) {
                return Err(Error::config("calibration.attention_cta", format!("must be in (0, 4], got {v:?}")));
            }
        }
        if let Some(v) = eff.gemm_ridge_exponent {
            if v.is_nan() || v < 1.0 {
                return Err(Error::config("calibration.gemm_ridge_exponent", format!("must be at least 1, got {v:?}")));
            }
        }
        let t = tp as f64;
        let power = PowerModel::new(&gpu, None);
        Ok(CostModel {
            pp: 1,
            microbatches: 1,
            gpus_per_node: u32::MAX,
            pim: None,
            offload: None,
            expert_hbm_saved: 0,
            power,
            slow_compute: 1.0,
            slow_memory: 1.0,
            attn: match &model.mla {
                None => Attention::Gqa { q: (model.num_heads * model.head_dim) as f64 / t, kv: (model.kv_heads_per_gpu(tp) * model.head_dim) as f64 },
                Some(m) => Attention::Mla {
                    heads: model.num_heads as f64 / t,
                    nope: m.qk_nope_head_dim as f64,
                    rope: m.qk_rope_head_dim as f64,
                    v: m.v_head_dim as f64,
                    lora: m.kv_lora_rank as f64,
                    q_lora: m.q_lora_rank.map(f64::from),
                },
            },
            dense_width: model.intermediate_size as f64 / t,
            shared_width: (model.num_shared_experts * model.shared_expert_intermediate_size) as f64 / t,
            moe_act_width: (model.experts_per_token * model.moe_intermediate_size + model.num_shared_experts * model.shared_expert_intermediate_size) as f64 / t,
            dense_share: model.dense_layers() as f64 / model.num_layers.max(1) as f64,
            moe_share: model.moe_layers() as f64 / model.num_layers.max(1) as f64,
            ep: 1,
            vocab_shard: model.vocab_size as f64 / t,
            b: model.dtype_bytes as f64,
            h: model.hidden_size as f64,
            layers: model.num_layers as f64,
            flops_gemm: gpu.peak_flops * eff.gemm_compute,
            flops_attn: gpu.peak_flops * eff.attention_compute,
            bw: gpu.memory_bandwidth * eff.memory,
            bw_attn: gpu.memory_bandwidth * eff.attention_memory.unwrap_or(eff.memory),
            bw_elem: gpu.memory_bandwidth * eff.elementwise_memory.unwrap_or(eff.memory),
            model,
            gpu,
            eff,
            tp,
        })
    }

    /// Caps each GPU's power at `watts`: kernels whose draw would exceed it run longer.
    pub fn with_power_cap(mut self, watts: Option<f64>) -> Result<Self> {
        if let Some(w) = watts {
            if w.is_nan() || w <= 0.0 {
                return Err(Error::config("power_cap_watts", format!("must be positive, got {w:?}")));
            }
            if self.gpu.tdp_watts <= 0.0 {
                return Err(Error::config("power_cap_watts", format!("{} has no tdp_watts, so it cannot be capped", self.gpu.name)));
            }
            if !w.is_finite() || w <= self.gpu.idle_watts {
                return Err(Error::config("power_cap_watts", format!("must be above {}'s idle power of {} W (a GPU cannot run below idle), got {w:?}", self.gpu.name, self.gpu.idle_watts)));
            }
        }
        self.power = PowerModel::new(&self.gpu, watts);
        self.slow_compute = self.power.compute_slowdown();
        self.slow_memory = self.power.memory_slowdown();
        Ok(self)
    }

    /// Splits the layers over `pp` pipeline stages, each iteration's batch into `microbatches`
    /// micro-batches (vLLM-style: one per stage when `None`).
    pub fn with_pipeline(mut self, pp: u32, microbatches: Option<u32>) -> Result<Self> {
        if pp == 0 || pp > self.model.num_layers {
            return Err(Error::config("parallelism.pp", format!("pp={pp} must be between 1 and {}'s {} layers", self.model.name, self.model.num_layers)));
        }
        let m = microbatches.unwrap_or(pp);
        if m == 0 {
            return Err(Error::config("parallelism.microbatches", "must be at least 1"));
        }
        self.pp = pp;
        self.microbatches = if pp == 1 { 1 } else { m };
        Ok(self)
    }

    /// Places the instance on nodes of `gpus_per_node` GPUs: a tensor-parallel group larger than a
    /// node runs its collectives over the NICs, and pipeline stages on different nodes send over them.
    pub fn with_nodes(mut self, gpus_per_node: u32) -> Result<Self> {
        if gpus_per_node == 0 {
            return Err(Error::config("gpus_per_node", "must be at least 1"));
        }
        self.gpus_per_node = gpus_per_node;
        if self.gpus() > gpus_per_node && self.gpu.nic_bandwidth <= 0.0 {
            return Err(Error::config(
                "parallelism",
                format!("tp x pp = {} GPUs spans nodes of {gpus_per_node}, but {} has no nic_bandwidth", self.gpus(), self.gpu.name),
            ));
        }
        Ok(self)
    }

    /// Attaches a PIM device to every GPU: each layer operator runs on the device that finishes
    /// it sooner (so low-Op/B work such as decode attention moves to the PIM), and decode attention
    /// on the PIM overlaps prefill attention on the GPU.
    pub fn with_pim(mut self, pim: Option<PimSpec>) -> Result<Self> {
        if let Some(p) = &pim {
            if !(p.peak_flops > 0.0 && p.internal_bandwidth > 0.0 && p.efficiency > 0.0 && p.efficiency <= 1.0) {
                return Err(Error::config("pim", format!("{}: peak_flops and internal_bandwidth must be positive, efficiency in (0, 1]", p.name)));
            }
        }
        self.pim = pim;
        Ok(self)
    }

    /// The Op/B (FLOPs per byte) below which a memory-bound GPU operator runs faster on the PIM,
    /// if a PIM is attached: the GPU takes B / Bg, a compute-bound PIM I·B / (Fp·e), so the PIM
    /// wins while I < Fp·e / Bg (0 when the PIM has no more bandwidth than the GPU).
    pub fn pim_crossover_intensity(&self) -> Option<f64> {
        let p = self.pim.as_ref()?;
        if p.internal_bandwidth * p.efficiency <= self.bw {
            return Some(0.0);
        }
        Some(p.peak_flops * p.efficiency / self.bw)
    }

    /// Keeps some layers' weights in host DRAM or on flash and streams them in (see [`crate::offload`]).
    pub fn with_offload(mut self, offload: Option<OffloadSpec>) -> Result<Self> {
        if let Some(o) = &offload {
            o.validate()?;
            if self.pp > 1 {
                return Err(Error::config("offload", "weight offloading with pipeline parallelism is not modelled yet; use pp = 1"));
            }
            if self.gpu.host_link_bandwidth <= 0.0 {
                return Err(Error::config("offload", format!("offloading needs the GPU's host_link_bandwidth, which {} does not set", self.gpu.name)));
            }
        }
        self.offload = offload;
        if let Some(o) = &self.offload {
            let stored = self.offloaded_layers() as u64 * self.layer_weight_bytes_per_gpu();
            if stored > o.capacity_bytes {
                return Err(Error::Capacity { what: format!("{} weights offloaded to {:?} per GPU", self.model.name, o.tier), needed_bytes: stored, available_bytes: o.capacity_bytes });
            }
        }
        Ok(self)
    }

    /// Decoder layers whose weights are offloaded.
    pub fn offloaded_layers(&self) -> u32 {
        self.offload.as_ref().map_or(0, |o| (o.layer_fraction * self.model.num_layers as f64).round() as u32)
    }

    /// Parameters of one layer that every GPU of the tensor-parallel group holds whole (MLA's
    /// latent down-projections); the rest is sharded.
    fn replicated_layer_params(&self) -> u64 {
        match &self.model.mla {
            Some(m) if self.tp > 1 => m.replicated_params(self.model.hidden_size as u64),
            _ => 0,
        }
    }

    /// Bytes on one GPU of `params` parameters spanning `layers` decoder layers.
    fn param_bytes_per_gpu(&self, params: u64, layers: u64) -> u64 {
        let b = self.model.dtype_bytes as u64;
        let replicated = layers * self.replicated_layer_params();
        ((params - replicated) * b).div_ceil(self.tp as u64) + replicated * b
    }

    fn layer_weight_bytes_per_gpu(&self) -> u64 {
        self.param_bytes_per_gpu(self.model.layer_params(), 1)
    }

    /// Bytes of one offloaded layer fetched per iteration on one GPU: its attention weights and the
    /// loaded fraction of its FFN weights.
    pub fn layer_fetch_bytes(&self) -> f64 {
        let Some(o) = &self.offload else { return 0.0 };
        let h = self.model.hidden_size as f64;
        let replicated = self.replicated_layer_params() as f64;
        let attn = self.model.attention_params() as f64 - replicated;
        let ffn = 3.0 * h * self.model.intermediate_size as f64;
        (attn + ffn * o.ffn_load_fraction) * self.b / self.tp as f64 + replicated * self.b
    }

    /// Nodes the instance spans.
    pub fn nodes(&self) -> u32 {
        self.gpus().div_ceil(self.gpus_per_node)
    }

    /// (bandwidth, latency) of the slowest link in the tensor-parallel ring.
    fn tp_link(&self) -> (f64, f64) {
        if self.tp > self.gpus_per_node {
            (self.gpu.nic_bandwidth, self.gpu.nic_latency)
        } else {
            (self.gpu.link_bandwidth, self.gpu.link_latency)
        }
    }

    /// (bandwidth, latency) of the slowest stage-to-stage hop of the pipeline.
    fn pp_link(&self) -> (f64, f64) {
        if self.gpus() > self.gpus_per_node {
            (self.gpu.nic_bandwidth, self.gpu.nic_latency)
        } else {
            (self.gpu.link_bandwidth, self.gpu.link_latency)
        }
    }

    /// Spreads each MoE layer's experts over the `ep` GPUs of the tensor-parallel group (whole
    /// experts per GPU) instead of sharding every expert; tokens reach their experts' GPUs by an
    /// all-to-all and come back by another. `ep` must be 1 or equal `tp`.
    pub fn with_expert_parallel(mut self, ep: u32) -> Result<Self> {
        if ep > 1 {
            if !self.model.is_moe() {
                return Err(Error::config("parallelism.ep", format!("ep={ep} needs a mixture-of-experts model; {} is dense", self.model.name)));
            }
            if ep != self.tp {
                return Err(Error::config("parallelism.ep", format!("ep={ep} must equal tp={} (experts spread over the tensor-parallel GPUs)", self.tp)));
            }
            if !self.model.num_experts.is_multiple_of(ep) {
                return Err(Error::config("parallelism.ep", format!("ep={ep} must divide {}'s {} experts", self.model.name, self.model.num_experts)));
            }
        }
        self.ep = ep.max(1);
        Ok(self)
    }

    /// Expert-parallel degree.
    pub fn ep(&self) -> u32 {
        self.ep
    }

    /// Bytes of one routed expert's weights on one GPU (whole with expert parallelism, else a
    /// tensor-parallel shard).
    pub fn expert_bytes_per_gpu(&self) -> f64 {
        3.0 * self.h * self.model.moe_intermediate_size as f64 * self.b / (self.tp as f64 / self.ep as f64)
    }

    /// Keeps `bytes` of routed-expert weights per GPU out of HBM (offloaded experts).
    pub fn with_expert_hbm_saved(mut self, bytes: u64) -> Self {
        self.expert_hbm_saved = bytes;
        self
    }

    /// One MoE layer's routed experts on one GPU: a grouped GEMM over `pairs` token-expert pairs
    /// that reads the `touched` experts' weights, on the GPU or, if faster, the PIM. Seconds.
    pub fn expert_seconds(&self, pairs: f64, touched: f64) -> f64 {
        let h = self.h;
        let width = self.model.moe_intermediate_size as f64 / (self.tp as f64 / self.ep as f64);
        let flops = 2.0 * pairs * 3.0 * h * width;
        let bytes = (touched * 3.0 * h * width + pairs * (2.0 * h + 3.0 * width)) * self.b;
        let gpu = self.gemm_roofline(flops, bytes, self.flops_gemm, self.bw).0;
        match &self.pim {
            Some(p) => gpu.min(p.seconds(flops, bytes)),
            None => gpu,
        }
    }

    /// Expert all-to-all (dispatch or combine) of `pairs` token-expert pairs, seconds.
    fn all_to_all_seconds(&self, pairs: f64) -> f64 {
        let e = self.ep as f64;
        let (bw, lat) = self.tp_link();
        let bytes_per_gpu = pairs / e * self.h * self.b * (e - 1.0) / e;
        (e - 1.0) * lat + bytes_per_gpu / (bw * self.eff.collective)
    }

    /// Pipeline stages.
    pub fn pp(&self) -> u32 {
        self.pp
    }

    /// GPUs of the instance (tp x pp).
    pub fn gpus(&self) -> u32 {
        self.tp * self.pp
    }

    /// Weight bytes on one GPU: the largest stage's layers, plus the larger of the embedding
    /// (first stage) and the LM head (last stage), divided by tp (MLA's latent down-projections
    /// are replicated, not divided).
    pub fn weight_bytes_per_gpu(&self) -> u64 {
        let layers = self.model.num_layers;
        if self.pp == 1 {
            let resident = self.param_bytes_per_gpu(self.model.total_params(), layers as u64).saturating_sub(self.expert_hbm_saved);
            let Some(o) = &self.offload else { return resident };
            let away = self.offloaded_layers() as u64 * self.layer_weight_bytes_per_gpu();
            // Staging buffers for the streamed layers: two when the next layer streams during this one.
            let staging = if self.offloaded_layers() > 0 { (if o.overlap { 2.0 } else { 1.0 } * self.layer_fetch_bytes()).ceil() as u64 } else { 0 };
            return resident - away + staging;
        }
        let n = layers.div_ceil(self.pp);
        let embed = self.model.vocab_size as u64 * self.model.hidden_size as u64 + self.model.hidden_size as u64;
        (0..self.pp)
            .map(|s| {
                let (start, end) = (s * n, ((s + 1) * n).min(layers));
                self.param_bytes_per_gpu(self.model.layers_params(start..end) + embed, end.saturating_sub(start) as u64)
            })
            .max()
            .unwrap_or(0)
    }

    /// KV-cache bytes per token on one GPU (its stage's layers only).
    pub fn kv_bytes_per_token_per_gpu(&self) -> u64 {
        self.model.kv_bytes_per_token_per_layer(self.tp) * self.model.num_layers.div_ceil(self.pp) as u64
    }

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

    /// Tensor-parallel degree.
    pub fn tp(&self) -> u32 {
        self.tp
    }

    fn roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64) -> (f64, bool) {
        let tc = flops / peak * self.slow_compute;
        let tm = bytes / bw * self.slow_memory;
        (tc.max(tm), tc >= tm)
    }

    /// A GEMM's roofline: `max(c, m)`, or with `gemm_ridge_exponent` = p the blend
    /// `(c^p + m^p)^(1/p)` (computed as `max * (1 + (min / max)^p)^(1/p)`), which is 2^(1/p) times
    /// the max at the ridge and tends to the max away from it.
    fn gemm_roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64) -> (f64, bool) {
        let (t, cb) = self.roofline(flops, bytes, peak, bw);
        match self.eff.gemm_ridge_exponent {
            Some(p) if p.is_finite() && t > 0.0 => {
                let tc = flops / peak * self.slow_compute;
                let tm = bytes / bw * self.slow_memory;
                let r = tc.min(tm) / t;
                (t * (1.0 + r.powf(p)).powf(1.0 / p), cb)
            }
            _ => (t, cb),
        }
    }

    /// Tokens the per-token operators (GEMMs, norms, activations) run on: the prefill part padded
    /// up to a multiple of `prefill_pad_tokens`, if set.
    fn padded_tokens(&self, shape: &BatchShape) -> u64 {
        let t = shape.tokens();
        match self.eff.prefill_pad_tokens {
            Some(step) if step > 1 && shape.prefill_tokens > 0 => {
                let p = shape.prefill_tokens;
                t - p + p.div_ceil(step as u64) * step as u64
            }
            _ => t,
        }
    }

    fn gemm(&self, tokens: f64, k: f64, n: f64) -> (f64, f64) {
        (2.0 * tokens * k * n, (k * n + tokens * k + tokens * n) * self.b)
    }

    /// A batched GEMM: one `tokens x k` by `k x n` product per head, each with its own weights.
    fn heads_gemm(&self, heads: f64, tokens: f64, k: f64, n: f64) -> (f64, f64) {
        let (flops, bytes) = self.gemm(tokens, k, n);
        (heads * flops, heads * bytes)
    }

    /// The least time of one layer's decode attention over `seqs` sequences whose longest context
    /// is `max_context` tokens (GQA): FlashAttention runs one thread block per (sequence, KV head)
    /// and splits a sequence's keys over several blocks only while those blocks fill less than
    /// 80% of the GPU's resident-block slots (two per SM), so beyond that the kernel waits for the
    /// longest sequence's block, which reads its `2 * head_dim * max_context` cached elements at
    /// `attention_cta` of one SM's share of the HBM bandwidth. 0 without `attention_cta` or
    /// `sm_count`, or with MLA (its kernels split differently).
    fn decode_attention_tail(&self, seqs: f64, max_context: f64) -> f64 {
        let (Some(f), Attention::Gqa { kv, .. }) = (self.eff.attention_cta, self.attn) else { return 0.0 };
        let sms = self.gpu.sm_count as f64;
        let head = self.model.head_dim as f64;
        if sms == 0.0 || seqs * (kv / head) < 0.8 * 2.0 * sms {
            return 0.0;
        }
        2.0 * head * max_context * self.b / (self.gpu.memory_bandwidth / sms * f) * self.slow_memory
    }

    /// Ring all-reduce of `bytes` over the tensor-parallel group, seconds.
    fn all_reduce_seconds(&self, bytes: f64) -> f64 {
        if self.tp == 1 || bytes == 0.0 {
            return 0.0;
        }
        let p = self.tp as f64;
        let steps = 2.0 * (p - 1.0);
        let (bw, lat) = self.tp_link();
        steps * lat + steps / p * bytes / (bw * self.eff.collective)
    }

    /// Calls `f` with each operator's cost for an iteration of `shape`.
    ///
    /// With pipeline parallelism (`pp` stages, `m` micro-batches) the decoder layers run as
    /// `m + pp - 1` stage-slots, each one micro-batch (the batch / m) through the `ceil(L / pp)`
    /// layers of a stage followed by a send to the next stage; `pp - 1` of those slots are the
    /// pipeline bubble. An operator's seconds are its share of that critical path; its FLOPs and
    /// bytes are what one GPU of a stage does. Embedding and LM head run once on the whole batch.
    ///
    /// A MoE model's leading dense layers (`first_dense_layers` = d of L) are charged as shares of
    /// every layer: the router and experts on (L - d) / L of them, the dense MLP on d / L (exact for
    /// pp = 1; with pipelining, every stage gets the average mix).
    pub fn for_each_op(&self, shape: &BatchShape, mut sink: impl FnMut(OpCost)) {
        let emitted = std::cell::Cell::new(0.0);
        let mut f = |c: OpCost| {
            emitted.set(emitted.get() + c.seconds);
            sink(c)
        };
        let t = self.padded_tokens(shape) as f64;
        let (h, b) = (self.h, self.b);
        let m = self.microbatches as f64;
        let micro = 1.0 / m;
        let mt = t * micro;
        let stage_layers = (self.layers / self.pp as f64).ceil();
        let slots = m + self.pp as f64 - 1.0;
        // Per-layer operators on one micro-batch: work scales by layers x micro-batches, time by
        // layers x slots (for pp = 1: m = 1, slots = 1, so both are the layer count).
        let (work_n, time_n) = (stage_layers * m, stage_layers * slots);
        let mut prefill_attention = (0.0, false);
        // Each kernel gets its own roofline; an operator's time is the kernels' times weighted by
        // the share of the layers that run them, and it is compute-bound when most of it is.
        let mut emit = |op: Op, kernels: &[Kernel], peak: f64, per_layer: bool| {
            let bw = match op {
                Op::PrefillAttention | Op::DecodeAttention => self.bw_attn,
                Op::Elementwise | Op::Embedding => self.bw_elem,
                _ => self.bw,
            };
            let gemm_op = matches!(op, Op::QkvProj | Op::OProj | Op::MlpGateUp | Op::MlpDown | Op::MoeRouter | Op::MoeExperts);
            let (mut flops, mut bytes, mut secs, mut cb_secs, mut pim_secs, mut pim_cb_secs) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for k in kernels {
                flops += k.share * k.flops;
                bytes += k.share * k.bytes;
                let (t, cb) = if gemm_op { self.gemm_roofline(k.flops, k.bytes, peak, bw) } else { self.roofline(k.flops, k.bytes, peak, bw) };
                let (t, cb) = if k.floor > t { (k.floor, false) } else { (t, cb) };
                secs += k.share * t;
                cb_secs += if cb { k.share * t } else { 0.0 };
                if let Some(p) = &self.pim {
                    let t = k.share * p.seconds(k.flops, k.bytes);
                    pim_secs += t;
                    pim_cb_secs += if k.flops / p.peak_flops >= k.bytes / p.internal_bandwidth { t } else { 0.0 };
                }
            }
            let mut cb = 2.0 * cb_secs >= secs;
            let mut on_pim = false;
            if self.pim.is_some() && per_layer && pim_secs < secs {
                on_pim = true;
                cb = 2.0 * pim_cb_secs >= pim_secs;
                secs = pim_secs;
            }
            if op == Op::PrefillAttention {
                prefill_attention = (secs, on_pim);
            }
            if op == Op::DecodeAttention && on_pim && !prefill_attention.1 {
                // Co-processing: decode attention on the PIM runs while the GPU does prefill attention.
                secs = (secs - prefill_attention.0).max(0.0);
            }
            let (wn, tn) = if per_layer { (work_n, time_n) } else { (1.0, 1.0) };
            f(OpCost { op, flops: flops * wn, bytes: bytes * wn, seconds: secs * tn, compute_bound: cb, on_pim });
        };
        emit(Op::Embedding, &[Kernel::all((0.0, 2.0 * t * h * b))], self.flops_gemm, false);
        let pt = shape.prefill_tokens as f64 * micro;
        let pairs = shape.prefill_pairs * micro;
        let pkv = shape.prefill_kv_tokens as f64 * micro;
        let ds = shape.decode_seqs as f64 * micro;
        let dkv = shape.decode_kv_tokens as f64 * micro;
        // Elements per token of RoPE'd queries and keys, of the latent norm (MLA) and of the KV-cache write.
        let (rope_width, latent_width, cache_width);
        match self.attn {
            Attention::Gqa { q, kv } => {
                emit(Op::QkvProj, &[Kernel::all(self.gemm(mt, h, q + 2.0 * kv))], self.flops_gemm, true);
                if shape.prefill_tokens > 0 {
                    let work = (4.0 * q * pairs, (2.0 * pt * q + 2.0 * kv * pkv) * b);
                    emit(Op::PrefillAttention, &[Kernel::all(work)], self.flops_attn, true);
                }
                if shape.decode_seqs > 0 {
                    let work = (4.0 * q * dkv, (2.0 * ds * q + 2.0 * kv * dkv) * b);
                    let floor = self.decode_attention_tail(ds, shape.decode_max_context as f64);
                    emit(Op::DecodeAttention, &[Kernel { floor, ..Kernel::all(work) }], self.flops_attn, true);
                }
                emit(Op::OProj, &[Kernel::all(self.gemm(mt, q, h))], self.flops_gemm, true);
                (rope_width, latent_width, cache_width) = (q + kv, 0.0, 2.0 * kv);
            }
            Attention::Mla { heads, nope, rope, v, lora, q_lora } => {
                let qk = nope + rope;
                let none = Kernel::default();
                // Queries (through the query latent, if any) and the replicated KV down-projection on
                // every token; prefill chunks expand their context's latents to per-head K and V
                // (kv_b_proj); decodes absorb kv_b_proj's key half into their queries instead.
                let (q_a, q_b) = match q_lora {
                    Some(r) => (Kernel::all(self.gemm(mt, h, r)), Kernel::all(self.gemm(mt, r, heads * qk))),
                    None => (Kernel::all(self.gemm(mt, h, heads * qk)), none),
                };
                let kv_a = Kernel::all(self.gemm(mt, h, lora + rope));
                let expand = if pkv > 0.0 { Kernel::all(self.gemm(pkv, lora, heads * (nope + v))) } else { none };
                let absorb_k = if ds > 0.0 { Kernel::all(self.heads_gemm(heads, ds, nope, lora)) } else { none };
                emit(Op::QkvProj, &[q_a, q_b, kv_a, expand, absorb_k], self.flops_gemm, true);
                if shape.prefill_tokens > 0 {
                    // Expanded form: multi-head attention with qk-sized keys and v-sized values.
                    let work = (2.0 * heads * (qk + v) * pairs, (pt + pkv) * heads * (qk + v) * b);
                    emit(Op::PrefillAttention, &[Kernel::all(work)], self.flops_attn, true);
                }
                if shape.decode_seqs > 0 {
                    // Absorbed form: every head attends over the cached latent + RoPE key (scores) and
                    // the latent (values); reads the cache, the absorbed queries, writes latent outputs.
                    let flops = 2.0 * heads * (lora + rope) * dkv + 2.0 * heads * lora * dkv;
                    let bytes = (dkv * (lora + rope) + ds * heads * (lora + rope) + ds * heads * lora) * b;
                    emit(Op::DecodeAttention, &[Kernel::all((flops, bytes))], self.flops_attn, true);
                }
                // Decodes project their latent outputs to values (kv_b_proj's value half), then o_proj.
                let absorb_v = if ds > 0.0 { Kernel::all(self.heads_gemm(heads, ds, lora, v)) } else { none };
                emit(Op::OProj, &[absorb_v, Kernel::all(self.gemm(mt, heads * v, h))], self.flops_gemm, true);
                (rope_width, latent_width, cache_width) = (heads * rope + rope, lora, lora + rope);
            }
        }
        if self.moe_share > 0.0 {
            let experts = self.model.num_experts as f64;
            emit(Op::MoeRouter, &[Kernel::on(self.moe_share, self.gemm(mt, h, experts))], self.flops_gemm, true);
            // Each GPU holds experts/ep experts, each sharded over tp/ep GPUs; on average it gets
            // 1/ep of the token-expert pairs and of the experts the batch touches.
            let e = self.ep as f64;
            let width = self.model.moe_intermediate_size as f64 / (self.tp as f64 / e);
            let pairs = mt * self.model.experts_per_token as f64 / e;
            let touched = self.model.expected_unique_experts(mt) / e;
            let flops = 2.0 * pairs * 3.0 * h * width;
            let bytes = (touched * 3.0 * h * width + pairs * (2.0 * h + 3.0 * width)) * b;
            emit(Op::MoeExperts, &[Kernel::on(self.moe_share, (flops, bytes))], self.flops_gemm, true);
        }
        // Gated MLPs: the shared experts of MoE layers and the dense MLP of dense layers.
        let shared_share = if self.shared_width > 0.0 { self.moe_share } else { 0.0 };
        if shared_share > 0.0 || self.dense_share > 0.0 {
            let mlp = |width: f64| [self.gemm(mt, h, 2.0 * width), self.gemm(mt, width, h)];
            let (shared, dense) = (mlp(self.shared_width), mlp(self.dense_width));
            for (i, op) in [Op::MlpGateUp, Op::MlpDown].into_iter().enumerate() {
                emit(op, &[Kernel::on(shared_share, shared[i]), Kernel::on(self.dense_share, dense[i])], self.flops_gemm, true);
            }
        }
        // Two RMSNorms (read+write), RoPE on q and k, two residual adds (2 reads + 1 write),
        // SiLU-and-multiply (2 reads + 1 write) of the activated FFN width, MLA's latent norm,
        // and writing the new K and V (or latent) into the cache.
        let elem = |act: f64| (mt * (10.0 * h + 6.0 * act), mt * b * (10.0 * h + 2.0 * rope_width + 2.0 * latent_width + 3.0 * act + cache_width));
        let kernels = [Kernel::on(self.moe_share, elem(self.moe_act_width)), Kernel::on(self.dense_share, elem(self.dense_width))];
        emit(Op::Elementwise, &kernels, self.flops_gemm, true);
        if self.tp > 1 {
            // Two all-reduces per layer (attention and FFN outputs); with expert parallelism the
            // MoE layers' FFN all-reduce is replaced by the all-to-alls.
            let msg = mt * h * b;
            let p = self.tp as f64;
            let n = 1.0 + self.dense_share + if self.ep > 1 { 0.0 } else { self.moe_share };
            f(OpCost { op: Op::AllReduce, flops: 0.0, bytes: n * work_n * 2.0 * (p - 1.0) / p * msg, seconds: n * self.all_reduce_seconds(msg) * time_n, compute_bound: false, on_pim: false });
        }
        if self.ep > 1 {
            let pairs = mt * self.model.experts_per_token as f64;
            let e = self.ep as f64;
            let bytes = 2.0 * pairs / e * h * b * (e - 1.0) / e;
            let n = self.moe_share;
            f(OpCost { op: Op::AllToAll, flops: 0.0, bytes: bytes * work_n * n, seconds: 2.0 * self.all_to_all_seconds(pairs) * time_n * n, compute_bound: false, on_pim: false });
        }
        if self.pp > 1 {
            // Each slot ends with the micro-batch's activations sent to the next stage.
            let msg = mt * h * b;
            let (bw, lat) = self.pp_link();
            let send = lat + msg / (bw * self.eff.collective);
            f(OpCost { op: Op::PipelineSend, flops: 0.0, bytes: msg * m, seconds: send * slots, compute_bound: false, on_pim: false });
        }
        let s = shape.sampled as f64;
        if s > 0.0 {
            let (fl, by) = self.gemm(s, h, self.vocab_shard);
            let norm_bytes = 2.0 * t * h * b;
            let logits_bytes = s * self.vocab_shard * 4.0;
            let (secs, cb) = self.gemm_roofline(fl, by + norm_bytes + logits_bytes, self.flops_gemm, self.bw);
            let gather = if self.tp > 1 {
                let p = self.tp as f64;
                let (bw, lat) = self.tp_link();
                (p - 1.0) * lat + (p - 1.0) / p * s * self.model.vocab_size as f64 * 4.0 / (bw * self.eff.collective)
            } else {
                0.0
            };
            f(OpCost { op: Op::LmHead, flops: fl, bytes: by + norm_bytes + logits_bytes, seconds: secs + gather, compute_bound: cb, on_pim: false });
        }
        let overhead = self.eff.iteration_overhead + self.eff.layer_overhead * time_n;
        f(OpCost { op: Op::Overhead, flops: 0.0, bytes: 0.0, seconds: overhead, compute_bound: false, on_pim: false });
        if let Some(o) = &self.offload {
            let n = self.offloaded_layers() as f64;
            if n > 0.0 {
                // One stream per iteration carries every offloaded layer; with overlap it runs under
                // the whole iteration's compute (prefetching ahead), so only what outlasts it stalls.
                let bytes = self.layer_fetch_bytes() * n;
                let fetch = o.fetch_seconds(bytes, self.gpu.host_link_bandwidth, self.gpu.host_link_latency);
                let stall = if o.overlap { (fetch - emitted.get()).max(0.0) } else { fetch };
                f(OpCost { op: Op::WeightFetch, flops: 0.0, bytes, seconds: stall, compute_bound: false, on_pim: false });
            }
        }
    }

    /// Predicted duration of one iteration, seconds.
    pub fn iteration_seconds(&self, shape: &BatchShape) -> f64 {
        self.iteration(shape).seconds
    }

    /// Predicted duration of one iteration and its compute-bound share.
    pub fn iteration(&self, shape: &BatchShape) -> IterationCost {
        let mut c = IterationCost::default();
        self.for_each_op(shape, |op| {
            c.seconds += op.seconds;
            if op.compute_bound {
                c.compute_bound_seconds += op.seconds;
            }
            if op.op == Op::WeightFetch {
                c.weight_stall_seconds += op.seconds;
            }
        });
        c
    }

    /// Splits an iteration of `shape` for the expert timeline: (seconds of one MoE layer without
    /// its routed experts, seconds outside the MoE layers: embedding, LM head, overheads, dense layers).
    pub fn moe_layer_split(&self, shape: &BatchShape) -> (f64, f64) {
        let (mut fixed, mut layered) = (0.0, 0.0);
        self.for_each_op(shape, |c| match c.op {
            Op::MoeExperts => {}
            Op::Embedding | Op::LmHead | Op::Overhead | Op::WeightFetch | Op::PipelineSend => fixed += c.seconds,
            _ => layered += c.seconds,
        });
        let per_layer = layered / self.model.num_layers as f64;
        let dense = (self.model.num_layers - self.model.moe_layers()) as f64;
        (per_layer, fixed + dense * per_layer)
    }

    /// The weights one iteration streams in from host DRAM or flash, if any layers are offloaded.
    pub fn weight_stream(&self) -> Option<WeightStream> {
        let o = self.offload.as_ref()?;
        let total = (self.layer_fetch_bytes() * self.offloaded_layers() as f64).round() as u64;
        if total == 0 {
            return None;
        }
        let flash = match o.tier {
            crate::offload::Tier::Dram => 0,
            crate::offload::Tier::Flash => (total as f64 * (1.0 - o.dram_cache_fraction)).round() as u64,
        };
        Some(WeightStream { flash_bytes: flash, dram_bytes: total - flash, overlap: o.overlap })
    }

    /// The offload settings, if any.
    pub fn offload(&self) -> Option<&OffloadSpec> {
        self.offload.as_ref()
    }

    /// The per-operator breakdown of one iteration.
    pub fn breakdown(&self, shape: &BatchShape) -> Vec<OpCost> {
        let mut v = Vec::with_capacity(11);
        self.for_each_op(shape, |c| v.push(c));
        v
    }

    /// Peak activation memory of one iteration on one GPU, bytes: the larger of the MLP's live
    /// tensors (input, residual, gate/up output, activation) and the fp32 logits of sampled tokens.
    pub fn activation_bytes(&self, tokens: u64, sampled: u64) -> u64 {
        let t = tokens as f64;
        let act = if self.moe_share > 0.0 { self.moe_act_width } else { 0.0 };
        let act = if self.dense_share > 0.0 { act.max(self.dense_width) } else { act };
        let mlp = t * (2.0 * self.h + 3.0 * act) * self.b;
        let logits = sampled as f64 * self.model.vocab_size as f64 * 4.0 + t * self.h * self.b;
        mlp.max(logits).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;

    fn h100() -> GpuSpec {
        GpuSpec { name: "h100-sxm".into(), peak_flops: 989.4e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, sm_count: 132 }
    }

    fn a100() -> GpuSpec {
        GpuSpec { name: "a100-80gb-sxm".into(), peak_flops: 312e12, memory_bytes: 80_000_000_000, memory_bandwidth: 2.039e12, link_bandwidth: 300e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 400.0, idle_watts: 50.0, memory_bound_activity: 0.3, sm_count: 108 }
    }

    /// Peak rates, no overheads: the cost is the pure roofline, easy to compute by hand.
    fn ideal() -> Efficiency {
        Efficiency { gemm_compute: 1.0, attention_compute: 1.0, memory: 1.0, attention_memory: None, elementwise_memory: None, collective: 1.0, iteration_overhead: 0.0, layer_overhead: 0.0, attention_cta: None, gemm_ridge_exponent: None, prefill_pad_tokens: None }
    }

    fn op(costs: &[OpCost], which: Op) -> OpCost {
        *costs.iter().find(|c| c.op == which).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
    }

    #[test]
    fn llama3_8b_h100_decode_is_weight_bandwidth_bound() {
        // One decode at context 1: QKV GEMM 4096 x (4096 + 2*1024) = 4096 x 6144.
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_decode(1);
        let c = cm.breakdown(&s);
        let qkv = op(&c, Op::QkvProj);
        let bytes_per_layer = (4096.0 * 6144.0 + 4096.0 + 6144.0) * 2.0;
        assert!(close(qkv.bytes, 32.0 * bytes_per_layer));
        assert!(close(qkv.seconds, 32.0 * bytes_per_layer / 3.35e12));
        assert!(!qkv.compute_bound);
        // MLP gate+up: 4096 x 28672 weights.
        let gu = op(&c, Op::MlpGateUp);
        assert!(close(gu.seconds, 32.0 * (4096.0 * 28672.0 + 4096.0 + 28672.0) * 2.0 / 3.35e12));
        // LM head reads 4096 x 128256 bf16 weights and writes one row of fp32 logits.
        let lm = op(&c, Op::LmHead);
        let lm_bytes = (4096.0 * 128256.0 + 4096.0 + 128256.0) * 2.0 + 2.0 * 4096.0 * 2.0 + 128256.0 * 4.0;
        assert!(close(lm.seconds, lm_bytes / 3.35e12));
        // The whole step is close to the weights it reads over the bandwidth: 16.06 GB of weights
        // less the 1.05 GB embedding table (only one row is read) = 15.01 GB / 3.35 TB/s = 4.48 ms.
        let total = cm.iteration_seconds(&s);
        assert!(total > 4.47e-3 && total < 4.50e-3, "total {total}");
    }

    #[test]
    fn llama3_8b_h100_prefill_is_compute_bound() {
        // Prefill of 2048 tokens: QKV flops 2 * 2048 * 4096 * 6144 per layer.
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(2048, 0, true);
        let c = cm.breakdown(&s);
        let qkv = op(&c, Op::QkvProj);
        assert!(qkv.compute_bound);
        assert!(close(qkv.seconds, 32.0 * 2.0 * 2048.0 * 4096.0 * 6144.0 / 989.4e12));
        // Causal attention: 4 * 4096 * (2048 * 2049 / 2) flops per layer.
        let att = op(&c, Op::PrefillAttention);
        assert!(close(att.flops, 32.0 * 4.0 * 4096.0 * 2048.0 * 2049.0 / 2.0));
        assert!(close(att.seconds, att.flops / 989.4e12));
        // Only one token is sampled: the LM head GEMM has one row.
        let lm = op(&c, Op::LmHead);
        assert!(close(lm.flops, 2.0 * 4096.0 * 128256.0));
    }

    #[test]
    fn llama2_70b_a100_tp4_decode_batch() {
        // 64 decodes at context 1024 on 4 x A100, Llama-2-70B (8 KV heads -> 2 per GPU).
        let cm = CostModel::new(llama2_70b(), a100(), ideal(), 4).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(1024);
        }
        let c = cm.breakdown(&s);
        // Decode attention reads K and V: 2 * (2 heads * 128) * 65536 keys * 2 bytes, plus q in / o out.
        let att = op(&c, Op::DecodeAttention);
        let bytes = (2.0 * 64.0 * 2048.0 + 2.0 * 256.0 * 65536.0) * 2.0;
        assert!(close(att.bytes, 80.0 * bytes));
        assert!(close(att.seconds, 80.0 * bytes / 2.039e12));
        // MLP down: 7168 x 8192 per GPU, 64 tokens.
        let down = op(&c, Op::MlpDown);
        let by = (7168.0 * 8192.0 + 64.0 * 7168.0 + 64.0 * 8192.0) * 2.0;
        assert!(close(down.seconds, 80.0 * by / 2.039e12));
        // Two ring all-reduces of 64 x 8192 x 2 bytes per layer over 300 GB/s, 6 steps of 2 us each.
        let ar = op(&c, Op::AllReduce);
        let one = 6.0 * 2e-6 + 6.0 / 4.0 * (64.0 * 8192.0 * 2.0) / 300e9;
        assert!(close(ar.seconds, 2.0 * 80.0 * one));
    }

    #[test]
    fn llama2_7b_a100_chunk_after_cache() {
        // A 512-token chunk after 1536 cached tokens: pairs = 512 * (1536 + 256.5).
        let cm = CostModel::new(llama2_7b(), a100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(512, 1536, false);
        assert_eq!(s.sampled, 0);
        let c = cm.breakdown(&s);
        assert!(c.iter().all(|x| x.op != Op::LmHead), "no token sampled, no LM head");
        let att = op(&c, Op::PrefillAttention);
        assert!(close(att.flops, 32.0 * 4.0 * 4096.0 * 512.0 * (1536.0 + 256.5)));
        let mlp = op(&c, Op::MlpGateUp);
        assert!(close(mlp.seconds, 32.0 * 2.0 * 512.0 * 4096.0 * 22016.0 / 312e12));
        assert!(mlp.compute_bound);
    }

    #[test]
    fn efficiency_and_overheads_scale_time() {
        let mut eff = ideal();
        let base = CostModel::new(llama3_8b(), h100(), eff.clone(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_decode(100);
        let t0 = base.iteration_seconds(&s);
        eff.memory = 0.5;
        eff.iteration_overhead = 1e-3;
        let slow = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let t1 = slow.iteration_seconds(&s);
        // Every operator of a single decode is memory-bound, so halving bandwidth doubles it.
        assert!(close(t1, 2.0 * t0 + 1e-3));
    }

    #[test]
    fn decode_attention_waits_for_the_longest_sequence_once_the_batch_fills_the_gpu() {
        let mut half = ideal();
        half.attention_memory = Some(0.5);
        let plain = CostModel::new(llama3_8b(), h100(), half.clone(), 1).unwrap();
        let cm = CostModel::new(llama3_8b(), h100(), Efficiency { attention_cta: Some(0.4), ..half }, 1).unwrap();
        let attn = |cm: &CostModel, ctx: &[u64]| {
            let mut s = BatchShape::default();
            ctx.iter().for_each(|&c| s.add_decode(c));
            op(&cm.breakdown(&s), Op::DecodeAttention)
        };
        // 32 sequences x 8 KV heads = 256 blocks >= 0.8 x 2 x 132 SMs: no split, one long sequence
        // sets the time: 2 x 128 x 2500 x 2 bytes at 0.4 x 3.35 TB/s / 132, on each of 32 layers.
        let mut ctx = vec![256; 31];
        ctx.push(2500);
        let tail = 32.0 * 2.0 * 128.0 * 2500.0 * 2.0 / (3.35e12 / 132.0 * 0.4);
        let a = attn(&cm, &ctx);
        assert!(close(a.seconds, tail) && !a.compute_bound);
        assert!(attn(&plain, &ctx).seconds < 0.25 * tail, "without attention_cta, only the bytes count");
        // The same bytes at one context: 256 blocks at 0.4 of an SM's share each outrun 0.5 of the
        // bandwidth, so the kernel stays bandwidth-bound as before.
        let uniform = vec![(31 * 256 + 2500) / 32; 32];
        assert!(close(attn(&cm, &uniform).seconds, attn(&plain, &uniform).seconds));
        // 16 sequences (128 blocks): FlashAttention splits the long one's keys, no tail.
        let mut few = vec![256; 15];
        few.push(2500);
        assert!(close(attn(&cm, &few).seconds, attn(&plain, &few).seconds));
        let mut bad = ideal();
        bad.attention_cta = Some(0.0);
        assert!(CostModel::new(llama3_8b(), h100(), bad, 1).is_err());
    }

    #[test]
    fn gemm_ridge_exponent_blends_compute_and_memory_time() {
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let cm = CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(2.0), ..ideal() }, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(256, 0, true);
        // O projection of 256 tokens (4096 x 4096, bf16), per layer: compute 2 x 256 x 4096^2 /
        // 989.4e12 = 8.682 us, memory (4096^2 + 2 x 256 x 4096) x 2 B / 3.35e12 = 11.268 us; the
        // roofline takes 11.268 us, p = 2 gives sqrt(8.682^2 + 11.268^2) = 14.225 us; 32 layers.
        let c: f64 = 2.0 * 256.0 * 4096.0 * 4096.0 / 989.4e12;
        let m: f64 = (4096.0 * 4096.0 + 2.0 * 256.0 * 4096.0) * 2.0 / 3.35e12;
        assert!((c - 8.682e-6).abs() < 1e-9 && (m - 11.268e-6).abs() < 1e-9);
        assert!(close(op(&plain.breakdown(&s), Op::OProj).seconds, 32.0 * m));
        let o = op(&cm.breakdown(&s), Op::OProj);
        assert!(close(o.seconds, 32.0 * (c * c + m * m).sqrt()) && (o.seconds - 32.0 * 14.225e-6).abs() < 32.0 * 1e-9);
        assert!(!o.compute_bound);
        // Non-GEMM operators keep the max.
        for which in [Op::PrefillAttention, Op::Elementwise] {
            assert!(close(op(&cm.breakdown(&s), which).seconds, op(&plain.breakdown(&s), which).seconds));
        }
        // Far from the ridge the blend is the max (p = 2: 1 + (m/c)^2 / 2 of it).
        let mut big = BatchShape::default();
        big.add_prefill(8192, 0, true);
        let (a, b) = (op(&cm.breakdown(&big), Op::MlpGateUp).seconds, op(&plain.breakdown(&big), Op::MlpGateUp).seconds);
        assert!(a > b && a < 1.01 * b);
        // A large exponent is the max.
        let sharp = CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(1e3), ..ideal() }, 1).unwrap();
        assert!((op(&sharp.breakdown(&s), Op::OProj).seconds / (32.0 * m) - 1.0).abs() < 1e-6);
        assert!(CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(0.5), ..ideal() }, 1).is_err());
    }

    #[test]
    fn prefill_padding_charges_the_padded_tokens_to_gemms_only() {
        let padded = CostModel::new(llama3_8b(), h100(), Efficiency { prefill_pad_tokens: Some(64), ..ideal() }, 1).unwrap();
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let shape = |n: u64| {
            let mut s = BatchShape::default();
            s.add_prefill(n, 0, true);
            s
        };
        // 132 tokens run the GEMMs and norms of 192; attention and sampling stay those of 132.
        let (a, b) = (padded.breakdown(&shape(132)), plain.breakdown(&shape(192)));
        for which in [Op::QkvProj, Op::OProj, Op::MlpGateUp, Op::MlpDown, Op::Elementwise] {
            assert!(close(op(&a, which).seconds, op(&b, which).seconds));
        }
        let c = plain.breakdown(&shape(132));
        assert!(close(op(&a, Op::PrefillAttention).seconds, op(&c, Op::PrefillAttention).seconds));
        assert!(close(padded.iteration_seconds(&shape(128)), plain.iteration_seconds(&shape(128))));
    }

    #[test]
    fn attention_memory_efficiency_applies_to_kv_reads_only() {
        let mut eff = ideal();
        eff.attention_memory = Some(0.5);
        let cm = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..8 {
            s.add_decode(4096);
        }
        let c = cm.breakdown(&s);
        let att = op(&c, Op::DecodeAttention);
        assert!(close(att.seconds, att.bytes / (0.5 * 3.35e12)));
        let qkv = op(&c, Op::QkvProj);
        assert!(close(qkv.seconds, qkv.bytes / 3.35e12));
    }

    #[test]
    fn elementwise_memory_efficiency_applies_to_elementwise_only() {
        let mut eff = ideal();
        eff.elementwise_memory = Some(0.25);
        let cm = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(1000, 0, true);
        let c = cm.breakdown(&s);
        // Per layer: T * b * (10h + 2(q + kv) + 3I + 2kv) bytes = 1000 * 2 * (40960 + 10240 + 43008 + 2048).
        let el = op(&c, Op::Elementwise);
        assert!(close(el.bytes, 32.0 * 1000.0 * 2.0 * 96256.0));
        assert!(close(el.seconds, el.bytes / (0.25 * 3.35e12)));
        let mlp = op(&c, Op::MlpDown);
        assert!(close(mlp.seconds, mlp.flops / 989.4e12));
    }

    #[test]
    fn power_cap_slows_compute_bound_prefill_not_memory_bound_decode() {
        // Capped at 70% of TDP (490 W): compute-bound kernels would draw 700 W and stretch by
        // (700/490)^0.74 = 1.302; memory-bound ones draw 70 + 630 * 0.3 = 259 W, under the cap.
        let base = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let capped = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(490.0)).unwrap();
        let mut prefill = BatchShape::default();
        prefill.add_prefill(4096, 0, true);
        let mut decode = BatchShape::default();
        for _ in 0..8 {
            decode.add_decode(1000);
        }
        let stretch = (700.0f64 / 490.0).powf(0.74);
        assert!((stretch - 1.302).abs() < 0.001);
        let p = capped.iteration_seconds(&prefill) / base.iteration_seconds(&prefill);
        assert!(p > 1.25 && p <= stretch + 1e-9, "prefill stretch {p}");
        let d = capped.iteration_seconds(&decode) / base.iteration_seconds(&decode);
        assert!(close(d, 1.0), "decode stretch {d}");
    }

    #[test]
    fn busy_power_follows_compute_share_and_cap() {
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let pm = cm.power();
        assert!(close(pm.busy_watts(0.0), 70.0 + 630.0 * 0.3));
        assert!(close(pm.busy_watts(1.0), 700.0));
        let capped = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(400.0)).unwrap();
        assert!(close(capped.power().busy_watts(1.0), 400.0));
        let mut s = BatchShape::default();
        s.add_prefill(2048, 0, true);
        let it = cm.iteration(&s);
        assert!(it.compute_bound_seconds > 0.8 * it.seconds, "a long prefill is mostly compute-bound");
        assert!(CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(-5.0)).is_err());
    }

    #[test]
    fn pipeline_bubble_arithmetic() {
        // 64 decodes on 4 stages x 4 micro-batches: the layers take 7 slots of 16 decodes
        // through 8 layers (bubble 3/7), plus one activation send per slot.
        let full = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap();
        let pp = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(4, Some(4)).unwrap();
        let mut s64 = BatchShape::default();
        let mut s16 = BatchShape::default();
        for i in 0..64 {
            s64.add_decode(1000);
            if i < 16 {
                s16.add_decode(1000);
            }
        }
        let layer_ops = |cm: &CostModel, s: &BatchShape| -> f64 {
            cm.breakdown(s).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead | Op::PipelineSend)).map(|c| c.seconds).sum()
        };
        let micro_all_layers = layer_ops(&full, &s16);
        let expected = 7.0 * micro_all_layers * 20.0 / 80.0;
        assert!(close(layer_ops(&pp, &s64), expected));
        let send = op(&pp.breakdown(&s64), Op::PipelineSend);
        assert!(close(send.seconds, 7.0 * (2e-6 + 16.0 * 8192.0 * 2.0 / 300e9)));
        // Embedding and LM head are charged once on the whole batch, as without pipelining.
        assert!(close(op(&pp.breakdown(&s64), Op::LmHead).seconds, op(&full.breakdown(&s64), Op::LmHead).seconds));
        // More micro-batches shrink the bubble: 16 slots of 4 decodes instead of 7 of 16.
        let pp16 = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(4, Some(16)).unwrap();
        assert!(pp16.iteration_seconds(&s64) > 0.0);
        assert_eq!(pp.gpus(), 4);
    }

    #[test]
    fn pipeline_memory_is_split_by_stage() {
        let pp = CostModel::new(llama2_70b(), a100(), ideal(), 2).unwrap().with_pipeline(4, None).unwrap();
        // 20 of 80 layers per stage, plus the 32000 x 8192 embedding, over tp = 2.
        let m = llama2_70b();
        let expected = ((20 * m.layer_params() + 32000 * 8192 + 8192) * 2).div_ceil(2);
        assert_eq!(pp.weight_bytes_per_gpu(), expected);
        assert_eq!(pp.kv_bytes_per_token_per_gpu(), 2 * 20 * 4 * 128 * 2);
        assert!(CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(0, None).is_err());
    }

    #[test]
    fn tensor_parallelism_across_nodes_runs_collectives_over_the_nic() {
        // Llama-2-70B, 64 decodes, TP16 on nodes of 8: the ring's slowest hop is a 50 GB/s NIC
        // with 5 us steps, not 450 GB/s NVLink with 2 us steps.
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(1000);
        }
        let cm = CostModel::new(llama2_70b(), h100(), ideal(), 16).unwrap().with_nodes(8).unwrap();
        assert_eq!(cm.nodes(), 2);
        let ar = op(&cm.breakdown(&s), Op::AllReduce);
        let msg = 64.0 * 8192.0 * 2.0;
        let one = 30.0 * 5e-6 + 30.0 / 16.0 * msg / 50e9;
        assert!(close(ar.seconds, 2.0 * 80.0 * one));
        let inside = CostModel::new(llama2_70b(), h100(), ideal(), 8).unwrap().with_nodes(8).unwrap();
        assert_eq!(inside.nodes(), 1);
        let ar8 = op(&inside.breakdown(&s), Op::AllReduce);
        assert!(close(ar8.seconds, 2.0 * 80.0 * (14.0 * 2e-6 + 14.0 / 8.0 * msg / 450e9)));
        // Two stages of TP8 on two nodes: the stage hop crosses the NIC, the TP ring does not.
        let pp = CostModel::new(llama2_70b(), h100(), ideal(), 8).unwrap().with_pipeline(2, Some(2)).unwrap().with_nodes(8).unwrap();
        let send = op(&pp.breakdown(&s), Op::PipelineSend);
        assert!(close(send.seconds, 3.0 * (5e-6 + 32.0 * 8192.0 * 2.0 / 50e9)));
        let mut no_nic = h100();
        no_nic.nic_bandwidth = 0.0;
        assert!(CostModel::new(llama2_70b(), no_nic, ideal(), 16).unwrap().with_nodes(8).is_err());
    }

    fn pim() -> PimSpec {
        // AttAcc-like bank-level PIM on 5 HBM3 stacks: 9 x 670.4 GB/s internal per stack, 1 FLOP per byte.
        PimSpec { name: "hbm3-pim".into(), peak_flops: 30.168e12, internal_bandwidth: 30.168e12, efficiency: 1.0 }
    }

    #[test]
    fn pim_takes_low_op_per_byte_operators() {
        let gpu = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let with = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_pim(Some(pim())).unwrap();
        // Crossover: the PIM's 30.2 TFLOP/s over the GPU's 3.35 TB/s = 9.0 FLOP/B.
        assert!(close(with.pim_crossover_intensity().unwrap(), 30.168e12 / 3.35e12));
        // 8 decodes at context 4096: decode attention is 4 FLOP/B (GQA 32:8) -> PIM. A bank-level PIM
        // does 1 FLOP per byte, so GQA attention is compute-bound there (the limit Duplex's Logic-PIM
        // lifts) yet still 1.8x faster than the GPU streaming the KV cache. The 8-token GEMMs are
        // ~8 FLOP/B -> PIM; the LM head stays on the GPU (not a layer op).
        let mut d = BatchShape::default();
        for _ in 0..8 {
            d.add_decode(4096);
        }
        let c = with.breakdown(&d);
        let att = op(&c, Op::DecodeAttention);
        assert!(att.on_pim);
        assert!((att.flops / att.bytes - 3.99).abs() < 0.02);
        assert!(att.compute_bound);
        assert!(close(att.seconds, att.flops / 30.168e12));
        assert!(att.seconds < op(&gpu.breakdown(&d), Op::DecodeAttention).seconds / 1.7);
        assert!(op(&c, Op::QkvProj).on_pim);
        assert!(!op(&c, Op::LmHead).on_pim);
        // Weight-streaming GEMMs at 8 FLOP/B gain little (8 x B / 30.2 TFLOP/s against B / 3.35 TB/s).
        assert!(with.iteration_seconds(&d) < 0.9 * gpu.iteration_seconds(&d));
        // A 2048-token prefill is ~1000+ FLOP/B: everything stays on the GPU, time unchanged.
        let mut p = BatchShape::default();
        p.add_prefill(2048, 0, true);
        let cp = with.breakdown(&p);
        assert!(cp.iter().filter(|o| matches!(o.op, Op::QkvProj | Op::MlpGateUp | Op::PrefillAttention)).all(|o| !o.on_pim));
        // 64-token GEMMs (64 FLOP/B, above the 9 FLOP/B crossover) stay on the GPU.
        let mut g = BatchShape::default();
        for _ in 0..64 {
            g.add_decode(100);
        }
        assert!(!op(&with.breakdown(&g), Op::MlpGateUp).on_pim);
    }

    #[test]
    fn pim_decode_attention_overlaps_gpu_prefill_attention() {
        let with = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_pim(Some(pim())).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(512, 3000, true);
        for _ in 0..32 {
            s.add_decode(4000);
        }
        let c = with.breakdown(&s);
        let pre = op(&c, Op::PrefillAttention);
        let dec = op(&c, Op::DecodeAttention);
        assert!(!pre.on_pim && dec.on_pim);
        let alone = dec.flops / 30.168e12;
        assert!(alone > pre.seconds);
        assert!(close(dec.seconds, alone - pre.seconds));
    }

    fn offload(tier: crate::offload::Tier, overlap: bool) -> OffloadSpec {
        OffloadSpec {
            tier,
            layer_fraction: 1.0,
            ffn_load_fraction: 1.0,
            dram_cache_fraction: 0.0,
            overlap,
            flash: Some(crate::offload::FlashSpec { name: "nvme".into(), read_bandwidth: 7e9, latency: 80e-6, iops: None }),
            queue_depth: 32,
            read_chunk_bytes: 64 << 10,
            capacity_bytes: 1 << 40,
        }
    }

    #[test]
    fn weight_streaming_time_from_dram_and_flash() {
        use crate::offload::Tier;
        let mut one = BatchShape::default();
        one.add_decode(100);
        let layer_bytes = llama2_7b().layer_params() as f64 * 2.0;
        // All 32 layers of Llama-2-7B in DRAM, no overlap: each layer's 404 MB cross 64 GB/s PCIe.
        let dram = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Dram, false))).unwrap();
        let wf = op(&dram.breakdown(&one), Op::WeightFetch);
        assert!((layer_bytes - 2.0 * 4096.0 * 2.0 - dram.layer_fetch_bytes()).abs() < 1.0, "the two norm vectors are not fetched");
        assert!(close(wf.seconds, 5e-6 + 32.0 * dram.layer_fetch_bytes() / 64e9));
        // From flash at 7 GB/s (64 KiB reads at depth 32 saturate the drive): flash paces the stream.
        let flash = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Flash, false))).unwrap();
        let ff = op(&flash.breakdown(&one), Op::WeightFetch);
        assert!(close(ff.seconds, 80e-6 + 32.0 * flash.layer_fetch_bytes() / 7e9));
        // LLM in a flash: load 10% of the FFN; only attention + 10% FFN are read.
        let mut sparse = offload(Tier::Flash, false);
        sparse.ffn_load_fraction = 0.1;
        let sp = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(sparse)).unwrap();
        let attn = (4096.0 * (4096.0 * 3.0) + 4096.0 * 4096.0) * 2.0;
        let ffn = 3.0 * 4096.0 * 11008.0 * 2.0;
        assert!(close(sp.layer_fetch_bytes(), attn + 0.1 * ffn));
        assert!(sp.iteration_seconds(&one) < 0.5 * flash.iteration_seconds(&one));
        // Overlap hides the fetch behind compute up to each layer's compute time.
        let ov = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Dram, true))).unwrap();
        let plain = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap();
        let layer_compute: f64 = plain.breakdown(&one).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead)).map(|c| c.seconds).sum::<f64>() / 32.0;
        let fetch = 5e-6 + 32.0 * ov.layer_fetch_bytes() / 64e9;
        let compute: f64 = ov.breakdown(&one).iter().filter(|c| c.op != Op::WeightFetch).map(|c| c.seconds).sum();
        assert!(close(compute, plain.iteration_seconds(&one)));
        assert!(close(op(&ov.breakdown(&one), Op::WeightFetch).seconds, (fetch - compute).max(0.0)));
        assert!(layer_compute > 0.0);
        let stream = ov.weight_stream().unwrap();
        assert_eq!((stream.flash_bytes, stream.overlap), (0, true));
        assert_eq!(stream.dram_bytes, (32.0 * ov.layer_fetch_bytes()).round() as u64);
        // HBM holds only two staging layers of the 32.
        assert!(ov.weight_bytes_per_gpu() < plain.weight_bytes_per_gpu() / 4);
    }

    #[test]
    fn offloaded_weights_must_fit_their_tier() {
        let mut o = offload(crate::offload::Tier::Dram, true);
        o.capacity_bytes = 1 << 30;
        let e = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(o)).unwrap_err();
        assert!(matches!(e, Error::Capacity { .. }));
    }

    #[test]
    fn moe_experts_are_charged_by_tokens_and_unique_experts() {
        let cm = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        let expert = 3.0 * 4096.0 * 14336.0;
        // One decode touches its 2 experts: weight-bound on 2 experts' weights.
        let mut one = BatchShape::default();
        one.add_decode(100);
        let e1 = op(&cm.breakdown(&one), Op::MoeExperts);
        assert!(close(e1.bytes, 32.0 * (2.0 * expert + 2.0 * (2.0 * 4096.0 + 3.0 * 14336.0)) * 2.0));
        assert!(close(e1.flops, 32.0 * 2.0 * 2.0 * expert));
        // Four decodes touch 8 (1 - (3/4)^4) = 5.47 experts on average.
        let mut four = BatchShape::default();
        for _ in 0..4 {
            four.add_decode(100);
        }
        let u = 8.0 * (1.0 - 0.75f64.powi(4));
        let e4 = op(&cm.breakdown(&four), Op::MoeExperts);
        assert!(close(e4.bytes, 32.0 * (u * expert + 8.0 * (2.0 * 4096.0 + 3.0 * 14336.0)) * 2.0));
        assert!(cm.breakdown(&one).iter().all(|c| c.op != Op::MlpGateUp), "no dense MLP in Mixtral");
        // Active weights of a decode: attention + 2 experts, not 8.
        let t1 = cm.iteration_seconds(&one);
        let dense_equiv = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        assert!(t1 > dense_equiv.iteration_seconds(&one) && t1 < 2.0 * dense_equiv.iteration_seconds(&one));
    }

    #[test]
    fn expert_parallel_all_to_all() {
        // Mixtral on 2 GPUs: TP2 shards every expert; EP2 keeps 4 whole experts per GPU and adds an
        // all-to-all dispatch and combine of the token-expert pairs instead of the FFN all-reduce.
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(500);
        }
        let tp = CostModel::new(mixtral_8x7b(), h100(), ideal(), 2).unwrap();
        let ep = CostModel::new(mixtral_8x7b(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).unwrap();
        let a2a = op(&ep.breakdown(&s), Op::AllToAll);
        // 128 pairs, half of them per GPU, half of those cross: 32 x 4096 x 2 bytes each way.
        let one_way = 2e-6 + 32.0 * 4096.0 * 2.0 / 450e9;
        assert!(close(a2a.seconds, 32.0 * 2.0 * one_way));
        assert!(close(a2a.bytes, 32.0 * 2.0 * 32.0 * 4096.0 * 2.0));
        let ar_tp = op(&tp.breakdown(&s), Op::AllReduce);
        let ar_ep = op(&ep.breakdown(&s), Op::AllReduce);
        assert!(close(ar_ep.seconds, ar_tp.seconds / 2.0));
        // About the same expert bytes per GPU (all 8 experts touched): 4 whole vs 8 halves; only the
        // activations differ (fewer, wider token-expert pairs per GPU with EP).
        let (be, bt) = (op(&ep.breakdown(&s), Op::MoeExperts).bytes, op(&tp.breakdown(&s), Op::MoeExperts).bytes);
        assert!((be / bt - 1.0).abs() < 1e-3);
        assert!(CostModel::new(llama3_8b(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).is_err());
        assert!(CostModel::new(mixtral_8x7b(), h100(), ideal(), 4).unwrap().with_expert_parallel(2).is_err());
    }

    /// The FLOPs and bytes of a GEMM as the cost model charges it (bf16).
    fn gemm(t: f64, k: f64, n: f64) -> (f64, f64) {
        (2.0 * t * k * n, (k * n + t * k + t * n) * 2.0)
    }

    #[test]
    fn deepseek_v2_lite_h100_decode_reads_the_latent_cache() {
        // 8 decodes at context 4096 on one H100: 32768 cached tokens, 16 heads, latent 512, RoPE key 64.
        let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..8 {
            s.add_decode(4096);
        }
        let c = cm.breakdown(&s);
        let (ds, kv) = (8.0, 32768.0);
        // Absorbed attention reads the 576-wide cache once for all heads; besides it, the absorbed
        // queries (16 heads x 576) are read and the latent outputs (16 heads x 512) written.
        let att = op(&c, Op::DecodeAttention);
        let cache = 27.0 * kv * 576.0 * 2.0;
        let activations = 27.0 * (ds * 16.0 * 576.0 + ds * 16.0 * 512.0) * 2.0;
        assert!(close(att.bytes, cache + activations));
        assert!(close(att.flops, 27.0 * (2.0 * 16.0 * 576.0 * kv + 2.0 * 16.0 * 512.0 * kv)));
        assert!(!att.compute_bound);
        assert!(close(att.seconds, att.bytes / 3.35e12));
        // QKV: q_proj 2048 x 3072 and kv_a_proj 2048 x 576 on the 8 tokens, and W_UK absorbed into the
        // queries (16 heads x 128 x 512); no kv_b expansion without prefill. Each its own roofline.
        let qkv = op(&c, Op::QkvProj);
        let parts = [gemm(ds, 2048.0, 3072.0), gemm(ds, 2048.0, 576.0), (16.0 * gemm(ds, 128.0, 512.0).0, 16.0 * gemm(ds, 128.0, 512.0).1)];
        assert!(close(qkv.bytes, 27.0 * parts.iter().map(|p| p.1).sum::<f64>()));
        assert!(close(qkv.flops, 27.0 * parts.iter().map(|p| p.0).sum::<f64>()));
        assert!(close(qkv.seconds, qkv.bytes / 3.35e12), "all memory-bound at 8 tokens");
        // O: W_UV (16 heads x 512 x 128) then o_proj 2048 x 2048.
        let o = op(&c, Op::OProj);
        assert!(close(o.bytes, 27.0 * (16.0 * gemm(ds, 512.0, 128.0).1 + gemm(ds, 2048.0, 2048.0).1)));
        // The KV-cache write in the elementwise op is the 576-wide latent, and RoPE touches the
        // 16 x 64 query and one 64 key; layer 0 runs SiLU-mul over 10944, the MoE layers over 6 x 1408
        // routed + 2 x 1408 shared.
        let elem = |act: f64| ds * 2.0 * (10.0 * 2048.0 + 2.0 * (16.0 * 64.0 + 64.0) + 2.0 * 512.0 + 3.0 * act + 576.0);
        assert!(close(op(&c, Op::Elementwise).bytes, 26.0 * elem(8.0 * 1408.0) + elem(10944.0)));
    }

    #[test]
    fn deepseek_v2_lite_dense_first_layer_charges_one_dense_mlp() {
        let ds = deepseek_v2_lite();
        let mut all_moe = deepseek_v2_lite();
        all_moe.first_dense_layers = 0;
        let cm = CostModel::new(ds, h100(), ideal(), 1).unwrap();
        let moe = CostModel::new(all_moe, h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..8 {
            s.add_decode(1000);
        }
        let (c, m) = (cm.breakdown(&s), moe.breakdown(&s));
        // MLP gate+up: the 2 x 1408 shared experts on 26 layers, the 10944-wide MLP on exactly one.
        let shared = gemm(8.0, 2048.0, 2.0 * 2816.0);
        let dense = gemm(8.0, 2048.0, 2.0 * 10944.0);
        let gu = op(&c, Op::MlpGateUp);
        assert!(close(gu.flops, 26.0 * shared.0 + dense.0));
        assert!(close(gu.bytes, 26.0 * shared.1 + dense.1));
        assert!(close(gu.seconds, (26.0 * shared.1 + dense.1) / 3.35e12));
        assert!(close(gu.flops - op(&m, Op::MlpGateUp).flops, dense.0 - shared.0));
        let down = op(&c, Op::MlpDown);
        assert!(close(down.bytes, 26.0 * gemm(8.0, 2816.0, 2048.0).1 + gemm(8.0, 10944.0, 2048.0).1));
        // Router and routed experts run on 26 of the 27 layers.
        for which in [Op::MoeRouter, Op::MoeExperts] {
            let (a, b) = (op(&c, which), op(&m, which));
            assert!(close(a.flops, b.flops * 26.0 / 27.0) && close(a.bytes, b.bytes * 26.0 / 27.0) && close(a.seconds, b.seconds * 26.0 / 27.0));
        }
        assert!(close(op(&c, Op::MoeRouter).flops, 26.0 * gemm(8.0, 2048.0, 64.0).0));
    }

    #[test]
    fn deepseek_v2_lite_prefill_expands_the_latent() {
        // A 4096-token prompt: kv_b_proj expands the 4096 latents to 16 heads x (128 + 128) K/V,
        // then attention runs with 192-wide queries/keys and 128-wide values.
        let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(4096, 0, true);
        let c = cm.breakdown(&s);
        let pairs = 4096.0 * 4097.0 / 2.0;
        let att = op(&c, Op::PrefillAttention);
        assert!(close(att.flops, 27.0 * 2.0 * 16.0 * (192.0 + 128.0) * pairs));
        assert!(close(att.bytes, 27.0 * (4096.0 + 4096.0) * 16.0 * 320.0 * 2.0));
        // 1024 FLOP/B: compute-bound (a 1024-token prompt, at 256 FLOP/B, is not on an H100).
        assert!(att.compute_bound);
        let qkv = op(&c, Op::QkvProj);
        assert!(close(qkv.flops, 27.0 * 2.0 * 4096.0 * (2048.0 * 3072.0 + 2048.0 * 576.0 + 512.0 * 4096.0)));
        assert!(close(qkv.seconds, qkv.flops / 989.4e12));
        assert!(close(op(&c, Op::OProj).flops, 27.0 * 2.0 * 4096.0 * 2048.0 * 2048.0));
        assert!(c.iter().all(|x| x.op != Op::DecodeAttention));
    }

    #[test]
    fn deepseek_v2_lite_memory_and_collectives() {
        let m = deepseek_v2_lite();
        // KV: the whole 576-wide latent on every GPU, whatever the tp.
        let tp2 = CostModel::new(m.clone(), h100(), ideal(), 2).unwrap();
        assert_eq!(tp2.kv_bytes_per_token_per_gpu(), 31_104);
        // Weights: kv_a_proj_with_mqa (2048 x 576) and kv_a_layernorm (512) are replicated, the rest halved.
        let rep = 27 * (2048 * 576 + 512);
        assert_eq!(tp2.weight_bytes_per_gpu(), (m.total_params() - rep) * 2 / 2 + rep * 2);
        assert_eq!(CostModel::new(m.clone(), h100(), ideal(), 1).unwrap().weight_bytes_per_gpu(), m.weight_bytes());
        // Three stages of 9 layers: the first holds the dense layer, so a later stage is the largest.
        let pp = CostModel::new(m.clone(), h100(), ideal(), 1).unwrap().with_pipeline(3, None).unwrap();
        assert_eq!(pp.weight_bytes_per_gpu(), (9 * m.layer_params() + 102400 * 2048 + 2048) * 2);
        assert_eq!(pp.kv_bytes_per_token_per_gpu(), 9 * 1152);
        // TP2 + EP2, 64 decodes: attention's all-reduce on 27 layers, the dense MLP's on 1, and the
        // expert all-to-alls (dispatch + combine) on 26.
        let ep = CostModel::new(m.clone(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(500);
        }
        let c = ep.breakdown(&s);
        let msg = 64.0 * 2048.0 * 2.0;
        let one = 2.0 * 2e-6 + msg / 450e9;
        assert!(close(op(&c, Op::AllReduce).seconds, 28.0 * one));
        let one_way = 2e-6 + 64.0 * 6.0 / 2.0 * 2048.0 * 2.0 / 2.0 / 450e9;
        assert!(close(op(&c, Op::AllToAll).seconds, 26.0 * 2.0 * one_way));
        let tp_only = tp2.breakdown(&s);
        assert!(close(op(&tp_only, Op::AllReduce).seconds, 2.0 * 27.0 * one));
    }

    #[test]
    fn bad_mla_or_dense_layer_configs_are_errors() {
        let mut m = deepseek_v2_lite();
        m.first_dense_layers = 28;
        assert!(matches!(CostModel::new(m, h100(), ideal(), 1).unwrap_err(), Error::Config { .. }));
        let mut m = deepseek_v2_lite();
        m.intermediate_size = 10945;
        let e = CostModel::new(m, h100(), ideal(), 2).unwrap_err();
        assert!(e.to_string().contains("MLP size 10945"), "{e}");
        let mut m = deepseek_v2_lite();
        m.mla.as_mut().unwrap().kv_lora_rank = 0;
        assert!(CostModel::new(m, h100(), ideal(), 1).is_err());
    }

    #[test]
    fn bad_tp_is_a_config_error() {
        let e = CostModel::new(llama3_8b(), h100(), ideal(), 3).unwrap_err();
        assert!(matches!(e, Error::Config { .. }));
        assert!(e.to_string().contains("tp=3"));
    }
}
