//! One model replica: its cost model, KV cache, queues and scheduler.
//!
//! Layout: `setup` builds an instance from one [`InstanceSetup`]; `iteration` forms, times and
//! applies its iterations; `decode_stretch` runs decodes in closed form; `pipeline` keeps several
//! batches in flight through asynchronous pipeline stages, whose micro-batches `pipeline_groups`
//! decodes in closed form (`group_flights`: what the run's loop of back-to-back group passes
//! asks); `speculative` its speculative decoding; `stats` counts them (and the energy). This file
//! holds the instance's queues and what a router and the disaggregation code ask of it.

mod decode_stretch;
mod group_flights;
mod id_set;
mod iteration;
mod pipeline;
mod pipeline_groups;
mod setup;
mod speculative;
mod stats;
#[cfg(test)]
mod tests;

pub use crate::sim::Role;
pub(crate) use group_flights::FlightStart;
pub use iteration::IterationStart;
pub use pipeline::{pipeline_mode, BatchTimes, FlowShop, PipelineMode};
pub use setup::{kv_watermark, ExpertSetup, InstanceSetup, KV_WATERMARK_FRACTION, MAX_ITERATION_SECONDS};
pub use speculative::{SpecRuntime, SpecStats};
pub use stats::{InstanceStats, IterationRecord};

use crate::cost::{CostModel, OpsMemo};
use crate::kv::BlockManager;
use crate::memory::MemoryPlan;
use crate::moe::{ExpertResidency, ExpertRuntime};
use crate::request::{Request, Status};
use crate::router::InstanceLoad;
use crate::scheduler::{Batch, Scheduler, Queues};
use std::cell::RefCell;
use std::rc::Rc;

/// A model replica serving requests.
pub struct Instance {
    /// Index of the pool it belongs to.
    pub pool: u32,
    /// The cost model: shared by the instances of a pool whose models are equal (see
    /// [`Instance::share_cost_of`]), so a large pool keeps one copy hot in the cache.
    cost: Rc<CostModel>,
    /// Decode-only iterations' operator costs by batch size (all but decode attention) and
    /// prefill-only ones' by token count (all but prefill attention), shared with `cost`: they
    /// depend on the cost model and the batch's counts alone.
    ops_memo: Rc<RefCell<OpsMemo>>,
    plan: MemoryPlan,
    kv: BlockManager,
    scheduler: Box<dyn Scheduler>,
    queues: Queues,
    batch: Batch,
    busy: bool,
    wake_pending: bool,
    outstanding_tokens: u64,
    record: Option<IterationRecord>,
    /// Role in a disaggregated cluster.
    pub role: Role,
    handoffs: Vec<u32>,
    /// Expert runtime, for pools with expert settings (boxed: it is large, and the instance's
    /// hot fields stay together without it).
    moe: Option<Box<ExpertRuntime>>,
    /// Speculative decoding, for speculating pools.
    spec: Option<Box<SpecRuntime>>,
    pipeline: Option<pipeline::Pipeline>,
    /// Scratch id sets for the membership tests of scheduling with requests set aside.
    id_sets: [id_set::IdSet; 3],
    /// Running requests decoding in closed form.
    stretch: decode_stretch::DecodeStretch,
    /// A pipelined instance's micro-batches decoding in closed form.
    groups: pipeline_groups::Groups,
    /// Whether decodes may run in closed form (off only to compare against the per-request passes).
    closed_form: bool,
    /// Counters.
    pub stats: InstanceStats,
}

impl Instance {
    /// The instance's expert runtime, for pools with expert settings.
    pub fn experts(&self) -> Option<&ExpertRuntime> {
        self.moe.as_deref()
    }

    /// Where one GPU's experts live, for pools with expert settings.
    pub fn expert_residency(&self) -> Option<&ExpertResidency> {
        self.moe.as_ref().map(|m| m.residency())
    }

    /// Replaces the configured scheduler (a user's policy plugged in from outside).
    pub fn with_scheduler(mut self, scheduler: Box<dyn Scheduler>) -> Self {
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

    /// An error a plugged-in policy (scheduler, prefix cache, expert cache) met since the last
    /// call, if any.
    pub fn take_policy_error(&mut self) -> Option<crate::error::Error> {
        self.scheduler.take_error().or_else(|| self.kv.prefix_cache_mut().and_then(|c| c.take_error())).or_else(|| self.moe.as_mut().and_then(|m| m.take_error()))
    }

    /// Sets the instance's role in a disaggregated cluster.
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Requests whose prefill finished here and must move to a decode instance.
    pub fn take_handoffs(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.handoffs)
    }

    /// The batch of the iteration running (or last run): its requests and their tokens.
    pub fn batch(&self) -> &Batch {
        &self.batch
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

    /// Shares `other`'s cost model and decode-ops memo when its cost model equals this one's (the
    /// instances of a pool are built alike): the memo's entries are then valid for both, and one
    /// copy serves the whole pool. Returns whether it shares them.
    pub fn share_cost_of(&mut self, other: &Instance) -> bool {
        if !Rc::ptr_eq(&self.cost, &other.cost) {
            if *self.cost != *other.cost {
                return false;
            }
            self.cost = Rc::clone(&other.cost);
            self.ops_memo = Rc::clone(&other.ops_memo);
        }
        true
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
        let watermark = if self.scheduler.watermark_when_alone() { self.kv.watermark() as u64 } else { 0 };
        let need = self.kv.blocks_for(self.scheduler.kv_need_tokens(req)) as u64 + watermark;
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

    /// Blocks in use and total.
    pub fn kv_usage(&self) -> (u32, u32) {
        (self.kv.used(), self.kv.total())
    }
}
