//! Efficiency factors that turn datasheet peaks into achieved rates.
//!
//! A roofline with peak numbers is optimistic: real GEMMs reach a fraction of peak FLOP/s, real
//! kernels a fraction of HBM bandwidth, and every iteration pays CPU and launch overhead. These
//! factors are per device; defaults ship in the catalogue and `fleetwise calibrate` refits them.

use serde::{Deserialize, Serialize};

/// Achieved fractions of peak and fixed overheads for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efficiency {
    /// Fraction of peak FLOP/s reached by dense GEMMs (QKV, O, MLP, LM head).
    pub gemm_compute: f64,
    /// Fraction of peak FLOP/s reached by attention kernels.
    pub attention_compute: f64,
    /// Fraction of peak HBM bandwidth reached by streaming kernels (weights, KV reads, elementwise).
    pub memory: f64,
    /// Fraction of peak HBM bandwidth reached by attention kernels reading the KV cache
    /// (defaults to `memory`).
    #[serde(default)]
    pub attention_memory: Option<f64>,
    /// Fraction of peak HBM bandwidth reached by norms, RoPE, residual adds and activations
    /// (defaults to `memory`; unfused engines reach far less than GEMMs streaming weights).
    #[serde(default)]
    pub elementwise_memory: Option<f64>,
    /// Fraction of peak HBM bandwidth reached by a MoE layer's dispatch and combine of its
    /// token-expert pairs (sorting them by expert, gathering and scatter-adding their hidden vectors;
    /// defaults to `elementwise_memory`: gathers and atomic scatters reach far less than fused norms).
    #[serde(default)]
    pub moe_dispatch_memory: Option<f64>,
    /// Fraction of link bandwidth reached by collectives.
    pub collective: f64,
    /// Fixed cost of one iteration (scheduling, sampling, launch), seconds.
    pub iteration_overhead: f64,
    /// Fixed cost per decoder layer per iteration (kernel launch gaps), seconds.
    pub layer_overhead: f64,
    /// Fraction of one SM's share of HBM bandwidth (`memory_bandwidth / sm_count`) that one decode
    /// attention thread block reaches on its own. FlashAttention gives each (sequence, KV head) one
    /// thread block and stops splitting a sequence's keys once the batch fills the GPU, so a decode
    /// batch then lasts at least as long as its longest sequence's block takes to read that
    /// sequence's keys and values. Unset (or a GPU without `sm_count`): no such bound.
    #[serde(default)]
    pub attention_cta: Option<f64>,
    /// Exponent `p` of the GEMMs' blend of compute and memory time, `(c^p + m^p)^(1/p)`: near the
    /// roofline's ridge (compute time close to memory time) real GEMMs reach neither their
    /// FLOP rate nor their bandwidth, so a finite `p` adds time there and almost none far from it.
    /// Unset (or infinite): the roofline's `max(c, m)`.
    #[serde(default)]
    pub gemm_ridge_exponent: Option<f64>,
    /// The engine pads an iteration's prefill tokens up to a multiple of this (CUDA graphs
    /// captured at those sizes): the GEMMs, norms and activations run on the padded count, the
    /// attention on the real prompts only. Unset (or 0/1): no padding.
    #[serde(default)]
    pub prefill_pad_tokens: Option<u32>,
    /// The serving engine's CPU time per scheduled sequence per step (scheduler, input
    /// preparation, sampling and detokenisation bookkeeping), seconds; added to
    /// `iteration_overhead`. Unset: 0.
    #[serde(default)]
    pub seq_overhead: Option<f64>,
    /// The serving engine's CPU time per batched token per step (input preparation), seconds.
    /// Unset: 0.
    #[serde(default)]
    pub token_overhead: Option<f64>,
    /// Query rows the attention kernel computes for each decode of an iteration that also runs
    /// prefill tokens: a variable-length (prefill-style) kernel gives every sequence at least one
    /// query tile, so a decode beside a prompt costs `tile` query rows of FLOPs over its keys.
    /// Unset (or 0/1): a decode costs its one query row.
    #[serde(default)]
    pub mixed_query_tile: Option<u32>,
    /// Query rows the attention kernel computes per decode in a decode-only iteration (a kernel
    /// that packs a KV head's query heads into one tile computes `tile / group` rows per query
    /// head). Unset (or 0/1): one row.
    #[serde(default)]
    pub decode_query_rows: Option<u32>,
    /// Query rows the attention kernel computes for each (sequence, query head) of a speculative
    /// verify chunk (GQA): FlashAttention-2's variable-length kernel runs a chunk of k + 1 queries
    /// on its prefill path, one thread block per (sequence, query head) computing a whole query
    /// tile over all the sequence's keys, which are not split over blocks (PyTorch's kernel,
    /// measured in `calibration/h100-vllm-like/verify`). Unset (or 0): a verify chunk attends as
    /// a prefill chunk of its own query rows (a kernel that packs a KV head's queries and splits
    /// long keys: FlashAttention-3's short-query path).
    #[serde(default)]
    pub verify_query_tile: Option<u32>,
    /// Fixed cost per MoE layer per iteration, seconds: the fused-MoE path's routing, top-k,
    /// token sort and grouped-GEMM launches, paid even for one token. Unset: 0.
    #[serde(default)]
    pub moe_layer_overhead: Option<f64>,
    /// Multiplies every operator's time: the error-bar runs set it to `1 ± r`, `r` the engine
    /// profile's calibration residual. Unset: 1.
    #[serde(default)]
    pub time_scale: Option<f64>,
    /// The engine prepares the next step on the CPU while the GPU runs this one (vLLM's
    /// asynchronous scheduling): the CPU time per step (`iteration_overhead`, `seq_overhead`,
    /// `token_overhead`) lengthens an iteration only by what exceeds its GPU time. Unset/false:
    /// the CPU time adds to the GPU time.
    #[serde(default)]
    pub cpu_overlap: Option<bool>,
    /// Fraction of peak memory bandwidth decode attention reaches while the batch leaves the GPU
    /// room to split each sequence's keys over several thread blocks (FlashAttention's split-KV);
    /// past that point `attention_memory` and the longest-sequence tail apply. Unset: always
    /// `attention_memory`.
    #[serde(default)]
    pub attention_memory_split: Option<f64>,
    /// Fraction of peak FLOP/s reached by the routed experts' grouped GEMMs (defaults to
    /// `gemm_compute`; fused-MoE kernels over many small experts reach less than dense GEMMs).
    #[serde(default)]
    pub expert_compute: Option<f64>,
    /// Fraction of the FP8 tensor peak reached by GEMMs with FP8 inputs (W8A8), in place of
    /// `gemm_compute` (defaults to it; Hopper's FP8 GEMMs reach less of their peak than its
    /// 16-bit ones of theirs).
    #[serde(default)]
    pub fp8_gemm_compute: Option<f64>,
    /// Fraction of peak memory bandwidth reached by the routed experts' grouped GEMMs reading
    /// expert weights (defaults to `memory`).
    #[serde(default)]
    pub expert_memory: Option<f64>,
    /// Rows of padding the routed experts' grouped GEMM computes per expert the batch touches:
    /// each expert's rows round up to whole row tiles, so an expert with `m` rows runs at
    /// `m / (m + pad)` of `expert_compute` (a saturating curve in tokens per expert; about half
    /// the kernel's row tile when the rows per expert spread over several tiles). Unset: 0.
    #[serde(default)]
    pub expert_pad_rows: Option<f64>,
    /// Exponent of the routed experts' blend of compute and memory time near the ridge (as
    /// `gemm_ridge_exponent`, which it defaults to).
    #[serde(default)]
    pub expert_ridge_exponent: Option<f64>,
    /// The engine's CPU n-gram lookup per step (speculative method `ngram`; vLLM's
    /// `NgramProposer`), run after sampling on the step's critical path. Unset: free.
    #[serde(default)]
    pub ngram_lookup: Option<NgramLookupCost>,
}

/// The CPU time of an n-gram (prompt lookup) proposer's step over `n` decoding sequences whose
/// contexts hold `tokens` tokens in all: `base + per_seq n + per_seq_squared n^2 +
/// per_context_token tokens`, seconds (vLLM 0.32 scans each whole context; gathering its drafts
/// tests each request against the list of those looked up: the quadratic term).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NgramLookupCost {
    /// Seconds per step.
    #[serde(default)]
    pub base: f64,
    /// Seconds per sequence looked up.
    #[serde(default)]
    pub per_seq: f64,
    /// Seconds per pair of sequences (gathering the drafts).
    #[serde(default)]
    pub per_seq_squared: f64,
    /// Seconds per context token scanned.
    #[serde(default)]
    pub per_context_token: f64,
}

impl NgramLookupCost {
    /// Seconds of one step's lookup over `seqs` sequences holding `tokens` context tokens.
    pub fn seconds(&self, seqs: u64, tokens: u64) -> f64 {
        let n = seqs as f64;
        self.base + self.per_seq * n + self.per_seq_squared * n * n + self.per_context_token * tokens as f64
    }
}

impl Default for Efficiency {
    fn default() -> Self {
        Efficiency { gemm_compute: 0.7, attention_compute: 0.5, memory: 0.8, attention_memory: None, elementwise_memory: None, moe_dispatch_memory: None, collective: 0.7, iteration_overhead: 1.0e-3, layer_overhead: 0.0, attention_cta: None, gemm_ridge_exponent: None, prefill_pad_tokens: None, seq_overhead: None, token_overhead: None, mixed_query_tile: None, decode_query_rows: None, verify_query_tile: None, moe_layer_overhead: None, time_scale: None, cpu_overlap: None, attention_memory_split: None, expert_compute: None, fp8_gemm_compute: None, expert_memory: None, expert_pad_rows: None, expert_ridge_exponent: None, ngram_lookup: None }
    }
}
