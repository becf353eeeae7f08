//! What an instance counts over a run, what the iteration log records, and its energy.

use crate::cost::{CostModel, IterationCost, WeightStream};
use crate::moe::ExpertStats;
use crate::time::Nanos;
use serde::Serialize;

use super::Instance;

/// Counters of one instance over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InstanceStats {
    /// Iterations run.
    pub iterations: u64,
    /// Time spent running iterations.
    pub busy_ns: u64,
    /// Prompt (and recomputed) tokens prefilled.
    pub prefill_tokens: u64,
    /// Tokens decoded.
    pub decode_tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Requests finished.
    pub finished: u64,
    /// Requests rejected on arrival.
    pub rejected: u64,
    /// Highest KV blocks in use.
    pub peak_kv_blocks: u32,
    /// Energy of all the instance's GPUs while running iterations, joules.
    pub busy_energy_joules: f64,
    /// KV blocks swapped out to host memory.
    pub swap_out_blocks: u64,
    /// KV blocks swapped back in.
    pub swap_in_blocks: u64,
    /// Bytes swapped over the host link, per GPU.
    pub swap_bytes: u64,
    /// Time iterations waited for swaps.
    pub swap_wait_ns: u64,
    /// Offloaded weight bytes streamed in, per GPU.
    pub weight_stream_bytes: u64,
    /// Time iterations waited for offloaded weights beyond their compute.
    pub weight_stall_ns: u64,
    /// Mixture-of-experts counters, for pools with expert settings.
    pub experts: Option<ExpertStats>,
    /// Speculative decoding counters, for speculating pools.
    pub speculative: Option<super::SpecStats>,
}

/// One iteration as the optional iteration log records it.
#[derive(Debug, Clone, Copy)]
pub struct IterationRecord {
    /// Start of the iteration.
    pub start: Nanos,
    /// End of the iteration.
    pub end: Nanos,
    /// Prefill tokens.
    pub prefill_tokens: u64,
    /// Decodes.
    pub decode_seqs: u64,
    /// KV blocks in use during the iteration.
    pub kv_blocks: u32,
    /// Requests waiting when it started.
    pub waiting: u32,
    /// Requests running when it started.
    pub running: u32,
}

impl Instance {
    /// Counts the iteration just formed, which computes for `compute_ns` (the cost model's
    /// `it`), of which `stall_ns` waiting for offloaded experts, and streams `stream`: iterations,
    /// busy time and energy, tokens, preemptions, swaps. Returns the bytes (per GPU) to swap before
    /// it computes.
    #[inline(always)]
    pub(super) fn count_iteration(&mut self, it: &IterationCost, compute_ns: Nanos, stream: Option<WeightStream>, stall_ns: Nanos) -> u64 {
        if let Some(ws) = stream {
            self.stats.weight_stream_bytes += ws.flash_bytes + ws.dram_bytes;
        }
        self.stats.iterations += 1;
        self.stats.busy_ns = self.stats.busy_ns.saturating_add(compute_ns);
        if it.seconds > 0.0 && compute_ns > 0 {
            self.stats.busy_energy_joules += busy_energy_joules(&self.cost, it);
        }
        if stall_ns > 0 {
            // Waiting for experts counts as busy time, so the idle energy leaves it out: the GPUs
            // draw (at least) their idle power through it.
            self.stats.busy_energy_joules += self.cost.power().idle * stall_ns as f64 * 1e-9 * self.cost.gpus() as f64;
        }
        self.stats.preemptions += self.batch.preempted as u64;
        self.stats.prefill_tokens += self.batch.shape.prefill_tokens;
        self.stats.decode_tokens += self.batch.shape.decode_seqs;
        self.stats.peak_kv_blocks = self.kv.peak();
        let swapped_blocks = (self.batch.swap_out_blocks + self.batch.swap_in_blocks) as u64;
        self.stats.swap_out_blocks += self.batch.swap_out_blocks as u64;
        self.stats.swap_in_blocks += self.batch.swap_in_blocks as u64;
        let transfer_bytes = swapped_blocks * self.plan.block_size as u64 * self.plan.kv_bytes_per_token;
        self.stats.swap_bytes += transfer_bytes;
        transfer_bytes
    }

    /// Energy of the instance's GPUs over `[0, end]`: busy energy plus idle power while not busy.
    pub fn energy_joules(&self, end: Nanos) -> f64 {
        let idle_ns = end.saturating_sub(self.stats.busy_ns) as f64;
        self.stats.busy_energy_joules + self.cost.power().idle * idle_ns * 1e-9 * self.cost.gpus() as f64
    }
}

/// Energy of all the GPUs of the instance `cost` models over an iteration costing `it`: the
/// power at its compute-bound share, for the time its kernels run. The time it waits for
/// streamed weights (`weight_stall_seconds`) is not busy time: the idle energy covers it. A
/// synchronous pipeline's GPUs each wait out the bubble (`bubble_seconds`: the stage-slots in
/// which their stage holds no micro-batch) at idle power.
fn busy_energy_joules(cost: &CostModel, it: &IterationCost) -> f64 {
    let active = it.active_seconds();
    if active <= 0.0 {
        return 0.0;
    }
    let power = cost.power();
    let watts = power.busy_watts(it.compute_share());
    let bubble = it.bubble_seconds.clamp(0.0, active);
    (watts * (active - bubble) + power.idle * bubble) * cost.gpus() as f64
}
