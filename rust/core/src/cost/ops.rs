//! The operators the cost model charges and what it reports for them.

use serde::Serialize;

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
    /// Seconds of `seconds` that a GPU of a synchronous pipeline waits in the bubble: the
    /// pp - 1 of the m + pp - 1 stage-slots in which its stage holds no micro-batch (0 for
    /// operators run once per iteration, and without pipeline stages).
    pub bubble_seconds: f64,
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
    /// Seconds of `seconds` that each GPU of a synchronous pipeline waits in its bubble.
    pub bubble_seconds: f64,
}

impl IterationCost {
    /// Adds one operator's cost (operators are charged in execution order; the sums depend on it).
    #[inline]
    pub fn charge(&mut self, op: &OpCost) {
        self.seconds += op.seconds;
        if op.compute_bound {
            self.compute_bound_seconds += op.seconds;
        }
        if op.op == Op::WeightFetch {
            self.weight_stall_seconds += op.seconds;
        }
        self.bubble_seconds += op.bubble_seconds;
    }

    /// Seconds its kernels run: `seconds` less the stall on streamed weights (idle time).
    pub fn active_seconds(&self) -> f64 {
        self.seconds - self.weight_stall_seconds
    }

    /// The compute-bound share of the time its kernels run, what busy power depends on (call
    /// only when [`IterationCost::active_seconds`] is positive).
    pub fn compute_share(&self) -> f64 {
        (self.compute_bound_seconds / self.active_seconds()).min(1.0)
    }
}
