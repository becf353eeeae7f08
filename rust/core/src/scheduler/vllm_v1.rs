//! vLLM v1's scheduling loop, following a per-step plan.
//!
//! Each iteration a [`BatchScheduler`] answers with a [`StepPlan`]: the token budget, the sequence limit
//! and the orders in which running requests take budget, waiting requests are admitted and
//! running requests are preempted. [`VllmV1Scheduler`] applies it the way vLLM v1's scheduler runs
//! its loop, so a policy that plans here plans the same batches inside vLLM:
//!
//! 1. Running requests, in plan order, each take `min(pending tokens, budget left, chunk cap)`
//!    tokens (1 for a decode). When their KV growth does not fit, running requests are preempted by
//!    recompute in victim order (newest admission first by default) until it fits; if the request
//!    itself is the victim, the running pass ends. Victims go to the front of the waiting queue.
//! 2. If nothing was preempted, waiting requests are admitted in plan order while the sequence
//!    limit and the budget allow; each takes `min(pending tokens, budget left, chunk cap)` tokens
//!    (after its cached prefix) and the first whose KV does not fit ends admission. As vLLM 0.32
//!    does by default (`scheduler_reserve_full_isl`), a request is admitted only if the blocks for its
//!    whole prompt are free, though only its first chunk's are allocated. The admission watermark
//!    (1% of the blocks) is kept free only while a request is running, as vLLM v1's scheduler asks
//!    `allocate_slots` to keep it: an idle engine admits a request that needs every free block.
//! 3. With prefix caching, the whole prefix entries a scheduled prompt chunk computes are cached at
//!    once (vLLM's `allocate_slots` caches full blocks as it allocates them): the running chunks'
//!    after the running pass (those of requests it preempted are never computed), each admission's
//!    before the next request is admitted, which can hit them in the same step.
//!
//! The KV invariants stay the block manager's: a plan only orders, it never over-allocates.

use super::{DraftGrant, grant_draft, preempt_recompute, Batch, Queues, Scheduler};
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::request::{Request, Status};

/// One iteration's plan. Orders list request indices; requests they omit follow in queue order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Most tokens in the iteration.
    pub token_budget: u32,
    /// Most running requests after admission.
    pub max_num_seqs: u32,
    /// Order in which running requests take budget (None: admission order).
    pub running_order: Option<Vec<u32>>,
    /// Order in which waiting requests are admitted (None: queue order).
    pub waiting_order: Option<Vec<u32>>,
    /// Order in which running requests are preempted (None: newest admission first).
    pub victim_order: Option<Vec<u32>>,
    /// Most tokens of one request's prompt in one iteration (None: the budget).
    pub max_prefill_chunk: Option<u32>,
}

/// What a batch scheduler sees: the instance's queues, requests and KV cache before the iteration.
pub struct StepState<'a> {
    /// Waiting and running queues.
    pub queues: &'a Queues,
    /// Every request of the simulation, indexed by the ids in the queues.
    pub reqs: &'a [Request],
    /// The instance's KV cache.
    pub kv: &'a BlockManager,
    /// Iterations planned before this one.
    pub step: u64,
    /// The time of the iteration being planned.
    pub now: crate::time::Nanos,
}

/// Plans each iteration of vLLM v1's loop (what Python calls a `BatchScheduler` too): the native
/// [`VllmV1Fcfs`], or a user's policy.
pub trait BatchScheduler: Send + Sync {
    /// The plan for the next iteration.
    fn plan(&mut self, state: &StepState) -> Result<StepPlan>;

    /// Who plans, for error messages (a user's policy names itself and its instance).
    fn describe(&self) -> String {
        "the vllm-v1 scheduler".to_string()
    }
}

/// vLLM v1's default: first come, first served, with fixed limits.
#[derive(Debug, Clone)]
pub struct VllmV1Fcfs {
    /// Most sequences per iteration.
    pub max_num_seqs: u32,
    /// Most tokens per iteration.
    pub max_num_batched_tokens: u32,
    /// vLLM's `long_prefill_token_threshold` (None: no cap below the budget).
    pub max_prefill_chunk: Option<u32>,
}

impl BatchScheduler for VllmV1Fcfs {
    fn plan(&mut self, _state: &StepState) -> Result<StepPlan> {
        Ok(StepPlan { token_budget: self.max_num_batched_tokens, max_num_seqs: self.max_num_seqs, max_prefill_chunk: self.max_prefill_chunk, ..StepPlan::default() })
    }
}

/// vLLM v1's scheduling loop, driven each step by a [`BatchScheduler`]'s plan.
pub struct VllmV1Scheduler {
    batch_scheduler: Box<dyn BatchScheduler>,
    max_num_seqs: u32,
    max_num_batched_tokens: u32,
    reserve_full_prompt: bool,
    draft: DraftGrant,
    step: u64,
    now: crate::time::Nanos,
    error: Option<Error>,
}

/// `ids` with the entries of `preferred` that are in `ids` first (in its order), then the rest.
fn ordered(ids: &[u32], preferred: Option<&Vec<u32>>) -> Vec<u32> {
    let Some(pref) = preferred else { return ids.to_vec() };
    let mut out = Vec::with_capacity(ids.len());
    for &p in pref {
        if ids.contains(&p) && !out.contains(&p) {
            out.push(p);
        }
    }
    for &i in ids {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

impl VllmV1Scheduler {
    /// A scheduler following `batch_scheduler`'s plans; the limits size the instance's activation memory, and a plan
    /// may not exceed them.
    pub fn new(batch_scheduler: Box<dyn BatchScheduler>, max_num_seqs: u32, max_num_batched_tokens: u32) -> Self {
        VllmV1Scheduler { batch_scheduler, max_num_seqs, max_num_batched_tokens, reserve_full_prompt: true, draft: DraftGrant::default(), step: 0, now: 0, error: None }
    }

    /// Whether admission needs room for the whole prompt (true, vLLM's default) or only the first chunk.
    pub fn reserving_full_prompt(mut self, on: bool) -> Self {
        self.reserve_full_prompt = on;
        self
    }

    fn checked_plan(&mut self, q: &Queues, reqs: &[Request], kv: &BlockManager) -> Result<StepPlan> {
        let plan = self.batch_scheduler.plan(&StepState { queues: q, reqs, kv, step: self.step, now: self.now })?;
        let who = self.batch_scheduler.describe();
        let bad = |field: &str, msg: String| Err(Error::Policy { message: format!("{who}: plan.{field} {msg}") });
        if plan.token_budget == 0 || plan.token_budget > self.max_num_batched_tokens {
            return bad("token_budget", format!("must be in 1..={} (the pool's max_num_batched_tokens), got {}", self.max_num_batched_tokens, plan.token_budget));
        }
        if plan.max_num_seqs == 0 || plan.max_num_seqs > self.max_num_seqs {
            return bad("max_num_seqs", format!("must be in 1..={} (the pool's max_num_seqs), got {}", self.max_num_seqs, plan.max_num_seqs));
        }
        if plan.max_prefill_chunk == Some(0) {
            return bad("max_prefill_chunk", "must be at least 1 or None".into());
        }
        Ok(plan)
    }

    /// Preempts the first running request of `victims`; returns it.
    fn preempt_next(victims: &[u32], q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager) -> u32 {
        let v = *victims.iter().find(|&&v| reqs[v as usize].status == Status::Running).expect("the request asking is still running");
        preempt_recompute(&mut reqs[v as usize], kv);
        q.running.retain(|&i| i != v);
        v
    }

    /// The error for an idle instance (nothing running, its whole KV cache free) whose plan
    /// admitted none of its waiting requests: nothing would ever wake it again.
    fn stall(&self, q: &Queues, reqs: &[Request], kv: &BlockManager) -> Error {
        let head = *q.waiting.front().expect("requests are waiting");
        let r = &reqs[head as usize];
        Error::Policy {
            message: format!(
                "{} stalled at step {}: the instance is idle (nothing running, all {} KV blocks free) but its plan admitted none of the {} waiting requests, so request {head} ({} prompt tokens, arrived at {:.3} s) would never finish",
                self.batch_scheduler.describe(),
                self.step,
                kv.total(),
                q.waiting.len(),
                r.prompt,
                r.arrival as f64 * 1e-9
            ),
        }
    }

    /// One pass of vLLM v1's loop with a fresh plan; returns whether it preempted anything.
    fn pass(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) -> Result<bool> {
        let plan = self.checked_plan(q, reqs, kv)?;
        self.step += 1;
        let cap = plan.max_prefill_chunk.unwrap_or(u32::MAX);
        let mut budget = plan.token_budget;
        let running = ordered(&q.running, plan.running_order.as_ref());
        let newest_first: Vec<u32> = q.running.iter().rev().copied().collect();
        let victims = ordered(&newest_first, plan.victim_order.as_ref());
        let mut preempted = Vec::new();
        // (request, tokens, draft tokens): a speculating decode takes 1 + its draft of the budget.
        let mut scheduled: Vec<(u32, u32, u32)> = Vec::new();

        'running: for &idx in &running {
            if budget == 0 {
                break;
            }
            if reqs[idx as usize].status != Status::Running {
                continue;
            }
            let n = reqs[idx as usize].pending_tokens().min(budget).min(cap);
            if n == 0 {
                continue;
            }
            loop {
                let need = kv.growth(&reqs[idx as usize], reqs[idx as usize].computed as u64 + n as u64);
                if kv.can_grow(need) {
                    kv.allocate(need);
                    reqs[idx as usize].blocks += need;
                    break;
                }
                let v = Self::preempt_next(&victims, q, reqs, kv);
                preempted.push(v);
                if let Some(pos) = scheduled.iter().position(|&(r, _, _)| r == v) {
                    let (_, n, draft) = scheduled.remove(pos);
                    budget += n + draft;
                }
                if v == idx {
                    break 'running;
                }
            }
            let r = &mut reqs[idx as usize];
            let draft = if n == 1 && r.is_decoding() { grant_draft(r, self.draft.for_request(idx), budget - 1, kv, &mut batch.lookahead_denied) } else { 0 };
            scheduled.push((idx, n, draft));
            budget -= n + draft;
        }
        batch.preempted += preempted.len() as u32;
        for &v in &preempted {
            q.waiting.push_front(v);
        }
        // The running chunks that stayed scheduled (a later victim's would never be computed).
        for &(idx, n, _) in &scheduled {
            publish_chunk(kv, &mut reqs[idx as usize], n);
        }

        if preempted.is_empty() {
            let waiting: Vec<u32> = q.waiting.iter().copied().collect();
            for idx in ordered(&waiting, plan.waiting_order.as_ref()) {
                if budget == 0 || q.running.len() as u32 >= plan.max_num_seqs {
                    break;
                }
                let r = &mut reqs[idx as usize];
                kv.attach(r);
                let n = r.pending_tokens().min(budget).min(cap);
                let need = kv.growth(r, r.computed as u64 + n as u64);
                let check = if self.reserve_full_prompt { kv.growth(r, r.known_tokens() as u64) } else { need };
                // The watermark applies while a request is running (vLLM's `has_scheduled_reqs =
                // bool(self.running)`, admissions included).
                if !(if q.running.is_empty() { kv.can_grow(check) } else { kv.can_admit(check) }) {
                    kv.abandon(r);
                    break;
                }
                kv.allocate(need);
                r.blocks = need;
                r.status = Status::Running;
                publish_chunk(kv, r, n);
                q.waiting.retain(|&i| i != idx);
                q.running.push(idx);
                scheduled.push((idx, n, 0));
                budget -= n;
            }
        }
        for (idx, n, draft) in scheduled {
            batch.push_with_draft(idx, &reqs[idx as usize], n, draft);
        }
        Ok(!preempted.is_empty())
    }
}

/// Caches the whole prefix entries of `r`'s prompt that its chunk of `n` tokens completes, as
/// vLLM v1's `allocate_slots` caches full blocks when it allocates them: a request admitted later
/// in the same step, or a step later while this prompt is still being chunked, finds them (the
/// attention kernel reads them after the layer writes them).
fn publish_chunk(kv: &mut BlockManager, r: &mut Request, n: u32) {
    if !r.hashes.is_empty() && r.computed < r.prompt {
        kv.publish_upto(r, r.computed + n);
    }
}

impl Scheduler for VllmV1Scheduler {
    fn schedule(&mut self, q: &mut Queues, reqs: &mut [Request], kv: &mut BlockManager, batch: &mut Batch) {
        if self.error.is_some() {
            return;
        }
        // A pass that preempts (possibly every running request, the one asking included) and
        // schedules nothing would leave the instance idle with nothing to wake it: plan again at
        // once, as vLLM's engine loop does on its next step. Such a pass removes at least one
        // running request, so at most `running + 1` passes run.
        for _ in 0..=q.running.len() {
            match self.pass(q, reqs, kv, batch) {
                Ok(true) if batch.items.is_empty() => continue,
                Ok(_) => break,
                Err(e) => {
                    self.error = Some(e);
                    return;
                }
            }
        }
        if batch.items.is_empty() && q.running.is_empty() && !q.waiting.is_empty() && kv.free() == kv.total() {
            self.error = Some(self.stall(q, reqs, kv));
        }
    }

    fn reject_reason(&self, _req: &Request) -> Option<String> {
        None
    }

    fn watermark_when_alone(&self) -> bool {
        false
    }

    fn max_batch_tokens(&self) -> u32 {
        self.max_num_batched_tokens
    }

    fn max_batch_seqs(&self) -> u32 {
        self.max_num_seqs
    }

    fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    fn set_now(&mut self, now: crate::time::Nanos) {
        self.now = now;
    }

    fn set_draft_grant(&mut self, grant: DraftGrant) {
        self.draft = grant;
    }
}

#[cfg(test)]
#[path = "vllm_v1_tests.rs"]
mod tests;
