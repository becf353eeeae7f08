//! The events of an asynchronously pipelined instance: a batch is formed whenever stage 1 is free
//! (and fewer than pp batches are in flight), and applied when it leaves the last stage. The
//! instance's `FlowShop` gives both times when the batch forms, so no per-stage events are needed.

use crate::error::Result;
use crate::time::Nanos;

use super::cluster::{Cluster, Event, Queue};
use super::iterations::GapRuns;
use super::Role;

impl Cluster<'_> {
    /// Forms `idx`'s next batch at `now` if it can, and schedules its stage-1-free and done
    /// events; then the layer-wise KV transfers of the prefills it completes.
    pub(super) fn begin_batch(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        let inst = &mut self.instances[idx as usize];
        let started = inst.start_batch(now, self.reqs);
        if let Some(e) = inst.take_policy_error() {
            return Err(e);
        }
        let Some(times) = started? else { return Ok(()) };
        self.schedule(idx, times.stage1_free, Event::StageFree { instance: idx }, queue);
        self.schedule(idx, times.done, Event::BatchDone { instance: idx }, queue);
        self.start_layerwise_handoffs(idx, now, queue)
    }

    /// Stage 1 of `idx` is free at `now`: the next batch may form.
    pub(super) fn stage1_free(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        self.instances[idx as usize].stage1_freed();
        self.begin_batch(idx, now, queue)
    }

    /// The oldest batch of `idx` left the last stage at `now`: applies its tokens, moves its
    /// prefilled requests on, and forms the next batch if stage 1 is free.
    pub(super) fn batch_done(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        let mut gaps = GapRuns::new(&mut self.itl);
        let record = self.instances[idx as usize].finish_batch(now, self.reqs, |t, prev, n| gaps.push(t, prev, n));
        gaps.finish();
        if let Some(l) = self.log.as_mut() {
            l.push(idx, &record);
        }
        for req in self.instances[idx as usize].take_handoffs() {
            self.prefilled(req, now, queue)?;
        }
        if self.instances[idx as usize].role == Role::Decode {
            self.retry_handoffs(now, queue)?;
        }
        self.mixed_pool_iteration_ended(idx, now);
        self.begin_batch(idx, now, queue)
    }
}

impl super::PoolConfig {
    /// The pool's settings that need the synchronous pipeline (their phases belong to one
    /// iteration at a time): streamed weights, an expert runtime, KV swapping.
    pub fn needs_sync_pipeline(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.offload.is_some() {
            v.push("offload");
        }
        if self.experts.is_some() {
            v.push("experts");
        }
        if self.scheduler.preemption_mode() == crate::scheduler::PreemptionMode::Swap {
            v.push("scheduler.preemption_mode: swap");
        }
        v
    }
}
