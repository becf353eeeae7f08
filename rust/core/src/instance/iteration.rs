//! An instance's iteration: form the batch, time it (cost model, experts, weight streaming),
//! count it, and later apply its tokens.

use crate::cost::{IterationCost, WeightStream};
use crate::moe::{ExpertTier, TokenSpan};
use crate::kv::BlockManager;
use crate::request::{Request, Status};
use crate::time::{secs_to_ns, Nanos};

use super::{Instance, IterationRecord, Role};

/// What the caller must do to run the iteration an instance has just formed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterationStart {
    /// Compute time of the iteration (without waiting for offloaded weights, and without the
    /// `tail_ns` that follows them).
    pub compute_ns: Nanos,
    /// Bytes (per GPU) to swap over the host link before computing; 0 for none.
    pub transfer_bytes: u64,
    /// Offloaded weights to stream in during (or, without overlap, before) the compute.
    pub stream: Option<WeightStream>,
    /// Compute that runs once the compute above and the stream are both done: a speculating
    /// decode's proposer after its verify pass, with offloaded weights (0 otherwise).
    pub tail_ns: Nanos,
}

impl Instance {
    /// Forms the next iteration at `now`; None when there is nothing to run. The instance is busy
    /// from here until `finish_iteration`; the caller runs the swap transfer, the compute and the
    /// weight stream that [`IterationStart`] describes.
    pub fn start_iteration(&mut self, now: Nanos, reqs: &mut [Request]) -> Option<IterationStart> {
        debug_assert!(!self.busy);
        if !self.form_batch(now, reqs) {
            return None;
        }
        let it = self.batch_cost(reqs);
        let (compute_ns, stream, stall_ns, tail_ns) = self.compute_time(&it, reqs);
        self.busy = true;
        let transfer_bytes = self.count_iteration(&it, compute_ns.saturating_add(tail_ns), stream, stall_ns);
        self.record = Some(self.batch_record(now));
        Some(IterationStart { compute_ns, transfer_bytes, stream, tail_ns })
    }

    /// Scheduling: the scheduler fills the batch at `now` (with token grouping, the experts'
    /// parked requests set aside); false when there is nothing to run, not even a swap.
    fn form_batch(&mut self, now: Nanos, reqs: &mut [Request]) -> bool {
        self.batch.clear();
        self.scheduler.set_now(now);
        if !self.form_in_closed_form(reqs) {
            self.settle_decodes(reqs);
            let parked = self.moe.as_ref().map(|m| m.park(&self.queues.running, reqs)).unwrap_or_default();
            if parked.is_empty() {
                self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
            } else {
                self.schedule_without(&parked, reqs);
            }
        }
        // Closed-form members were scheduled before; only the batch's items can be new.
        for it in &self.batch.items {
            let r = &mut reqs[it.req as usize];
            r.first_scheduled = r.first_scheduled.min(now);
        }
        !(self.batch.items.is_empty() && !self.stretch.forming() && self.batch.swap_out_blocks == 0)
    }

    /// The batch's compute time, the weights to stream in for it, the expert stall and the
    /// compute after both (see [`IterationStart::tail_ns`]): the cost model's, or with expert
    /// settings the expert runtime's (its fetches become the stream). A swap-only batch computes
    /// nothing.
    fn compute_time(&mut self, it: &IterationCost, reqs: &[Request]) -> (Nanos, Option<WeightStream>, Nanos, Nanos) {
        if self.batch.items.is_empty() && !self.stretch.forming() {
            return (0, None, 0, 0);
        }
        let mut stall_ns = 0;
        let mut compute_ns = secs_to_ns(it.seconds - it.weight_stall_seconds);
        let verify = self.spec.as_ref().and_then(|s| s.verify());
        if let (Some((shape, _, proposer)), true, None) = (verify, self.cost.offload().is_some(), &self.moe) {
            // Offloaded weights and speculation: the verify pass streams what its k + 1 query
            // tokens per decode need (more predicted-active neurons than one token's), and the
            // proposer runs after it, once its weights have arrived.
            let stream = self.cost.weight_stream(shape.tokens() as f64);
            return (secs_to_ns(it.seconds - it.weight_stall_seconds - proposer), stream, 0, secs_to_ns(*proposer));
        }
        let mut stream = self.cost.weight_stream(self.batch.shape.tokens() as f64);
        if let Some(m) = self.moe.as_mut() {
            // A speculating decode's verify pass routes its draft tokens too (k + 1 per decode),
            // and its proposer runs before it.
            let spans: Vec<TokenSpan> = self.batch.items.iter().map(|i| TokenSpan { req: i.req, start: reqs[i.req as usize].computed as u64, tokens: i.tokens + i.draft }).collect();
            // The batch's own shape was just costed through the decode memo: its operators are there.
            let (base, fixed) = match verify {
                Some((shape, chunks, _)) => self.cost.moe_layer_split_verify(shape, chunks),
                None => self.cost.moe_layer_split_memo(&self.batch.shape, &mut self.ops_memo.borrow_mut()),
            };
            let x = m.iteration(&spans, &self.cost, base, fixed);
            compute_ns = secs_to_ns(match verify {
                Some(&(_, _, proposer)) => x.seconds + proposer,
                None => x.seconds,
            });
            stall_ns = secs_to_ns(x.stall_seconds);
            m.stats.stall_ns = m.stats.stall_ns.saturating_add(stall_ns);
            if x.fetch_bytes > 0 {
                let flash = m.config().placement == ExpertTier::Flash;
                stream = Some(WeightStream { flash_bytes: if flash { x.fetch_bytes } else { 0 }, dram_bytes: if flash { 0 } else { x.fetch_bytes }, overlap: true });
            }
        }
        (compute_ns, stream, stall_ns, 0)
    }

    /// Schedules with the `parked` running requests set aside (token grouping), then puts them
    /// back in their places.
    pub(super) fn schedule_without(&mut self, parked: &[u32], reqs: &mut [Request]) {
        // Membership through reusable id sets (no per-item scan of `parked`, no allocation once
        // grown): this runs for every batch of an asynchronous pipeline.
        let order = self.queues.running.clone();
        let set_aside = &mut self.id_sets[0];
        set_aside.fill_from(parked);
        self.queues.running.retain(|&r| !set_aside.contains(r));
        let kept = self.queues.running.len();
        self.scheduler.schedule(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
        let after = &self.queues.running;
        // The running list the scheduler saw is `order` without the set-aside requests: compared
        // in place rather than copied for every batch.
        if after.len() >= kept && after[..kept].iter().eq(order.iter().filter(|&&r| !set_aside.contains(r))) {
            // Nothing left the running list, only admissions were appended (requests from the
            // waiting or swapped queues, never in `order`): the merge below keeps `order` whole
            // and appends them.
            let mut merged = order;
            merged.extend_from_slice(&after[kept..]);
            self.queues.running = merged;
            return;
        }
        self.merge_set_aside(order, parked);
    }

    /// After scheduling with the `parked` requests of `order` (the running list before) set
    /// aside: puts them back in their places among the requests the scheduler left running, in
    /// `order`'s order, the scheduler's admissions after them.
    pub(super) fn merge_set_aside(&mut self, order: Vec<u32>, parked: &[u32]) {
        let [_, now_running, known] = &mut self.id_sets;
        now_running.reset(parked.len() + self.queues.running.len());
        for &r in parked.iter().chain(&self.queues.running) {
            now_running.insert(r);
        }
        known.fill_from(&order);
        let mut merged: Vec<u32> = order.into_iter().filter(|&r| now_running.contains(r)).collect();
        merged.extend(self.queues.running.iter().copied().filter(|&r| !known.contains(r)));
        self.queues.running = merged;
    }

    /// The record of the iteration ending at `end` (for the optional iteration log).
    pub fn take_record(&mut self, end: Nanos) -> Option<IterationRecord> {
        self.record.take().map(|r| IterationRecord { end, ..r })
    }

    /// Applies the finished iteration at `now`: advances tokens, samples, finishes requests.
    /// Calls `on_token(time, previous_token_time, n)` for every `n` tokens (after requests' first)
    /// that share both times, in batch order.
    pub fn finish_iteration(&mut self, now: Nanos, reqs: &mut [Request], mut on_token: impl FnMut(Nanos, Nanos, u64)) {
        self.busy = false;
        let closed_form = self.stretch.forming();
        let mut any_finished = closed_form && self.finish_members(now, reqs, &mut on_token);
        for (i, it) in self.batch.items.iter().enumerate() {
            let r = &mut reqs[it.req as usize];
            r.computed += it.tokens;
            if !r.hashes.is_empty() && r.computed >= r.prompt {
                self.kv.publish(r);
            }
            if r.computed != r.known_tokens() {
                continue;
            }
            // Speculation: the accepted draft tokens come with the target's own, in one chunk.
            let accepted = self.spec.as_ref().map_or(0, |s| s.accepted(i));
            r.computed += accepted;
            r.generated += 1 + accepted;
            self.stats.decode_tokens += accepted as u64;
            self.outstanding_tokens += 1 + accepted as u64;
            if r.generated == 1 {
                r.first_token = now;
            } else {
                on_token(now, r.last_token, 1);
            }
            r.last_token = now;
            if r.generated == 1 && self.role == Role::Prefill && r.output > 1 {
                r.status = Status::Handoff;
                r.prefill_instance = r.instance;
                self.outstanding_tokens -= r.prompt as u64 + r.generated as u64;
                self.handoffs.push(it.req);
                self.stretch.gone.push(it.req);
                any_finished = true;
                continue;
            }
            if r.generated == r.output {
                self.outstanding_tokens -= complete(&mut self.kv, r, now);
                if let Some(m) = self.moe.as_mut() {
                    m.forget(it.req);
                }
                self.stats.finished += 1;
                self.stretch.gone.push(it.req);
                any_finished = true;
            }
        }
        if any_finished {
            self.retain_running(reqs);
        }
        if closed_form {
            self.join_members(now, reqs);
        }
    }
}

impl Instance {
    /// The iteration-log row of the batch just formed, starting (and, until it ends, ending) at `now`.
    pub(super) fn batch_record(&self, now: Nanos) -> IterationRecord {
        IterationRecord {
            start: now,
            end: now,
            prefill_tokens: self.batch.shape.prefill_tokens,
            decode_seqs: self.batch.shape.decode_seqs,
            kv_blocks: self.kv.used(),
            waiting: self.queues.waiting.len() as u32,
            running: self.queues.running.len() as u32,
        }
    }
}

/// Ends `r` at `now`, after its last token: frees its KV blocks (and its share of cached prefix
/// blocks) and marks it finished. Returns the tokens it held in its instance's outstanding count.
pub(super) fn complete(kv: &mut BlockManager, r: &mut Request, now: Nanos) -> u64 {
    kv.release(r.blocks);
    r.blocks = 0;
    kv.detach(r);
    r.status = Status::Finished;
    r.completion = now;
    r.prompt as u64 + r.generated as u64
}
