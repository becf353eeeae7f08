//! Schedulers: what the next iteration of an instance runs ([`Scheduler`]), and the per-step
//! policies of vLLM v1's loop ([`BatchScheduler`], as Python names them too).
//!
//! A scheduler reads the instance's queues and KV block manager, admits, preempts and picks the
//! tokens of each request for one iteration, and fills a [`Batch`]. It allocates the KV blocks the
//! batch needs, so a batch it returns always fits.

mod batch;
mod batchllm;
mod lookahead;
mod orca;
mod sarathi;
mod vllm;
mod vllm_v1;

pub use batch::{Batch, Item};
pub use batchllm::BatchLlmScheduler;
pub use lookahead::{grant_draft, grant_drafts, DraftGrant};
pub use orca::OrcaScheduler;
pub use sarathi::{SarathiScheduler, SarathiVariant};
pub use vllm::VllmScheduler;
pub use vllm_v1::{BatchScheduler, StepPlan, StepState, VllmV1Fcfs, VllmV1Scheduler};

use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::request::{Request, Status};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The request queues of one instance.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    /// Requests without KV, in service order (preempted ones return to the front).
    pub waiting: VecDeque<u32>,
    /// Requests holding KV, oldest admission first.
    pub running: Vec<u32>,
    /// Requests swapped out to host memory, in the order they will be swapped back in.
    pub swapped: VecDeque<u32>,
}

/// Preempts `req` by recompute: frees its blocks; it will prefill its prompt and output again.
pub fn preempt_recompute(req: &mut Request, kv: &mut BlockManager) {
    kv.release(req.blocks);
    req.blocks = 0;
    kv.detach(req);
    req.computed = 0;
    req.preemptions += 1;
    req.status = Status::Waiting;
}

/// Tries to admit the request at the front of the waiting queue: attaches it to its cached prefix,
/// asks `target` how many KV tokens it must hold now (None: the scheduler refuses it, e.g. over a
/// token budget), and admits it if those blocks fit with the admission watermark. On success the
/// request holds its blocks and is running; otherwise nothing changed and the caller stops admitting.
pub fn try_admit(q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, target: impl FnOnce(&Request) -> Option<u64>) -> bool {
    let Some(&idx) = q.waiting.front() else { return false };
    let r = &mut reqs[idx as usize];
    kv.attach(r);
    let need = match target(r) {
        Some(tokens) => kv.growth(r, tokens),
        None => {
            kv.abandon(r);
            return false;
        }
    };
    if !kv.can_admit(need) {
        kv.abandon(r);
        return false;
    }
    q.waiting.pop_front();
    kv.allocate(need);
    r.blocks = need;
    r.status = Status::Running;
    q.running.push(idx);
    true
}

/// Gives the running request `idx` the blocks for its next decode token, preempting the newest
/// running requests (through `preempt`, which also records where they go) until they fit. Returns
/// false when `idx` itself had to be preempted, which ends the decode pass.
pub fn grow_for_decode(
    q: &mut Queues,
    reqs: &mut [Request],
    kv: &mut BlockManager,
    batch: &mut Batch,
    idx: u32,
    mut preempt: impl FnMut(u32, &mut Request, &mut BlockManager, &mut Batch),
) -> bool {
    let r = &reqs[idx as usize];
    if kv.decode_fits(r) {
        // Block-boundary check: most decodes stay inside the blocks the request holds and need
        // no growth, no free-block check and no preemption; only the peak is kept up to date.
        kv.allocate(0);
        return true;
    }
    let need = kv.growth(r, r.computed as u64 + 1);
    while !kv.can_grow(need) {
        let victim = q.running.pop().expect("running holds the current request");
        preempt(victim, &mut reqs[victim as usize], kv, batch);
        batch.preempted += 1;
        if victim == idx {
            return false;
        }
    }
    kv.allocate(need);
    reqs[idx as usize].blocks += need;
    true
}

/// Preempts `req` by swapping its KV blocks to host memory, if `host` has room; returns whether
/// it did (the caller falls back to recompute otherwise).
pub fn preempt_swap(req: &mut Request, kv: &mut BlockManager, host: &mut BlockManager) -> bool {
    if !host.can_grow(req.blocks) {
        return false;
    }
    host.allocate(req.blocks);
    kv.release(req.blocks);
    req.host_blocks = req.blocks;
    req.blocks = 0;
    req.preemptions += 1;
    req.status = Status::Swapped;
    true
}

/// Aborts request `idx` (a client went away): it leaves whichever queue holds it, its KV blocks
/// (and any swapped-out host blocks, through `sched`) are freed, and it is marked finished, so a
/// batch formed before the abort skips it when completed. Returns false if it had already finished.
pub fn abort(idx: u32, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, sched: &mut dyn Scheduler) -> bool {
    let r = &mut reqs[idx as usize];
    match r.status {
        Status::Finished => return false,
        Status::Swapped => {
            q.swapped.retain(|&i| i != idx);
            sched.release_host(r);
        }
        _ => {
            q.waiting.retain(|&i| i != idx);
            q.running.retain(|&i| i != idx);
            kv.release(r.blocks);
            r.blocks = 0;
            kv.detach(r);
        }
    }
    r.status = Status::Finished;
    true
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Helpers shared by the schedulers' unit tests.
    use super::{Batch, Queues};
    use crate::kv::BlockManager;
    use crate::request::{Request, Status};

    /// Waiting requests with the given prompts, all `output` tokens long.
    pub fn setup(prompts: &[u32], output: u32) -> (Vec<Request>, Queues) {
        let reqs: Vec<Request> = prompts.iter().map(|&p| { let mut r = Request::new(0, p, output); r.status = Status::Waiting; r }).collect();
        let mut q = Queues::default();
        q.waiting.extend(0..prompts.len() as u32);
        (reqs, q)
    }

    /// Applies an iteration's progress the way the instance does.
    pub fn finish(batch: &Batch, reqs: &mut [Request], q: &mut Queues, kv: &mut BlockManager) {
        for it in &batch.items {
            let r = &mut reqs[it.req as usize];
            r.computed += it.tokens;
            if r.computed == r.known_tokens() {
                r.generated += 1;
                if r.generated == r.output {
                    kv.release(r.blocks);
                    r.blocks = 0;
                    r.status = Status::Finished;
                }
            }
        }
        q.running.retain(|&i| reqs[i as usize].status == Status::Running);
    }
}

/// How a scheduler frees KV blocks when a running request needs one and none is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreemptionMode {
    /// Drop the victim's KV; it is prefilled again later.
    #[default]
    Recompute,
    /// Copy the victim's KV to host memory over the host link; it is copied back later.
    Swap,
}

/// The interface every scheduler implements (vLLM v0, vLLM v1, Sarathi, Orca, BatchLLM): it forms
/// each iteration's batch. A [`BatchScheduler`] is the per-step policy inside vLLM v1's loop.
pub trait Scheduler: Send + Sync {
    /// Forms the next iteration into `batch` (cleared by the caller).
    fn schedule(&mut self, queues: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch);

    /// Why a request can never run on this instance, if so (checked on arrival).
    fn reject_reason(&self, req: &Request) -> Option<String>;

    /// Most tokens one iteration may hold (sizes the activation reserve).
    fn max_batch_tokens(&self) -> u32;

    /// Most sequences one iteration may hold.
    fn max_batch_seqs(&self) -> u32;

    /// Whether a request admitted to an idle instance (nothing running) must still leave the
    /// admission watermark free: vLLM v0's block manager keeps it always, vLLM v1 only while a
    /// request is running. A request that cannot fit the cache alone (with the watermark, if so)
    /// is rejected.
    fn watermark_when_alone(&self) -> bool {
        true
    }

    /// KV tokens the scheduler will hold for `req` at most (what must fit the cache for it to run).
    fn kv_need_tokens(&self, req: &Request) -> u64 {
        req.peak_kv_tokens()
    }

    /// Tells the scheduler how many draft tokens each decode may propose (speculative decoding):
    /// it grants them, KV lookahead and token budget permitting, and counts each granted draft
    /// token against its budget beside the decode's own token.
    fn set_draft_grant(&mut self, grant: DraftGrant);

    /// [`Scheduler::set_draft_grant`] of up to `k` draft tokens for every decode.
    fn set_draft_tokens(&mut self, k: u32) {
        self.set_draft_grant(DraftGrant::uniform(k));
    }

    /// Frees the host-memory blocks a swapped-out `req` holds (when it is aborted).
    fn release_host(&mut self, req: &mut Request) {
        req.host_blocks = 0;
    }

    /// Tells the scheduler the time of the iteration it is about to form (for policies that read it).
    fn set_now(&mut self, _now: crate::time::Nanos) {}

    /// For schedulers whose decode pass is vLLM v0's (with no request swapped out, an iteration
    /// admits prefills or else decodes every running request one token in order, taking blocks
    /// as needed and preempting the newest when none is free): forms `schedule`'s admissions
    /// alone and returns true, so that the instance may run the decode pass in closed form
    /// (`instance/decode_stretch.rs`). Others return false and leave everything untouched.
    fn schedule_admissions(&mut self, _queues: &mut Queues, _reqs: &mut [Request], _kv: &mut BlockManager, _batch: &mut Batch) -> bool {
        false
    }

    /// Whether [`Scheduler::schedule_admissions`] always forms admissions alone (returns true)
    /// from the waiting and swapped requests only, without reading the time: with none waiting
    /// or swapped out it then admits none, and the caller may skip asking it (and
    /// [`Scheduler::set_now`]).
    fn admits_alone(&self) -> bool {
        false
    }

    /// An error met while scheduling (a user's policy failed or answered out of bounds); the
    /// simulation stops with it.
    fn take_error(&mut self) -> Option<Error> {
        None
    }
}

impl SchedulerConfig {
    /// How this scheduler preempts.
    pub fn preemption_mode(&self) -> PreemptionMode {
        match *self {
            SchedulerConfig::Vllm { preemption_mode, .. } => preemption_mode,
            _ => PreemptionMode::Recompute,
        }
    }

    /// Most tokens and sequences per iteration, known before the memory plan exists, for a model
    /// of `context_tokens` (its `max_position_embeddings`).
    pub fn limits(&self, context_tokens: u32) -> (u32, u32) {
        match *self {
            SchedulerConfig::Vllm { max_num_seqs, max_num_batched_tokens, .. } => (max_num_batched_tokens, max_num_seqs),
            SchedulerConfig::VllmV1 { max_num_seqs, max_num_batched_tokens, .. } => (max_num_batched_tokens, max_num_seqs),
            SchedulerConfig::SarathiServe { max_num_seqs, token_budget } => (token_budget, max_num_seqs),
            SchedulerConfig::Sarathi { max_num_seqs, chunk_size } => (chunk_size + max_num_seqs, max_num_seqs),
            SchedulerConfig::Orca { max_num_seqs, reserve } => (reserve.tokens(context_tokens).unwrap_or(8192), max_num_seqs),
            SchedulerConfig::BatchLlm { max_num_seqs, token_budget } => (token_budget, max_num_seqs),
        }
    }
}

/// A batch scheduler chosen by `kind` in the scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum SchedulerConfig {
    /// vLLM-style continuous batching: prefill first, then decodes, preemption by recompute.
    #[serde(rename = "vllm")]
    Vllm {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Most tokens in one iteration.
        max_num_batched_tokens: u32,
        /// Recompute (default) or swap.
        #[serde(default)]
        preemption_mode: PreemptionMode,
        /// Host memory for swapped KV per GPU, GiB (vLLM's `swap_space`, 4 by default).
        #[serde(default = "default_swap_space_gb")]
        swap_space_gb: f64,
    },
    /// vLLM v1's scheduler: running requests first (decodes and prompt chunks), then admissions,
    /// chunked prefill within one token budget; a user's policy may plan each step.
    #[serde(rename = "vllm-v1")]
    VllmV1 {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Most tokens in one iteration.
        max_num_batched_tokens: u32,
        /// Most prompt tokens of one request per iteration (vLLM's `long_prefill_token_threshold`).
        #[serde(default)]
        max_prefill_chunk: Option<u32>,
        /// Admit a request only when its whole prompt's blocks are free (vLLM's `scheduler_reserve_full_isl`).
        #[serde(default = "yes")]
        reserve_full_prompt: bool,
    },
    /// Sarathi-Serve: decodes first, then prefill chunks filling a per-iteration token budget.
    #[serde(rename = "sarathi-serve")]
    SarathiServe {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Most tokens (decodes + prefill chunks) in one iteration.
        token_budget: u32,
    },
    /// Sarathi: all decodes plus one prefill chunk per iteration (decode-maximal batching).
    #[serde(rename = "sarathi")]
    Sarathi {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Prefill chunk size, tokens.
        chunk_size: u32,
    },
    /// BatchLLM: offline batching with global prefix grouping, decode-ratio order, memory-centric admission.
    #[serde(rename = "batchllm")]
    BatchLlm {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// Most tokens (decodes and prefill chunks) in one iteration.
        token_budget: u32,
    },
    /// Orca: iteration-level batching, KV reserved per request at admission, no chunking.
    #[serde(rename = "orca")]
    Orca {
        /// Most sequences in one iteration.
        max_num_seqs: u32,
        /// KV reserved per request at admission: the model's whole context or its own length.
        #[serde(default)]
        reserve: OrcaReserve,
    },
}

/// How much KV cache Orca reserves for a request when it admits it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OrcaReserve {
    /// The model's whole context, as Orca does.
    #[default]
    MaxLen,
    /// The request's own prompt + output (an oracle that knows the output length).
    Oracle,
}

impl OrcaReserve {
    /// Tokens reserved per request for a model of `context_tokens`; `None`: each request's own length.
    pub fn tokens(self, context_tokens: u32) -> Option<u32> {
        match self {
            OrcaReserve::MaxLen => Some(context_tokens),
            OrcaReserve::Oracle => None,
        }
    }
}

fn yes() -> bool {
    true
}

impl SchedulerConfig {
    /// The scheduling loop a plan-driven policy runs in, with this configuration's limits for a
    /// model of `context_tokens`.
    pub fn vllm_v1_loop(&self, batch_scheduler: Box<dyn BatchScheduler>, context_tokens: u32) -> VllmV1Scheduler {
        let (tokens, seqs) = self.limits(context_tokens);
        let reserve = match *self {
            SchedulerConfig::VllmV1 { reserve_full_prompt, .. } => reserve_full_prompt,
            _ => true,
        };
        VllmV1Scheduler::new(batch_scheduler, seqs, tokens).reserving_full_prompt(reserve)
    }
}

fn default_swap_space_gb() -> f64 {
    4.0
}

/// Bytes in `gib` GiB, truncated to whole bytes.
fn gib_to_bytes(gib: f64) -> u64 {
    (gib * (1u64 << 30) as f64) as u64
}

fn positive(path: &str, v: u32) -> Result<()> {
    if v == 0 {
        return Err(Error::config(path, "must be at least 1"));
    }
    Ok(())
}

impl SchedulerConfig {
    /// Builds the scheduler; `block_bytes` is one KV block's size on one GPU (sizes the swap space),
    /// `context_tokens` the model's context (`max_position_embeddings`, what Orca's `max-len` reserves).
    pub fn build(&self, block_bytes: u64, context_tokens: u32) -> Result<Box<dyn Scheduler>> {
        match *self {
            SchedulerConfig::Vllm { max_num_seqs, max_num_batched_tokens, preemption_mode, swap_space_gb } => {
                if max_num_seqs == 0 {
                    return Err(Error::config("scheduler.max_num_seqs", "must be at least 1"));
                }
                if max_num_batched_tokens == 0 {
                    return Err(Error::config("scheduler.max_num_batched_tokens", "must be at least 1"));
                }
                if !(swap_space_gb.is_finite() && swap_space_gb >= 0.0) {
                    return Err(Error::config("scheduler.swap_space_gb", format!("must be a finite number of GiB >= 0, got {swap_space_gb}")));
                }
                let host_blocks = match preemption_mode {
                    PreemptionMode::Recompute => 0,
                    PreemptionMode::Swap => (gib_to_bytes(swap_space_gb) / block_bytes.max(1)).min(u32::MAX as u64) as u32,
                };
                Ok(Box::new(VllmScheduler::new(max_num_seqs, max_num_batched_tokens).with_swap_space(host_blocks)))
            }
            SchedulerConfig::VllmV1 { max_num_seqs, max_num_batched_tokens, max_prefill_chunk, .. } => {
                positive("scheduler.max_num_seqs", max_num_seqs)?;
                positive("scheduler.max_num_batched_tokens", max_num_batched_tokens)?;
                if let Some(c) = max_prefill_chunk {
                    positive("scheduler.max_prefill_chunk", c)?;
                }
                Ok(Box::new(self.vllm_v1_loop(Box::new(VllmV1Fcfs { max_num_seqs, max_num_batched_tokens, max_prefill_chunk }), context_tokens)))
            }
            SchedulerConfig::SarathiServe { max_num_seqs, token_budget } => {
                positive("scheduler.max_num_seqs", max_num_seqs)?;
                positive("scheduler.token_budget", token_budget)?;
                Ok(Box::new(SarathiScheduler::new(SarathiVariant::SarathiServe(token_budget), max_num_seqs)))
            }
            SchedulerConfig::Sarathi { max_num_seqs, chunk_size } => {
                positive("scheduler.max_num_seqs", max_num_seqs)?;
                positive("scheduler.chunk_size", chunk_size)?;
                Ok(Box::new(SarathiScheduler::new(SarathiVariant::Sarathi(chunk_size), max_num_seqs)))
            }
            SchedulerConfig::BatchLlm { max_num_seqs, token_budget } => {
                positive("scheduler.max_num_seqs", max_num_seqs)?;
                positive("scheduler.token_budget", token_budget)?;
                Ok(Box::new(BatchLlmScheduler::new(token_budget, max_num_seqs)))
            }
            SchedulerConfig::Orca { max_num_seqs, reserve } => {
                positive("scheduler.max_num_seqs", max_num_seqs)?;
                let reserve_tokens = reserve.tokens(context_tokens);
                if let Some(t) = reserve_tokens {
                    positive("scheduler.reserve", t)?;
                }
                Ok(Box::new(OrcaScheduler::new(max_num_seqs, reserve_tokens)))
            }
        }
    }
}
