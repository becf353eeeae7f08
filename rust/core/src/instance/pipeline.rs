//! Asynchronous pipeline parallelism: an instance of `pp` stages keeps up to `pp` batches in
//! flight (vLLM's virtual engines), so that every stage works while the others do.
//!
//! A batch is formed as soon as stage 1 is free, from the requests not already in flight (a
//! decode needs its previous token). It then runs through the stages one after the other; its
//! completion follows the flow-shop recurrence over the stages k = 1..pp:
//!
//! ```text
//! start_k = max(end_{k-1}, stage_free_k),   end_k = start_k + stage_time_k,   stage_free_k = end_k
//! ```
//!
//! with `end_0` the time the batch is formed. Only two events follow: stage 1 free (form the next
//! batch) and batch done (apply its tokens); bubbles appear by themselves when fewer batches are
//! ready than stages. A batch takes the first `ceil(ready / (pp - in_flight))` requests not in
//! flight, in running order, so a steady decode load splits into `pp` equal batches — unless that
//! share cannot run (its KV cannot grow): then every ready request. The scheduler admits waiting
//! requests into whichever batch forms next. If nothing is in flight and still nothing can run,
//! the newest running request is preempted by recompute until a batch forms (as vLLM does when
//! the cache cannot hold a step). Decodes run in closed form where they can (`pipeline_groups.rs`).
//! One block manager serves all batches (vLLM v0 splits it between virtual engines instead):
//! every block a batch needs is taken when it forms, so the cache never exceeds its capacity.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::request::Request;
use crate::scheduler::{preempt_recompute, Batch, Item};
use crate::time::{at, ns_to_secs, secs_to_ns, Nanos};

use super::{Instance, IterationRecord};

/// How an instance with several pipeline stages runs its batches (a pool's
/// `parallelism.pipeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineMode {
    /// One iteration at a time, split into `microbatches` that drain the pipeline at its end.
    Sync,
    /// Up to `pp` whole batches in flight, each entering stage 1 as soon as it is free.
    Async,
}

/// Which mode a pool of `pp` stages runs: the `requested` one, else asynchronous unless
/// `microbatches` is set or one of `needs_sync` (the names of the pool's settings that need the
/// synchronous iteration: weight streams, expert runtimes, KV swapping) is present. Errors name
/// the field when asynchronous pipelining is requested with one of those.
pub fn pipeline_mode(requested: Option<PipelineMode>, pp: u32, microbatches: Option<u32>, needs_sync: &[&str]) -> Result<PipelineMode> {
    match requested {
        Some(PipelineMode::Async) if microbatches.is_some() && pp > 1 => {
            Err(Error::config("parallelism.microbatches", "applies to pipeline: sync only (asynchronous pipelining keeps whole batches in flight instead of splitting one); remove it or set pipeline: sync"))
        }
        Some(PipelineMode::Async) if !needs_sync.is_empty() && pp > 1 => Err(Error::config(
            "parallelism.pipeline",
            format!("async cannot be combined with {} (it needs the synchronous iteration); use pipeline: sync", needs_sync.join(", ")),
        )),
        Some(mode) => Ok(mode),
        None if pp > 1 && microbatches.is_none() && needs_sync.is_empty() => Ok(PipelineMode::Async),
        None => Ok(PipelineMode::Sync),
    }
}

/// When each stage of a pipeline is next free: the flow shop batches go through in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowShop {
    stage_free: Vec<Nanos>,
}

impl FlowShop {
    /// A pipeline of `stages` stages, all free from time 0.
    pub fn new(stages: usize) -> Self {
        FlowShop { stage_free: vec![0; stages] }
    }

    /// Sends a batch formed at `now` through the stages, `stage_ns[k]` on stage k: returns when
    /// it leaves stage 1 and when it leaves the last stage, or None if the clock would overflow.
    pub fn enter(&mut self, now: Nanos, stage_ns: &[Nanos]) -> Option<(Nanos, Nanos)> {
        debug_assert_eq!(stage_ns.len(), self.stage_free.len());
        self.enter_each(now, stage_ns.iter().copied())
    }

    /// [`FlowShop::enter`] with the stage times in seconds, each rounded as [`secs_to_ns`] does
    /// (as it goes: no list of nanoseconds is built).
    pub fn enter_secs(&mut self, now: Nanos, stage_secs: &[f64]) -> Option<(Nanos, Nanos)> {
        debug_assert_eq!(stage_secs.len(), self.stage_free.len());
        self.enter_each(now, stage_secs.iter().map(|&s| secs_to_ns(s)))
    }

    /// The flow-shop recurrence over the stages' times, in stage order.
    #[inline]
    fn enter_each(&mut self, now: Nanos, stage_ns: impl Iterator<Item = Nanos>) -> Option<(Nanos, Nanos)> {
        let mut end = now;
        for (free, t) in self.stage_free.iter_mut().zip(stage_ns) {
            end = at(end.max(*free), t)?;
            *free = end;
        }
        Some((self.stage_free[0], end))
    }

    /// When each stage is next free.
    pub fn stage_free(&self) -> &[Nanos] {
        &self.stage_free
    }
}

/// A batch in flight and the record of its iteration.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    /// (Boxed: a batch is kept in flight and applied at every pass, and moving the box moves
    /// a pointer.)
    pub(super) batch: Box<Batch>,
    pub(super) record: IterationRecord,
    /// The group whose closed-form pass the batch is (its members are not in `batch.items`).
    pub(super) group: Option<usize>,
}

/// An instance's asynchronous pipeline: its stages and the batches in flight, oldest first
/// (batches finish in the order they entered).
#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    shop: FlowShop,
    pub(super) in_flight: VecDeque<InFlight>,
    stage1_busy: bool,
    /// Batches already applied, kept to be reused by the next ones in flight (boxed as in
    /// flight: handing one over moves a pointer).
    #[allow(clippy::vec_box)]
    pub(super) spare: Vec<Box<Batch>>,
    /// Reused lists of request ids: in flight, ready, the running list put aside while the
    /// scheduler sees a batch's share (so that forming a batch allocates nothing once grown).
    scratch: [Vec<u32>; 3],
}

impl Pipeline {
    /// A pipeline of `stages` idle stages.
    pub(super) fn new(stages: usize) -> Self {
        Pipeline { shop: FlowShop::new(stages), in_flight: VecDeque::new(), stage1_busy: false, spare: Vec::new(), scratch: Default::default() }
    }

    /// Whether no batch can be formed until an event already due (stage 1 free, a batch done).
    pub(super) fn blocked(&self) -> bool {
        self.stage1_busy || self.in_flight.len() >= self.shop.stage_free.len()
    }

    /// Whether exactly one more batch may be in flight (the next batch's share is then every
    /// ready request).
    pub(super) fn one_slot_free(&self) -> bool {
        self.in_flight.len() + 1 == self.shop.stage_free.len()
    }

    /// The requests the batches in flight list as items (a group's members are not listed).
    pub(super) fn items_in_flight(&self) -> usize {
        self.in_flight.iter().map(|f| f.batch.items.len()).sum()
    }

    /// The batch in flight carrying group `group`'s pass, now an ordinary batch (its caller gives
    /// it the members as items).
    pub(super) fn group_batch(&mut self, group: usize) -> Option<&mut Batch> {
        let f = self.in_flight.iter_mut().find(|f| f.group == Some(group))?;
        f.group = None;
        Some(&mut *f.batch)
    }
}

/// When a batch just formed leaves stage 1 and when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTimes {
    /// When stage 1 is free for the next batch.
    pub stage1_free: Nanos,
    /// When the batch leaves the last stage and its tokens are applied.
    pub done: Nanos,
}

impl Instance {
    /// Runs this instance's batches in `mode`: asynchronous pipelining (for pp > 1) costs every
    /// batch as one micro-batch going through the stages.
    pub fn with_pipelining(mut self, mode: PipelineMode) -> Self {
        if mode == PipelineMode::Async && self.cost.pp() > 1 {
            self.cost = std::rc::Rc::new(self.cost.single_microbatch());
            self.ops_memo = Default::default();
            self.pipeline = Some(Pipeline::new(self.cost.pp() as usize));
        }
        self
    }

    /// Whether the instance pipelines its batches asynchronously.
    pub fn is_pipelined(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Batches in flight.
    pub fn batches_in_flight(&self) -> usize {
        self.pipeline.as_ref().map_or(0, |p| p.in_flight.len())
    }

    /// Forms the next batch at `now` if stage 1 is free and fewer than pp batches are in flight,
    /// from the requests not in flight; returns when it frees stage 1 and when it is done (None:
    /// nothing to run, or not now).
    pub fn start_batch(&mut self, now: Nanos, reqs: &mut [Request]) -> Result<Option<BatchTimes>> {
        let Some(p) = self.pipeline.as_ref() else { return Ok(None) };
        if p.blocked() {
            return Ok(None);
        }
        let group = self.form_group_batch(now, reqs);
        if group.is_none() {
            self.settle_groups(reqs);
            self.form_ordinary_batch(now, reqs);
        }
        let group = group.flatten();
        debug_assert_eq!(self.batch.swap_out_blocks + self.batch.swap_in_blocks, 0, "asynchronous pipelining never swaps");
        if self.batch.items.is_empty() && group.is_none() {
            return Ok(None);
        }
        let (times, record) = self.launch_batch(now, reqs)?;
        self.keep_in_flight(group, record);
        Ok(Some(times))
    }

    /// Keeps the batch just launched (a copy of `self.batch`) in flight, behind the others.
    #[inline(always)]
    pub(super) fn keep_in_flight(&mut self, group: Option<usize>, record: IterationRecord) {
        let p = self.pipeline.as_mut().expect("pipelined");
        // A batch done earlier is reused for the copy (its item list keeps its allocation).
        let batch = match p.spare.pop() {
            Some(mut b) => {
                b.as_mut().clone_from(&self.batch);
                b
            }
            None => Box::new(self.batch.clone()),
        };
        p.in_flight.push_back(InFlight { batch, record, group });
    }

    /// Sends the batch just formed (`self.batch`) into the pipeline at `now`: its first scheduling
    /// times, its cost per stage, the iteration's counts, and its way through the flow shop (stage 1
    /// busy until it leaves). Returns when it frees stage 1 and when it is done, and its record;
    /// the caller keeps it in flight.
    #[inline(always)]
    pub(super) fn launch_batch(&mut self, now: Nanos, reqs: &mut [Request]) -> Result<(BatchTimes, IterationRecord)> {
        for it in &self.batch.items {
            let r = &mut reqs[it.req as usize];
            r.first_scheduled = r.first_scheduled.min(now);
        }
        let st = self.batch_stage_costs(reqs);
        self.count_iteration(&st.average, secs_to_ns(st.average.seconds), None, 0);
        let record = self.batch_record(now);
        let p = self.pipeline.as_mut().expect("pipelined");
        let (stage1_free, done) = p.shop.enter_secs(now, &st.seconds).ok_or_else(|| Error::Simulation {
            message: format!(
                "simulated time overflow: a pipelined batch starting at {:.3} s with stage times {:?} s would end past the clock's limit; the pool's GPU figures or calibration make iterations absurdly long",
                ns_to_secs(now),
                st.seconds
            ),
        })?;
        p.stage1_busy = true;
        self.busy = true;
        Ok((BatchTimes { stage1_free, done }, record))
    }

    /// The scheduler's batch at `now` from the requests not in flight (the share of the ready
    /// ones first, then every ready one, then preempting while nothing can run).
    fn form_ordinary_batch(&mut self, now: Nanos, reqs: &mut [Request]) {
        let (flying, ready, share) = self.split_for_batch();
        self.batch.clear();
        self.scheduler.set_now(now);
        if flying.is_empty() && share == ready.len() {
            self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        } else {
            self.schedule_share(&ready[..share], reqs);
        }
        if self.batch.items.is_empty() && share < ready.len() {
            // The share alone cannot run (its KV cannot grow): the batch may take every ready request.
            let preempted = self.batch.preempted;
            self.form_without(&flying, now, reqs);
            self.batch.preempted += preempted;
        }
        let p = self.pipeline.as_mut().expect("pipelined");
        (p.scratch[0], p.scratch[1]) = (flying, ready);
        while self.batch.items.is_empty() && self.batches_in_flight() == 0 && !self.queues.running.is_empty() {
            // Nothing in flight and nothing can run: the running requests hold the cache and none
            // can grow (chunked prefills that batches in flight took in turn). As vLLM does when
            // the cache cannot hold the next step, the newest is preempted by recompute.
            let preempted = self.batch.preempted + 1;
            let victim = self.queues.running.pop().expect("running is not empty");
            preempt_recompute(&mut reqs[victim as usize], &mut self.kv);
            self.queues.waiting.push_front(victim);
            self.form_without(&[], now, reqs);
            self.batch.preempted += preempted;
        }
    }

    /// Stage 1 finished its batch: a new one may be formed.
    pub fn stage1_freed(&mut self) {
        if let Some(p) = self.pipeline.as_mut() {
            p.stage1_busy = false;
            self.busy = p.blocked();
        }
    }

    /// Applies the oldest batch in flight, done at `now` (as `finish_iteration` does for an
    /// iteration); returns its record.
    pub fn finish_batch(&mut self, now: Nanos, reqs: &mut [Request], on_token: impl FnMut(Nanos, Nanos, u64)) -> IterationRecord {
        let mut on_token = on_token;
        let front = self.pipeline.as_ref().and_then(|p| p.in_flight.front()).expect("finish_batch on a pipelined instance with a batch in flight");
        if front.group.is_some() && front.batch.items.is_empty() && self.spec.is_none() && !self.stretch.forming() {
            // A group's pass alone: nothing else in it for `finish_iteration` to apply.
            let record = front.record;
            self.finish_group_flight(now, reqs, &mut on_token);
            return IterationRecord { end: now, ..record };
        }
        let p = self.pipeline.as_mut().expect("pipelined");
        let done = p.in_flight.pop_front().expect("a batch is in flight");
        // `held` keeps the latest batch formed while the one done is applied.
        let mut held = done.batch;
        std::mem::swap(&mut self.batch, &mut held);
        self.apply_speculation();
        if let Some(g) = done.group {
            self.finish_group(g, now, reqs, &mut on_token);
        }
        self.finish_iteration(now, reqs, &mut on_token);
        if done.group.is_none() {
            self.join_group(now, reqs);
        }
        std::mem::swap(&mut self.batch, &mut held);
        if let Some(p) = self.pipeline.as_mut() {
            p.spare.push(held);
        }
        self.busy = self.pipeline.as_ref().is_some_and(|p| p.blocked());
        IterationRecord { end: now, ..done.record }
    }

    /// The running requests in flight and the ready ones (the others), both in running order,
    /// and how many of the ready ones lead the next batch's share: `ceil(ready / free slots)`.
    fn split_for_batch(&mut self) -> (Vec<u32>, Vec<u32>, usize) {
        let p = self.pipeline.as_mut().expect("pipelined");
        let (mut flying, mut ready) = (std::mem::take(&mut p.scratch[0]), std::mem::take(&mut p.scratch[1]));
        flying.clear();
        ready.clear();
        let running = &self.queues.running;
        match p.in_flight.len() {
            0 => ready.extend_from_slice(running),
            // One batch in flight took its requests in running order (the scheduler appends its
            // admissions to the list): a cursor along its items meets them all, in order, and
            // then no other running request can be one of them. If it does not (the list was
            // reordered), the set below decides.
            1 if split_along(running, &p.in_flight[0].batch.items, &mut flying, &mut ready) => {}
            _ => {
                flying.clear();
                ready.clear();
                let in_flight = &mut self.id_sets[0];
                in_flight.reset(p.in_flight.iter().map(|f| f.batch.items.len()).sum());
                for it in p.in_flight.iter().flat_map(|f| f.batch.items.iter()) {
                    in_flight.insert(it.req);
                }
                for &r in running {
                    if in_flight.contains(r) {
                        flying.push(r);
                    } else {
                        ready.push(r);
                    }
                }
            }
        }
        let share = ready.len().div_ceil(p.shop.stage_free.len() - p.in_flight.len());
        (flying, ready, share)
    }

    /// Schedules with the running list cut to `share` (a part of it, in its order), then puts
    /// the others back in their places: what [`Instance::schedule_without`] does with the others
    /// set aside, without testing every running request against them.
    fn schedule_share(&mut self, share: &[u32], reqs: &mut [Request]) {
        let p = self.pipeline.as_mut().expect("pipelined");
        let mut cut = std::mem::take(&mut p.scratch[2]);
        cut.clear();
        cut.extend_from_slice(share);
        let order = std::mem::replace(&mut self.queues.running, cut);
        self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        let after = &self.queues.running;
        if after.len() >= share.len() && after[..share.len()] == *share {
            // Nothing left the running list, only admissions were appended: `order` stays whole.
            let mut merged = order;
            merged.extend_from_slice(&after[share.len()..]);
            let cut = std::mem::replace(&mut self.queues.running, merged);
            self.pipeline.as_mut().expect("pipelined").scratch[2] = cut;
            return;
        }
        let in_share = &mut self.id_sets[0];
        in_share.fill_from(share);
        let parked: Vec<u32> = order.iter().copied().filter(|&r| !in_share.contains(r)).collect();
        self.merge_set_aside(order, &parked);
    }

    /// The scheduler's batch at `now` with the `parked` running requests set aside.
    fn form_without(&mut self, parked: &[u32], now: Nanos, reqs: &mut [Request]) {
        self.batch.clear();
        self.scheduler.set_now(now);
        if parked.is_empty() {
            self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        } else {
            self.schedule_without(parked, reqs);
        }
    }
}

/// Splits `running` into the requests of `items` (a batch in flight) and the others, both in
/// running order, if `items` appear in `running` in their own order; false (the lists then hold
/// no meaning) if not.
fn split_along(running: &[u32], items: &[Item], flying: &mut Vec<u32>, ready: &mut Vec<u32>) -> bool {
    let mut next = items.iter().map(|it| it.req).peekable();
    for &r in running {
        if next.peek() == Some(&r) {
            next.next();
            flying.push(r);
        } else {
            ready.push(r);
        }
    }
    next.peek().is_none()
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
