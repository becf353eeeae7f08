//! Building an instance from one description: its cost model, experts, memory plan, KV cache
//! and scheduler, with the checks that refuse a setup that cannot run.

use crate::cost::{CostModel, InstanceSpec, Op};
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::memory::{MemoryConfig, MemoryPlan};
use crate::moe::{ExpertConfig, ExpertRuntime, PluggedCaches, RoutingTrace};
use crate::scheduler::{Batch, PreemptionMode, Queues, SchedulerConfig};
use std::rc::Rc;
use std::sync::Arc;

use super::{Instance, InstanceStats, Role};

/// Everything one instance is built from.
#[derive(Debug, Clone)]
pub struct InstanceSetup<'a> {
    /// Index of the pool it belongs to.
    pub pool: u32,
    /// What the cost model is built from: model, GPU, parallelism, calibration, attachments.
    pub spec: InstanceSpec,
    /// Memory settings.
    pub memory: &'a MemoryConfig,
    /// Batch scheduler.
    pub scheduler: &'a SchedulerConfig,
    /// Expert settings, for mixture-of-experts pools that have them.
    pub experts: Option<ExpertSetup<'a>>,
}

/// What an instance needs to run its experts: the pool's settings, an optional recorded routing
/// trace, the seed and name of its random streams, and a user's expert cache policy if plugged in.
#[derive(Clone)]
pub struct ExpertSetup<'a> {
    /// The pool's expert settings.
    pub config: &'a ExpertConfig,
    /// The recorded routing to replay, for trace routing.
    pub trace: Option<Arc<RoutingTrace>>,
    /// Run seed.
    pub seed: u64,
    /// Name of the instance's random streams.
    pub stream: String,
    /// Builds each GPU's expert cache policy in place of the configured built-in one.
    pub caches: Option<&'a PluggedCaches<'a>>,
}

impl std::fmt::Debug for ExpertSetup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertSetup").field("config", self.config).field("trace", &self.trace.is_some()).field("seed", &self.seed).field("stream", &self.stream).field("caches", &self.caches.is_some()).finish()
    }
}

/// The longest simulated iteration accepted, seconds: a one-token decode or a full prefill chunk
/// lasting over an hour comes from absurd GPU figures, calibration or power cap, not a real engine.
pub const MAX_ITERATION_SECONDS: f64 = 3600.0;

/// Refuses an instance whose smallest decode or largest prefill iteration would last longer than
/// [`MAX_ITERATION_SECONDS`] (or whose cost is not finite), naming the times and what sets them.
fn check_iteration_time(cost: &CostModel, max_tokens: u64, power_cap: Option<f64>) -> Result<()> {
    let prefill = max_tokens.clamp(1, (cost.model().max_position_embeddings as u64).max(1));
    let mut decode_shape = cost.empty_shape();
    decode_shape.add_decode(1);
    let mut prefill_shape = cost.empty_shape();
    prefill_shape.add_prefill(prefill, 0, true);
    for (what, shape) in [("a one-token decode", decode_shape), (&*format!("a {prefill}-token prefill"), prefill_shape)] {
        let secs = cost.iteration(&shape).seconds;
        if !(secs.is_finite() && secs <= MAX_ITERATION_SECONDS) {
            let head = format!("{what} of {} on {} would take {secs:.3e} s, over the {MAX_ITERATION_SECONDS} s allowed for one iteration", cost.model().name, cost.gpu().name);
            // Blame what takes most of it: the drive weights stream from, the engine's CPU step,
            // or else the GPU's figures with the calibration.
            let slowest = cost.breakdown(&shape).into_iter().max_by(|a, b| a.seconds.total_cmp(&b.seconds)).map(|c| (c.op, c.seconds));
            return Err(match slowest {
                Some((Op::WeightFetch, s)) => Error::config("offload", format!("{head}: {s:.3e} s of it streams offloaded weights; the offload tier's drive or host link is absurdly slow")),
                Some((Op::Overhead, s)) => Error::config("calibration", format!("{head}: {s:.3e} s of it is the engine's per-step CPU time and per-layer overheads (the engine profile's cpu_step, or the calibration's iteration/seq/token/layer overheads); they are absurdly large")),
                _ => {
                    let cap = power_cap.map(|w| format!(", power_cap_watts {w}")).unwrap_or_default();
                    Error::config(
                        "calibration",
                        format!("{head}: the GPU figures (peak_flops {:e}, memory_bandwidth {:e}) and the calibration{cap} are absurdly slow together", cost.gpu().peak_flops, cost.gpu().memory_bandwidth),
                    )
                }
            });
        }
    }
    Ok(())
}

/// Fraction of an instance's KV blocks admissions leave free (vLLM's watermark), so that running
/// requests can still grow.
pub const KV_WATERMARK_FRACTION: f64 = 0.01;

/// The watermark of a cache of `num_blocks` blocks: [`KV_WATERMARK_FRACTION`] of them, rounded down.
pub fn kv_watermark(num_blocks: u32) -> u32 {
    (num_blocks as f64 * KV_WATERMARK_FRACTION) as u32
}

impl Instance {
    /// Builds an instance from `setup`; fails if the model does not fit or a setting is invalid.
    pub fn new(setup: InstanceSetup) -> Result<Self> {
        let InstanceSetup { pool, spec, memory, scheduler, experts } = setup;
        let mut cost = CostModel::build(&spec)?;
        let moe = match experts {
            Some(x) => {
                if !spec.model.is_moe() {
                    return Err(Error::config("experts", format!("expert settings need a mixture-of-experts model; {} is dense", spec.model.name)));
                }
                if x.config.offloaded() && spec.offload.is_some() {
                    return Err(Error::config("experts", "offloaded experts and offloaded layers (offload) cannot be combined"));
                }
                let rt = ExpertRuntime::new(x.config, &cost, x.trace, x.seed, &x.stream, x.caches)?;
                cost = cost.with_expert_hbm_saved(rt.stats.hbm_saved_bytes);
                Some(Box::new(rt))
            }
            None => None,
        };
        let context_tokens = spec.model.max_position_embeddings;
        let (max_tokens, max_seqs) = scheduler.limits(context_tokens);
        check_iteration_time(&cost, max_tokens as u64, spec.power_cap_watts)?;
        let plan = MemoryPlan::new(&cost, memory, max_tokens as u64, max_seqs as u64)?;
        if scheduler.preemption_mode() == PreemptionMode::Swap && spec.gpu.host_link_bandwidth <= 0.0 {
            return Err(Error::config("scheduler.preemption_mode", format!("swap needs the GPU's host_link_bandwidth, which {} does not set", spec.gpu.name)));
        }
        let scheduler = scheduler.build(plan.kv_bytes_per_token * plan.block_size as u64, context_tokens)?;
        let kv = BlockManager::new(plan.num_blocks, plan.block_size, kv_watermark(plan.num_blocks)).with_attention_window(spec.model.sliding_window);
        let batch = Batch::windowed(cost.model().sliding_window);
        Ok(Instance { pool, cost: Rc::new(cost), ops_memo: Rc::default(), plan, kv, scheduler, queues: Queues::default(), batch, busy: false, wake_pending: false, outstanding_tokens: 0, record: None, role: Role::Mixed, handoffs: Vec::new(), moe, spec: None, pipeline: None, id_sets: Default::default(), stretch: Default::default(), groups: Default::default(), closed_form: true, stats: InstanceStats::default() })
    }
}
