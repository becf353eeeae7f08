//! Decodes in closed form: on a colocated instance whose scheduler runs vLLM v0's decode pass
//! (every running request decodes one token, in order, taking a KV block when it crosses a block
//! boundary), a running request is touched only when something happens to it.
//!
//! The requests that took part in the last decode pass are the stretch's *members*: the leading
//! entries of the running list. Every decode pass advances each member by one token, so their
//! `computed` and `generated` counters are kept as of the pass at which they joined (`since`)
//! and the instance counts its passes; a member's true counters are those plus the passes since,
//! and its true KV blocks those it held when it joined plus the block boundaries it crossed since
//! (one every `block_size` passes from its first crossing), so a pass reads and writes no member's
//! request (on a large cluster each would be a cache miss).
//! The batch's decode shape is summed from aggregates (the members' context sum and maximum), the
//! members' inter-token gaps are one run (they all decoded in the previous pass). A member crosses
//! a block boundary (and takes one block) every `block_size` passes, so the members are counted in
//! `block_size` crossing slots, by pass modulo the block size, and each pass takes one slot's
//! count of blocks (a member joins with less than a block of room, so its slot's first pass after
//! it joined is its first crossing; one with more waits in a short list until then); a calendar
//! keyed by pass says when a member produces its last token (it finishes then, its fields written
//! out, and leaves its slot's count). Requests admitted since the last pass (the rest of the running list)
//! decode the ordinary way once, then join.
//!
//! Exactness: a pass whose block needs (the crossings and the newcomers' growth) exceed the free
//! blocks would preempt; the members are then written out (`settle`) and the scheduler forms that
//! pass itself, as it does whenever the closed form does not apply (swapped requests, prefix
//! caching, sliding windows, experts, speculation, pipelines, disaggregated roles, plugged-in
//! schedulers). Allocation order within a pass does not change the block counts or the peak, and
//! the members precede the newcomers in the running list, so requests, instances, iteration logs
//! and the inter-token sketch come out bit-identical to the per-request passes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::iteration::complete;
use super::{Instance, Role};
use crate::request::{Request, Status};
use crate::time::Nanos;

/// A calendar entry: decode pass `pass` produces the last token of request `req`, a member since
/// `since` whose first block crossing is at pass `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    pass: u64,
    req: u32,
    since: u64,
    from: u64,
}

/// A member of the stretch: the pass its fields were written at, its `computed - since` (fixed
/// while it is a member) and the pass of its first block crossing.
#[derive(Debug, Clone, Copy)]
struct Member {
    since: u64,
    offset: i64,
    from: u64,
}

/// A member that joined with a block or more of room: it joins its slot's count at its first
/// crossing `from`, unless its last pass `last` comes before.
#[derive(Debug, Clone, Copy)]
struct Late {
    from: u64,
    last: u64,
}

/// Block boundaries crossed by the passes up to `pass` of a member whose first crossing is at
/// pass `from`: one every `block_size` passes.
fn crossings(from: u64, pass: u64, block_size: u64) -> u32 {
    if pass < from {
        0
    } else {
        ((pass - from) / block_size + 1) as u32
    }
}

/// Up to this many requests leaving the running list at once are found by a scan of their ids;
/// more are sorted and searched.
const GONE_SCAN: usize = 8;

/// An instance's closed-form decode state (see the module documentation).
#[derive(Debug, Clone)]
pub(super) struct DecodeStretch {
    /// Decode passes applied so far (the members' clock).
    pass: u64,
    /// The members (the first `members.len()` running requests).
    members: Vec<Member>,
    /// Sum over members of `computed - since`: their context sum is this plus members x `pass`.
    offset_sum: i64,
    /// Largest `computed - since` over members (meaningless without members).
    offset_max: i64,
    /// End of the last decode pass: every member's latest token time.
    last_token: Nanos,
    /// The members' last tokens, by pass.
    due: BinaryHeap<Reverse<Due>>,
    /// The earliest pass in `due` (`u64::MAX` when empty): most passes finish no member, and
    /// this answers without reading the calendar.
    next_due: u64,
    /// Per pass modulo the block size: the members that cross a block boundary at such passes.
    slot_counts: Vec<u32>,
    /// Members that joined with a block or more of room, until their first crossing.
    late: Vec<Late>,
    /// The pass being formed: its finishes (scratch).
    finishing: Vec<Due>,
    /// Requests that left the running list (finished, handed off) in the iteration being applied
    /// (scratch for `retain_running`).
    pub(super) gone: Vec<u32>,
    /// Whether the batch being formed (or run) is a closed-form decode pass.
    forming: bool,
}

impl Default for DecodeStretch {
    fn default() -> Self {
        DecodeStretch { pass: 0, members: Vec::new(), offset_sum: 0, offset_max: 0, last_token: 0, due: BinaryHeap::new(), next_due: u64::MAX, slot_counts: Vec::new(), late: Vec::new(), finishing: Vec::new(), gone: Vec::new(), forming: false }
    }
}

impl DecodeStretch {
    /// Whether the batch being formed or run is a closed-form decode pass.
    pub(super) fn forming(&self) -> bool {
        self.forming
    }
}

impl Instance {
    /// Whether decodes may run in closed form on this instance now (see the module documentation).
    fn closed_form_applies(&self) -> bool {
        self.closed_form && self.role == Role::Mixed && self.moe.is_none() && self.spec.is_none() && self.pipeline.is_none() && self.kv.grows_by_block() && self.batch.shape.attention_window.is_none() && self.queues.swapped.is_empty()
    }

    /// Forms the batch with the members in closed form, if that applies: the scheduler's
    /// admissions first, then (when it admitted none) a closed-form decode pass. False when the
    /// scheduler must form the batch itself (the caller settles the members first; the
    /// scheduler's admissions, having admitted nothing, admit nothing again).
    pub(super) fn form_in_closed_form(&mut self, reqs: &mut [Request]) -> bool {
        self.stretch.forming = false;
        if !self.closed_form_applies() || !self.scheduler.schedule_admissions(&mut self.queues, reqs, &mut self.kv, &mut self.batch) {
            return false;
        }
        if !self.batch.items.is_empty() || self.queues.running.is_empty() {
            return true;
        }
        self.decode_pass(reqs)
    }

    /// Forms a decode pass of every running request: members in closed form, newcomers one by
    /// one. False (nothing changed but the calendar, which settling clears) when the pass needs
    /// more blocks than are free or a newcomer is not decoding.
    fn decode_pass(&mut self, reqs: &mut [Request]) -> bool {
        let st = &mut self.stretch;
        let next = st.pass + 1;
        st.finishing.clear();
        debug_assert!(st.next_due >= next, "a calendar entry was missed");
        if st.next_due == next {
            while let Some(&Reverse(d)) = st.due.peek() {
                if d.pass != next {
                    debug_assert!(d.pass > next, "a calendar entry was missed");
                    break;
                }
                st.due.pop();
                st.finishing.push(d);
            }
            st.next_due = st.due.peek().map_or(u64::MAX, |Reverse(d)| d.pass);
        }
        let bs = self.kv.block_size() as u64;
        let slot = (next % bs) as usize;
        if !st.late.is_empty() {
            // Late members reaching their first crossing join their slot's count; those that
            // finished before it leave.
            let counts = &mut st.slot_counts;
            st.late.retain(|l| {
                if l.from == next && l.last >= next {
                    counts[slot] += 1;
                }
                l.from > next && l.last >= next
            });
        }
        let crossing = st.slot_counts.get(slot).copied().unwrap_or(0);
        debug_assert_eq!(crossing as usize, st.members.iter().filter(|m| m.from <= next && m.from % bs == next % bs).count(), "crossings at pass {next}");
        let members = st.members.len();
        let mut need = crossing as u64;
        for &idx in &self.queues.running[members..] {
            let r = &reqs[idx as usize];
            if !r.is_decoding() {
                return false;
            }
            if !self.kv.decode_fits(r) {
                need += self.kv.growth(r, r.computed as u64 + 1) as u64;
            }
        }
        if need > self.kv.free() as u64 {
            return false;
        }
        // The crossing members' blocks are taken here and counted on their requests when they
        // are written out (settle, finish).
        if crossing > 0 {
            self.kv.allocate(crossing);
        }
        if members > 0 {
            let m = members as i64;
            let context_sum = st.offset_sum + m * st.pass as i64 + m;
            self.batch.shape.add_decodes(members as u64, context_sum as u64, (st.offset_max + st.pass as i64 + 1) as u64);
        }
        for &idx in &self.queues.running[members..] {
            let r = &mut reqs[idx as usize];
            let grow = if self.kv.decode_fits(r) { 0 } else { self.kv.growth(r, r.computed as u64 + 1) };
            self.kv.allocate(grow);
            r.blocks += grow;
            self.batch.push(idx, r, 1);
        }
        st.forming = true;
        true
    }

    /// Applies a closed-form pass's members at `now` (before the newcomers, in `batch.items`, are
    /// applied the ordinary way): one token each, one run of equal gaps through `on_token`, and
    /// the finishes the calendar holds. Returns whether any member finished.
    pub(super) fn finish_members(&mut self, now: Nanos, reqs: &mut [Request], on_token: &mut impl FnMut(Nanos, Nanos, u64)) -> bool {
        let st = &mut self.stretch;
        st.pass += 1;
        let members = st.members.len() as u64;
        if members == 0 {
            return false;
        }
        on_token(now, st.last_token, members);
        self.outstanding_tokens += members;
        let mut max_left = false;
        let bs = self.kv.block_size() as u64;
        for &d in &st.finishing {
            let r = &mut reqs[d.req as usize];
            let offset = r.computed as i64 - d.since as i64;
            let passes = (st.pass - d.since) as u32;
            r.computed += passes;
            r.generated += passes;
            r.blocks += crossings(d.from, st.pass, bs);
            // It leaves its slot's count (a late member not yet in it stays in the late list,
            // which drops it at its slot's next pass).
            if d.from <= d.since + bs || d.from <= st.pass {
                st.slot_counts[(d.from % bs) as usize] -= 1;
            }
            debug_assert_eq!(r.generated, r.output, "a member finishes at its last token");
            r.last_token = now;
            self.outstanding_tokens -= complete(&mut self.kv, r, now);
            self.stats.finished += 1;
            st.offset_sum -= offset;
            max_left |= offset == st.offset_max;
            st.gone.push(d.req);
        }
        if max_left {
            // The members still running are those not finishing now (earlier finishes have left
            // the running list): their offsets, not their requests, are read.
            st.offset_max = i64::MIN;
            for (&idx, m) in self.queues.running.iter().zip(&st.members) {
                let finishing = st.finishing.iter().any(|d| d.req == idx);
                debug_assert_eq!(finishing, reqs[idx as usize].status != Status::Running, "request {idx}");
                if !finishing {
                    st.offset_max = st.offset_max.max(m.offset);
                }
            }
        }
        !st.finishing.is_empty()
    }

    /// After a closed-form pass ended at `now` (finished requests already out of the running
    /// list): the newcomers, which decoded the ordinary way, join the members.
    pub(super) fn join_members(&mut self, now: Nanos, reqs: &[Request]) {
        let st = &mut self.stretch;
        st.forming = false;
        st.last_token = now;
        let bs = self.kv.block_size() as u64;
        if st.slot_counts.len() != bs as usize {
            st.slot_counts = vec![0; bs as usize];
        }
        for &idx in &self.queues.running[st.members.len()..] {
            let r = &reqs[idx as usize];
            debug_assert!(r.status == Status::Running && r.is_decoding() && r.generated < r.output);
            let offset = r.computed as i64 - st.pass as i64;
            st.offset_max = if st.members.is_empty() { offset } else { st.offset_max.max(offset) };
            st.offset_sum += offset;
            // Its decode at pass p processes token computed + (p - 1 - pass): the first past its
            // blocks at p = pass + room + 1, then every block size passes.
            let room = r.blocks as u64 * bs - r.computed as u64;
            let from = st.pass + room + 1;
            let last = st.pass + (r.output - r.generated) as u64;
            st.members.push(Member { since: st.pass, offset, from });
            if room < bs {
                // Its slot's first pass from now is its first crossing.
                st.slot_counts[(from % bs) as usize] += 1;
            } else {
                st.late.push(Late { from, last });
            }
            st.due.push(Reverse(Due { pass: last, req: idx, since: st.pass, from }));
            st.next_due = st.next_due.min(last);
        }
    }

    /// Drops the requests that left in the iteration just applied (`stretch.gone`: finished or
    /// handed off) from the running list, keeping the members' entries aligned. The leavers are
    /// found by id, so the running requests themselves are not read.
    pub(super) fn retain_running(&mut self, reqs: &[Request]) {
        let st = &mut self.stretch;
        let mut gone = std::mem::take(&mut st.gone);
        if gone.len() > GONE_SCAN {
            gone.sort_unstable();
        }
        let left = |idx: u32| {
            let left = if gone.len() > GONE_SCAN { gone.binary_search(&idx).is_ok() } else { gone.contains(&idx) };
            debug_assert_eq!(left, reqs[idx as usize].status != Status::Running, "request {idx}");
            left
        };
        if st.members.is_empty() {
            self.queues.running.retain(|&i| !left(i));
        } else {
            let members = st.members.len();
            let (mut kept, mut kept_members) = (0, 0);
            for i in 0..self.queues.running.len() {
                let idx = self.queues.running[i];
                if left(idx) {
                    continue;
                }
                self.queues.running[kept] = idx;
                if i < members {
                    st.members[kept_members] = st.members[i];
                    kept_members += 1;
                }
                kept += 1;
            }
            self.queues.running.truncate(kept);
            st.members.truncate(kept_members);
        }
        gone.clear();
        st.gone = gone;
    }

    /// Writes the members' counters and latest token time out to their requests and ends the
    /// stretch (the next decode pass starts it again): before the scheduler forms a batch itself,
    /// and before the run's results are read.
    pub fn settle_decodes(&mut self, reqs: &mut [Request]) {
        let st = &mut self.stretch;
        let bs = st.slot_counts.len() as u64;
        for (i, m) in st.members.iter().enumerate() {
            let r = &mut reqs[self.queues.running[i] as usize];
            let passes = (st.pass - m.since) as u32;
            if passes > 0 {
                r.computed += passes;
                r.generated += passes;
                r.blocks += crossings(m.from, st.pass, bs);
                r.last_token = st.last_token;
            }
        }
        st.members.clear();
        st.due.clear();
        st.next_due = u64::MAX;
        st.slot_counts.fill(0);
        st.late.clear();
        st.offset_sum = 0;
        st.forming = false;
        self.settle_groups(reqs);
    }
}

#[cfg(test)]
#[path = "decode_stretch_tests.rs"]
mod tests;
