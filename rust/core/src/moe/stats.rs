//! What an instance's experts cost: the counters of a run and the cost of one iteration.

use serde::Serialize;

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
