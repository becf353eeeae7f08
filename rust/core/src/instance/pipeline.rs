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
        let mut end = now;
        for (free, &t) in self.stage_free.iter_mut().zip(stage_ns) {
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
struct InFlight {
    batch: Batch,
    record: IterationRecord,
    /// The group whose closed-form pass the batch is (its members are not in `batch.items`).
    group: Option<usize>,
}

/// An instance's asynchronous pipeline: its stages and the batches in flight, oldest first
/// (batches finish in the order they entered).
#[derive(Debug, Clone)]
pub(super) struct Pipeline {
    shop: FlowShop,
    in_flight: VecDeque<InFlight>,
    stage1_busy: bool,
    /// Batches already applied, kept to be reused by the next ones in flight.
    spare: Vec<Batch>,
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
    fn blocked(&self) -> bool {
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
        Some(&mut f.batch)
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
            self.decode_memo = Default::default();
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
        for it in &self.batch.items {
            let r = &mut reqs[it.req as usize];
            r.first_scheduled = r.first_scheduled.min(now);
        }
        let st = self.batch_stage_costs(reqs);
        let stage_ns: Vec<Nanos> = st.seconds.iter().map(|&s| secs_to_ns(s)).collect();
        self.count_iteration(&st.average, secs_to_ns(st.average.seconds), None, 0);
        let record = self.batch_record(now);
        let p = self.pipeline.as_mut().expect("pipelined");
        let (stage1_free, done) = p.shop.enter(now, &stage_ns).ok_or_else(|| Error::Simulation {
            message: format!(
                "simulated time overflow: a pipelined batch starting at {:.3} s with stage times {:?} s would end past the clock's limit; the pool's GPU figures or calibration make iterations absurdly long",
                ns_to_secs(now),
                st.seconds
            ),
        })?;
        // A batch done earlier is reused for the copy (its item list keeps its allocation).
        let batch = match p.spare.pop() {
            Some(mut b) => {
                b.clone_from(&self.batch);
                b
            }
            None => self.batch.clone(),
        };
        p.in_flight.push_back(InFlight { batch, record, group });
        p.stage1_busy = true;
        self.busy = true;
        Ok(Some(BatchTimes { stage1_free, done }))
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
        let p = self.pipeline.as_mut().expect("finish_batch on a pipelined instance");
        let done = p.in_flight.pop_front().expect("a batch is in flight");
        let latest = std::mem::replace(&mut self.batch, done.batch);
        self.apply_speculation();
        let mut on_token = on_token;
        if let Some(g) = done.group {
            self.finish_group(g, now, reqs, &mut on_token);
        }
        self.finish_iteration(now, reqs, &mut on_token);
        if done.group.is_none() {
            self.join_group(now, reqs);
        }
        let finished = std::mem::replace(&mut self.batch, latest);
        if let Some(p) = self.pipeline.as_mut() {
            p.spare.push(finished);
        }
        self.busy = self.pipeline.as_ref().is_some_and(|p| p.blocked());
        IterationRecord { end: now, ..done.record }
    }

    /// The running requests in flight and the ready ones (the others), both in running order,
    /// and how many of the ready ones lead the next batch's share: `ceil(ready / free slots)`.
    fn split_for_batch(&mut self) -> (Vec<u32>, Vec<u32>, usize) {
        let p = self.pipeline.as_mut().expect("pipelined");
        let (mut flying, mut ready) = (std::mem::take(&mut p.scratch[0]), std::mem::take(&mut p.scratch[1]));
        (flying.clear(), ready.clear());
        let running = &self.queues.running;
        match p.in_flight.len() {
            0 => ready.extend_from_slice(running),
            // One batch in flight took its requests in running order (the scheduler appends its
            // admissions to the list): a cursor along its items meets them all, in order, and
            // then no other running request can be one of them. If it does not (the list was
            // reordered), the set below decides.
            1 if split_along(running, &p.in_flight[0].batch.items, &mut flying, &mut ready) => {}
            _ => {
                (flying.clear(), ready.clear());
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
mod tests {
    use super::*;

    #[test]
    fn flow_shop_follows_the_recurrence() {
        // Three stages of 3, 5 and 2 ns. Batch A at t=0: stage ends 3, 8, 10.
        let mut shop = FlowShop::new(3);
        assert_eq!(shop.enter(0, &[3, 5, 2]), Some((3, 10)));
        // Batch B formed when stage 1 frees (t=3): stage 1 ends 6, stage 2 waits for A until 8 and
        // ends 13, stage 3 ends 15.
        assert_eq!(shop.enter(3, &[3, 5, 2]), Some((6, 15)));
        assert_eq!(shop.stage_free(), &[6, 13, 15]);
        // Batch C, a short one (1, 1, 1) at t=6: 7, max(7, 13) + 1 = 14, max(14, 15) + 1 = 16.
        assert_eq!(shop.enter(6, &[1, 1, 1]), Some((7, 16)));
        // A batch formed late, after everything drained: no waiting, 20 + 3 + 5 + 2.
        assert_eq!(shop.enter(20, &[3, 5, 2]), Some((23, 30)));
        assert_eq!(shop.enter(Nanos::MAX - 1, &[3, 5, 2]), None);
    }

    #[test]
    fn a_batch_in_flight_is_found_along_the_running_list() {
        let items = |ids: &[u32]| ids.iter().map(|&req| Item { req, tokens: 1, draft: 0 }).collect::<Vec<_>>();
        let (mut flying, mut ready) = (Vec::new(), Vec::new());
        assert!(split_along(&[5, 9, 2, 7, 4], &items(&[9, 7]), &mut flying, &mut ready));
        assert_eq!((flying.as_slice(), ready.as_slice()), (&[9, 7][..], &[5, 2, 4][..]));
        // Out of running order, or not all running: not split (the caller falls back to a set).
        for batch in [&[7, 9][..], &[9, 8][..]] {
            (flying.clear(), ready.clear());
            assert!(!split_along(&[5, 9, 2, 7, 4], &items(batch), &mut flying, &mut ready), "{batch:?}");
        }
    }

    #[test]
    fn balanced_stages_pipeline_without_bubbles() {
        // Two equal stages of 10 ns: batches formed every 10 ns finish every 10 ns after the
        // first (steady state: one batch per stage time, not per two).
        let mut shop = FlowShop::new(2);
        let done: Vec<Nanos> = (0..4).map(|i| shop.enter(10 * i, &[10, 10]).unwrap().1).collect();
        assert_eq!(done, [20, 30, 40, 50]);
    }

    fn pipelined_instance() -> Instance {
        use crate::calibration::Efficiency;
        use crate::cost::InstanceSpec;
        use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
        use crate::instance::InstanceSetup;
        use crate::memory::MemoryConfig;
        use crate::scheduler::SchedulerConfig;
        let gpu = GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 };
        let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
        let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(crate::model::fixtures::llama3_8b(), gpu, Efficiency { iteration_overhead: 1e-3, ..Efficiency::default() }, 1) };
        Instance::new(InstanceSetup { pool: 0, spec, memory: &MemoryConfig::default(), scheduler: &sched, experts: None }).unwrap().with_pipelining(PipelineMode::Async)
    }

    /// The stage times, in ns, of the batch the instance formed last.
    fn stage_ns(inst: &Instance) -> Vec<Nanos> {
        inst.cost().stage_costs(&inst.batch().shape).seconds.iter().map(|&s| secs_to_ns(s)).collect()
    }

    #[test]
    fn an_instance_keeps_two_batches_in_flight_and_splits_the_ready_requests() {
        let mut inst = pipelined_instance();
        assert!(inst.is_pipelined());
        let mut reqs: Vec<Request> = (0..4).map(|_| Request::new(0, 100, 3)).collect();
        for (i, r) in reqs.iter_mut().enumerate() {
            inst.enqueue(i as u32, r);
        }
        inst.woken();
        // Batch A: the four prompts. Stage 1 (with the 1 ms CPU step) is the longer stage.
        let a = inst.start_batch(0, &mut reqs).unwrap().unwrap();
        let sa = stage_ns(&inst);
        assert_eq!(inst.batch().items.len(), 4);
        assert!(sa[0] > sa[1]);
        assert_eq!(a, BatchTimes { stage1_free: sa[0], done: sa[0] + sa[1] });
        assert!(inst.is_busy() && inst.start_batch(0, &mut reqs).unwrap().is_none(), "stage 1 is busy");
        // Stage 1 frees: every running request is in flight, nothing to form; the instance may be woken.
        inst.stage1_freed();
        assert!(inst.start_batch(a.stage1_free, &mut reqs).unwrap().is_none());
        assert!(!inst.is_busy());
        let record = inst.finish_batch(a.done, &mut reqs, |_, _, _| {});
        assert_eq!((record.start, record.end, record.prefill_tokens), (0, a.done, 400));
        assert!(reqs.iter().all(|r| r.generated == 1 && r.first_token == a.done));
        // Batch B: the first two of the four ready decodes (ceil(4 / 2)); C, formed when B frees
        // stage 1, the other two. C's stage 2 starts once its stage 1 and B's stage 2 are both done.
        let b = inst.start_batch(a.done, &mut reqs).unwrap().unwrap();
        let sb = stage_ns(&inst);
        assert_eq!(inst.batch().items.iter().map(|i| i.req).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(b, BatchTimes { stage1_free: a.done + sb[0], done: a.done + sb[0] + sb[1] });
        inst.stage1_freed();
        let c = inst.start_batch(b.stage1_free, &mut reqs).unwrap().unwrap();
        let sc = stage_ns(&inst);
        assert_eq!(inst.batch().items.iter().map(|i| i.req).collect::<Vec<_>>(), [2, 3]);
        let c1 = b.stage1_free + sc[0];
        assert_eq!(c, BatchTimes { stage1_free: c1, done: c1.max(b.done) + sc[1] });
        assert_eq!(inst.batches_in_flight(), 2);
        // Two batches in flight (= pp): blocked even once stage 1 frees, until B is done.
        inst.stage1_freed();
        assert!(inst.is_busy() && inst.start_batch(c.stage1_free, &mut reqs).unwrap().is_none());
        inst.finish_batch(b.done, &mut reqs, |_, _, _| {});
        assert_eq!(reqs.iter().map(|r| r.generated).collect::<Vec<_>>(), [2, 2, 1, 1]);
        assert!(!inst.is_busy());
        let (used, total) = inst.kv_usage();
        assert!(used <= total);
        assert_eq!(inst.stats.iterations, 3);
    }

    #[test]
    fn the_mode_defaults_to_async_for_pipelines_and_refuses_what_needs_sync() {
        assert_eq!(pipeline_mode(None, 2, None, &[]).unwrap(), PipelineMode::Async);
        assert_eq!(pipeline_mode(None, 1, None, &[]).unwrap(), PipelineMode::Sync);
        assert_eq!(pipeline_mode(None, 4, Some(4), &[]).unwrap(), PipelineMode::Sync);
        assert_eq!(pipeline_mode(None, 2, None, &["offload"]).unwrap(), PipelineMode::Sync);
        assert_eq!(pipeline_mode(Some(PipelineMode::Sync), 2, None, &[]).unwrap(), PipelineMode::Sync);
        let err = |r: Result<PipelineMode>| match r {
            Err(Error::Config { path, message }) => (path, message),
            other => panic!("expected a config error, got {other:?}"),
        };
        let (path, message) = err(pipeline_mode(Some(PipelineMode::Async), 2, Some(3), &[]));
        assert_eq!(path, "parallelism.microbatches");
        assert!(message.contains("pipeline: sync"), "{message}");
        let (path, message) = err(pipeline_mode(Some(PipelineMode::Async), 2, None, &["offload", "experts"]));
        assert_eq!(path, "parallelism.pipeline");
        assert!(message.contains("offload, experts"), "{message}");
    }
}
