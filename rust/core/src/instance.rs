//! One model replica: its cost model, KV cache, queues and batch scheduler.

use crate::calibration::Efficiency;
use crate::cost::{BatchShape, CostModel, InstanceSpec, WeightStream};
use crate::error::Result;
use crate::hardware::{GpuSpec, PimSpec};
use crate::offload::OffloadSpec;
use crate::kv::BlockManager;
use crate::memory::{MemoryConfig, MemoryPlan};
use crate::model::ModelSpec;
use crate::moe::{ExpertConfig, ExpertResidency, ExpertRuntime, ExpertStats, RoutingTrace, TokenSpan};
use std::sync::Arc;
use crate::request::{Request, Status};
use crate::router::InstanceLoad;
use crate::scheduler::{Batch, BatchScheduler, Queues, SchedulerConfig};

/// What an instance does in a disaggregated cluster (Splitwise, DistServe).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Prefills and decodes its requests (a colocated instance, or Splitwise's mixed pool).
    #[default]
    Mixed,
    /// Prefills only: after the first token the request's KV moves to a decode instance.
    Prefill,
    /// Decodes requests prefilled elsewhere; receives no arrivals.
    Decode,
}

/// How an instance spreads the model over GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Micro-batches per iteration (default: pp).
    pub microbatches: Option<u32>,
    /// GPUs per node: larger groups cross nodes over the NICs.
    pub gpus_per_node: u32,
    /// Expert-parallel degree (1, or tp) for MoE models.
    pub ep: u32,
}
use crate::time::{secs_to_ns, Nanos};
use serde::Serialize;

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
}

/// What the caller must do to run the iteration an instance has just formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationStart {
    /// Compute time of the iteration (without waiting for offloaded weights).
    pub compute_ns: Nanos,
    /// Bytes (per GPU) to swap over the host link before computing; 0 for none.
    pub transfer_bytes: u64,
    /// Offloaded weights to stream in during (or, without overlap, before) the compute.
    pub stream: Option<WeightStream>,
}

/// A model replica serving requests.
pub struct Instance {
    /// Index of the pool it belongs to.
    pub pool: u32,
    cost: CostModel,
    plan: MemoryPlan,
    kv: BlockManager,
    scheduler: Box<dyn BatchScheduler>,
    queues: Queues,
    batch: Batch,
    busy: bool,
    wake_pending: bool,
    outstanding_tokens: u64,
    record: Option<IterationRecord>,
    /// Role in a disaggregated cluster.
    pub role: Role,
    handoffs: Vec<u32>,
    early_handoffs: Vec<u32>,
    layerwise: bool,
    moe: Option<ExpertRuntime>,
    /// Counters.
    pub stats: InstanceStats,
}

/// What an instance needs to run its experts: the pool's settings, an optional recorded routing
/// trace, and the seed and name of its random streams.
#[derive(Debug, Clone)]
pub struct ExpertSetup<'a> {
    /// The pool's expert settings.
    pub config: &'a ExpertConfig,
    /// The recorded routing to replay, for trace routing.
    pub trace: Option<Arc<RoutingTrace>>,
    /// Run seed.
    pub seed: u64,
    /// Name of the instance's random streams.
    pub stream: String,
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

/// The longest simulated iteration accepted, seconds: a one-token decode or a full prefill chunk
/// lasting over an hour comes from absurd GPU figures, calibration or power cap, not a real engine.
pub const MAX_ITERATION_SECONDS: f64 = 3600.0;

/// Refuses an instance whose smallest decode or largest prefill iteration would last longer than
/// [`MAX_ITERATION_SECONDS`] (or whose cost is not finite), naming the times and what sets them.
fn check_iteration_time(cost: &CostModel, max_tokens: u64, power_cap: Option<f64>) -> Result<()> {
    let prefill = max_tokens.clamp(1, (cost.model().max_position_embeddings as u64).max(1));
    let mut decode_shape = BatchShape::default();
    decode_shape.add_decode(1);
    let mut prefill_shape = BatchShape::default();
    prefill_shape.add_prefill(prefill, 0, true);
    for (what, shape) in [("a one-token decode", decode_shape), (&*format!("a {prefill}-token prefill"), prefill_shape)] {
        let secs = cost.iteration(&shape).seconds;
        if !(secs.is_finite() && secs <= MAX_ITERATION_SECONDS) {
            let cap = power_cap.map(|w| format!(", power_cap_watts {w}")).unwrap_or_default();
            return Err(crate::error::Error::config(
                "calibration",
                format!(
                    "{what} of {} on {} would take {secs:.3e} s, over the {MAX_ITERATION_SECONDS} s allowed for one iteration: the GPU figures (peak_flops {:e}, memory_bandwidth {:e}) and the calibration{cap} are absurdly slow together",
                    cost.model().name,
                    cost.gpu().name,
                    cost.gpu().peak_flops,
                    cost.gpu().memory_bandwidth
                ),
            ));
        }
    }
    Ok(())
}

impl Instance {
    /// Builds an instance; fails if the model does not fit or a setting is invalid.
    #[allow(clippy::too_many_arguments)]
    pub fn new(pool: u32, model: &ModelSpec, gpu: &GpuSpec, par: Parallelism, eff: &Efficiency, memory: &MemoryConfig, scheduler: &SchedulerConfig, power_cap: Option<f64>, pim: Option<&PimSpec>, offload: Option<&OffloadSpec>, experts: Option<ExpertSetup>) -> Result<Self> {
        let mut cost = CostModel::build(&InstanceSpec { model: model.clone(), gpu: gpu.clone(), efficiency: eff.clone(), tp: par.tp, pp: par.pp, microbatches: par.microbatches, ep: par.ep, gpus_per_node: par.gpus_per_node, pim: pim.cloned(), offload: offload.cloned(), power_cap_watts: power_cap })?;
        let moe = match experts {
            Some(x) => {
                if !model.is_moe() {
                    return Err(crate::error::Error::config("experts", format!("expert settings need a mixture-of-experts model; {} is dense", model.name)));
                }
                if x.config.offloaded() && offload.is_some() {
                    return Err(crate::error::Error::config("experts", "offloaded experts and offloaded layers (offload) cannot be combined"));
                }
                let rt = ExpertRuntime::new(x.config, &cost, x.trace, x.seed, &x.stream)?;
                cost = cost.with_expert_hbm_saved(rt.stats.hbm_saved_bytes);
                Some(rt)
            }
            None => None,
        };
        let (max_tokens, max_seqs) = scheduler.limits();
        check_iteration_time(&cost, max_tokens as u64, power_cap)?;
        let plan = MemoryPlan::new(&cost, memory, max_tokens as u64, max_seqs as u64)?;
        if scheduler.preemption_mode() == crate::scheduler::PreemptionMode::Swap && gpu.host_link_bandwidth <= 0.0 {
            return Err(crate::error::Error::config("scheduler.preemption_mode", format!("swap needs the GPU's host_link_bandwidth, which {} does not set", gpu.name)));
        }
        let scheduler = scheduler.build(plan.kv_bytes_per_token * plan.block_size as u64)?;
        let watermark = (plan.num_blocks as f64 * 0.01) as u32;
        let kv = BlockManager::new(plan.num_blocks, plan.block_size, watermark);
        Ok(Instance { pool, cost, plan, kv, scheduler, queues: Queues::default(), batch: Batch::default(), busy: false, wake_pending: false, outstanding_tokens: 0, record: None, role: Role::Mixed, handoffs: Vec::new(), early_handoffs: Vec::new(), layerwise: false, moe, stats: InstanceStats::default() })
    }

    /// The instance's expert runtime, for pools with expert settings.
    pub fn experts(&self) -> Option<&ExpertRuntime> {
        self.moe.as_ref()
    }

    /// Where one GPU's experts live, for pools with expert settings.
    pub fn expert_residency(&self) -> Option<&ExpertResidency> {
        self.moe.as_ref().map(|m| m.residency())
    }

    /// Replaces the configured batch scheduler (a user's policy plugged in from outside).
    pub fn with_scheduler(mut self, scheduler: Box<dyn BatchScheduler>) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// Evicts cached prefixes in the order `evictor` chooses (needs prefix caching on).
    pub fn with_prefix_evictor(mut self, evictor: Box<dyn crate::prefix::PrefixEvictor>) -> Self {
        if let Some(c) = self.kv.prefix_cache_mut() {
            c.set_evictor(evictor);
        }
        self
    }

    /// An error a plugged-in policy (scheduler, prefix cache) met since the last call, if any.
    pub fn take_policy_error(&mut self) -> Option<crate::error::Error> {
        self.scheduler.take_error().or_else(|| self.kv.prefix_cache_mut().and_then(|c| c.take_error()))
    }

    /// Sets the instance's role; `layerwise` (prefill instances) sends KV while the prefill runs.
    pub fn with_role(mut self, role: Role, layerwise: bool) -> Self {
        self.role = role;
        self.layerwise = layerwise && role == Role::Prefill;
        self
    }

    /// Requests whose prefill finished here and must move to a decode instance.
    pub fn take_handoffs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.handoffs)
    }

    /// Requests whose prefill completes in the iteration just started (layer-wise KV transfer starts now).
    pub fn take_early_handoffs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.early_handoffs)
    }

    /// Reserves KV blocks for a request arriving prefilled (its prompt and next token); None when full.
    pub fn reserve(&mut self, req: &Request) -> Option<u32> {
        let need = self.kv.blocks_for(req.known_tokens() as u64);
        if !self.kv.can_admit(need) {
            return None;
        }
        self.kv.allocate(need);
        Some(need)
    }

    /// Frees a handed-off request's KV here once it reached its decode instance; returns true if
    /// the instance, idle with requests waiting for memory, must be woken.
    pub fn release_handoff(&mut self, req: &mut Request) -> bool {
        self.kv.release(req.blocks);
        req.blocks = 0;
        self.kv.detach(req);
        if !self.busy && !self.wake_pending && !self.queues.waiting.is_empty() {
            self.wake_pending = true;
            return true;
        }
        false
    }

    /// Takes a prefilled request (its KV arrived into `blocks` reserved blocks) as a running decode;
    /// returns true if the instance must be woken.
    pub fn accept(&mut self, idx: u32, req: &mut Request, blocks: u32) -> bool {
        req.status = Status::Running;
        req.blocks = blocks;
        self.queues.running.push(idx);
        self.outstanding_tokens += req.prompt as u64 + req.generated as u64;
        if !self.busy && !self.wake_pending {
            self.wake_pending = true;
            return true;
        }
        false
    }

    /// Whether a request of `peak_tokens` KV tokens could ever fit this instance's cache.
    pub fn could_hold(&self, peak_tokens: u64) -> bool {
        self.kv.blocks_for(peak_tokens) as u64 + self.kv.watermark() as u64 <= self.kv.total() as u64
    }

    /// Keeps prompt prefixes of `tokens_per_entry`-token hash blocks cached, if given.
    pub fn with_prefix_cache(mut self, tokens_per_entry: Option<u32>) -> Self {
        if let Some(t) = tokens_per_entry {
            self.kv = self.kv.clone().with_prefix_cache(t);
        }
        self
    }

    /// Prompt tokens of `hashes` this instance has cached (what a prefix-aware router compares).
    pub fn cached_prefix_tokens(&self, hashes: &[u64]) -> u64 {
        self.kv.prefix_cache().map_or(0, |c| c.leading_hits(hashes) as u64 * c.tokens_per_entry() as u64)
    }

    /// (hit, looked-up) prompt tokens of the prefix cache.
    pub fn prefix_stats(&self) -> (u64, u64) {
        self.kv.prefix_cache().map_or((0, 0), |c| (c.hit_tokens, c.lookup_tokens))
    }

    /// The memory plan.
    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    /// The cost model.
    pub fn cost(&self) -> &CostModel {
        &self.cost
    }

    /// What a router sees of this instance.
    pub fn load(&self) -> InstanceLoad {
        InstanceLoad { outstanding_tokens: self.outstanding_tokens, waiting: self.queues.waiting.len() as u32, running: self.queues.running.len() as u32, cached_prefix_tokens: 0, kv_used_blocks: self.kv.used(), kv_total_blocks: self.kv.total() }
    }

    /// Why `req` can never run here, if so.
    pub fn reject_reason(&self, req: &Request) -> Option<String> {
        let max_len = self.cost.model().max_position_embeddings as u64;
        if req.prompt as u64 + req.output as u64 > max_len {
            return Some(format!("prompt + output = {} tokens exceeds the model's {max_len}-token context", req.prompt as u64 + req.output as u64));
        }
        if let Some(reason) = self.scheduler.reject_reason(req) {
            return Some(reason);
        }
        let need = self.kv.blocks_for(self.scheduler.kv_need_tokens(req)) as u64 + self.kv.watermark() as u64;
        if need > self.kv.total() as u64 {
            return Some(format!("needs {need} KV blocks, the instance has {}", self.kv.total()));
        }
        None
    }

    /// Queues an admitted request; returns true if the instance must be woken.
    pub fn enqueue(&mut self, idx: u32, req: &mut Request) -> bool {
        req.status = Status::Waiting;
        self.queues.waiting.push_back(idx);
        self.outstanding_tokens += req.prompt as u64;
        if !self.busy && !self.wake_pending {
            self.wake_pending = true;
            return true;
        }
        false
    }

    /// Handles a wake-up: clears the pending flag.
    pub fn woken(&mut self) {
        self.wake_pending = false;
    }

    /// Whether an iteration is running.
    pub fn is_busy(&self) -> bool {
        self.busy
    }

    /// Forms the next iteration at `now`; None when there is nothing to run. The instance is busy
    /// from here until `finish_iteration`; the caller runs the swap transfer, the compute and the
    /// weight stream that [`IterationStart`] describes.
    pub fn start_iteration(&mut self, now: Nanos, reqs: &mut [Request]) -> Option<IterationStart> {
        debug_assert!(!self.busy);
        self.batch.clear();
        self.scheduler.set_now(now);
        let parked = self.moe.as_ref().map(|m| m.park(&self.queues.running, reqs)).unwrap_or_default();
        if parked.is_empty() {
            self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        } else {
            self.schedule_without(&parked, reqs);
        }
        if self.batch.items.is_empty() && self.batch.swap_out_blocks == 0 {
            return None;
        }
        let it = self.cost.iteration(&self.batch.shape);
        let mut compute_ns = if self.batch.items.is_empty() { 0 } else { secs_to_ns(it.seconds - it.weight_stall_seconds) };
        let mut stream = if self.batch.items.is_empty() { None } else { self.cost.weight_stream() };
        if let (Some(m), false) = (self.moe.as_mut(), self.batch.items.is_empty()) {
            let spans: Vec<TokenSpan> = self.batch.items.iter().map(|i| TokenSpan { req: i.req, start: reqs[i.req as usize].computed as u64, tokens: i.tokens }).collect();
            let (base, fixed) = self.cost.moe_layer_split(&self.batch.shape);
            let x = m.iteration(&spans, &self.cost, base, fixed);
            compute_ns = secs_to_ns(x.seconds);
            m.stats.stall_ns = m.stats.stall_ns.saturating_add(secs_to_ns(x.stall_seconds));
            if x.fetch_bytes > 0 {
                let flash = m.config().placement == crate::moe::ExpertTier::Flash;
                stream = Some(WeightStream { flash_bytes: if flash { x.fetch_bytes } else { 0 }, dram_bytes: if flash { 0 } else { x.fetch_bytes }, overlap: true });
            }
        }
        if let Some(ws) = stream {
            self.stats.weight_stream_bytes += ws.flash_bytes + ws.dram_bytes;
        }
        self.busy = true;
        self.stats.iterations += 1;
        self.stats.busy_ns = self.stats.busy_ns.saturating_add(compute_ns);
        if it.seconds > 0.0 && compute_ns > 0 {
            let watts = self.cost.power().busy_watts(it.compute_bound_seconds / it.seconds);
            self.stats.busy_energy_joules += watts * it.seconds * self.cost.gpus() as f64;
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
        self.record = Some(IterationRecord {
            start: now,
            end: now,
            prefill_tokens: self.batch.shape.prefill_tokens,
            decode_seqs: self.batch.shape.decode_seqs,
            kv_blocks: self.kv.used(),
            waiting: self.queues.waiting.len() as u32,
            running: self.queues.running.len() as u32,
        });
        if self.layerwise {
            for it in &self.batch.items {
                let r = &reqs[it.req as usize];
                if r.generated == 0 && r.computed + it.tokens == r.known_tokens() && r.output > 1 {
                    self.early_handoffs.push(it.req);
                }
            }
        }
        Some(IterationStart { compute_ns, transfer_bytes, stream })
    }

    /// Schedules with the `parked` running requests set aside (token grouping), then puts them
    /// back in their places.
    fn schedule_without(&mut self, parked: &[u32], reqs: &mut [Request]) {
        let order = self.queues.running.clone();
        self.queues.running.retain(|r| !parked.contains(r));
        self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        let now_running: std::collections::HashSet<u32> = self.queues.running.iter().copied().chain(parked.iter().copied()).collect();
        let mut merged: Vec<u32> = order.iter().copied().filter(|r| now_running.contains(r)).collect();
        let known: std::collections::HashSet<u32> = order.into_iter().collect();
        merged.extend(self.queues.running.iter().copied().filter(|r| !known.contains(r)));
        self.queues.running = merged;
    }

    /// The record of the iteration ending at `end` (for the optional iteration log).
    pub fn take_record(&mut self, end: Nanos) -> Option<IterationRecord> {
        self.record.take().map(|r| IterationRecord { end, ..r })
    }

    /// Applies the finished iteration at `now`: advances tokens, samples, finishes requests.
    /// Calls `on_token(request, previous_token_time)` for every token after a request's first.
    pub fn finish_iteration(&mut self, now: Nanos, reqs: &mut [Request], mut on_token: impl FnMut(Nanos, Nanos)) {
        self.busy = false;
        let mut any_finished = false;
        for it in &self.batch.items {
            let r = &mut reqs[it.req as usize];
            r.computed += it.tokens;
            if !r.hashes.is_empty() && r.computed >= r.prompt {
                self.kv.publish(r);
            }
            if r.computed != r.known_tokens() {
                continue;
            }
            r.generated += 1;
            self.outstanding_tokens += 1;
            if r.generated == 1 {
                r.first_token = now;
            } else {
                on_token(now, r.last_token);
            }
            r.last_token = now;
            if r.generated == 1 && self.role == Role::Prefill && r.output > 1 {
                r.status = Status::Handoff;
                r.prefill_instance = r.instance;
                self.outstanding_tokens -= r.prompt as u64 + r.generated as u64;
                self.handoffs.push(it.req);
                any_finished = true;
                continue;
            }
            if r.generated == r.output {
                self.kv.release(r.blocks);
                r.blocks = 0;
                self.kv.detach(r);
                r.status = Status::Finished;
                r.completion = now;
                if let Some(m) = self.moe.as_mut() {
                    m.forget(it.req);
                }
                self.outstanding_tokens -= r.prompt as u64 + r.generated as u64;
                self.stats.finished += 1;
                any_finished = true;
            }
        }
        if any_finished {
            self.queues.running.retain(|&i| reqs[i as usize].status == Status::Running);
        }
    }

    /// Energy of the instance's GPUs over `[0, end]`: busy energy plus idle power while not busy.
    pub fn energy_joules(&self, end: Nanos) -> f64 {
        let idle_ns = end.saturating_sub(self.stats.busy_ns) as f64;
        self.stats.busy_energy_joules + self.cost.power().idle * idle_ns * 1e-9 * self.cost.gpus() as f64
    }

    /// Blocks in use and total.
    pub fn kv_usage(&self) -> (u32, u32) {
        (self.kv.used(), self.kv.total())
    }
}
