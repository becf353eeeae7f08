//! Decodes in closed form on an asynchronous pipeline: each micro-batch's requests decode as a
//! *group*, touched only when something happens to one of them.
//!
//! When a batch is applied, its requests still running (all decoding) become a group, which its
//! next batches carry as a whole: on vLLM v0's scheduler, with one batch short of `pp` in flight,
//! the next batch's share is every ready request, so when the ready requests are exactly one group
//! (every other running request in a batch in flight) that batch is the scheduler's admissions
//! with the running list cut to the group (a prefill batch, the group waiting), or else one decode
//! of each member. Two ready groups, one's members all before the other's in the running list (a
//! prefill batch's requests, admitted last, after the group that waited), fold into one: the
//! later group's members join the earlier at its pass, their previous token time kept for it. As in `decode_stretch.rs`, a group keeps its members' counters as of the pass
//! they joined (`since`) and counts its passes; the decode shape is summed from the offsets'
//! sum and maximum, block crossings come from `block_size` slots by pass, a calendar says when a
//! member produces its last token, and the members' inter-token gaps are one run (they all got
//! their previous token when the group's previous batch ended).
//!
//! Everything else goes through the scheduler after the groups are *settled* (their members'
//! counters written out; a group in flight hands its members to its batch as ordinary items, in
//! running order, which is what the scheduler would have given it): more ready groups, or two
//! interleaved, a pass needing more blocks than are free, no batch in flight, a
//! scheduler without `schedule_admissions`, and every setting the colocated closed form excludes.
//! Members stay in running order (the running list only loses requests and gains admissions at
//! its end while groups live), so requests, instances, iteration logs and the inter-token sketch
//! come out bit-identical to the per-request batches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::iteration::complete;
use super::{Instance, Role};
use crate::request::{Request, Status};
use crate::scheduler::Item;
use crate::time::Nanos;

/// A calendar entry: group pass `pass` produces the last token of member `req`, in since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    pass: u64,
    req: u32,
    since: u64,
}

/// A member in its crossing slot: it crosses block boundaries at the slot's passes from `from` on.
#[derive(Debug, Clone, Copy)]
struct Crosser {
    req: u32,
    from: u64,
}

/// One micro-batch's requests decoding in closed form.
#[derive(Debug, Clone, Default)]
struct Group {
    /// The members, in running order.
    members: Vec<u32>,
    /// Per member: the group pass its fields were written at.
    since: Vec<u64>,
    /// Per member: `computed - since` as it joined (its counters stay as written until it leaves).
    offsets: Vec<i64>,
    /// Passes applied so far.
    pass: u64,
    /// Sum over members of `computed - since`.
    offset_sum: i64,
    /// Largest `computed - since` over members.
    offset_max: i64,
    /// End of the group's last batch: every member's latest token time.
    last_token: Nanos,
    due: BinaryHeap<Reverse<Due>>,
    slots: Vec<Vec<Crosser>>,
    /// The finishes of the pass in flight.
    finishing: Vec<Due>,
    /// Whether a batch of this group is in flight.
    in_flight: bool,
    /// Members from this index on joined at the current pass from another group, whose previous
    /// token came at `tail_token` (until the pass is applied): (index, time).
    tail: Option<(usize, Nanos)>,
}

impl Group {
    /// Adds running request `idx` as a member at the current pass (its fields written out).
    fn add_member(&mut self, idx: u32, r: &Request, block_size: u64) {
        let offset = r.computed as i64 - self.pass as i64;
        self.offset_max = if self.members.is_empty() { offset } else { self.offset_max.max(offset) };
        self.offset_sum += offset;
        self.members.push(idx);
        self.since.push(self.pass);
        self.offsets.push(offset);
        // Its decode at pass q processes token computed + (q - 1 - pass): the first past its
        // blocks at q = pass + room + 1, then every block size passes.
        let room = r.blocks as u64 * block_size - r.computed as u64;
        let from = self.pass + room + 1;
        self.slots[(from % block_size) as usize].push(Crosser { req: idx, from });
        self.due.push(Reverse(Due { pass: self.pass + (r.output - r.generated) as u64, req: idx, since: self.pass }));
    }

    /// Writes the members' counters and latest token time out to their requests.
    fn write_out(&self, reqs: &mut [Request]) {
        for (&idx, &since) in self.members.iter().zip(&self.since) {
            let r = &mut reqs[idx as usize];
            let passes = (self.pass - since) as u32;
            if passes > 0 {
                r.computed += passes;
                r.generated += passes;
                r.last_token = self.last_token;
            }
        }
    }
}

/// A pipelined instance's groups, by a stable index (the batches in flight refer to them).
#[derive(Debug, Clone, Default)]
pub(super) struct Groups {
    slots: Vec<Option<Group>>,
    crossing: Vec<u32>,
    /// Ended groups, emptied, kept for their allocations.
    spare: Vec<Group>,
    /// The running list cut to a group (scratch).
    cut: Vec<u32>,
    /// Whether the scheduler declined to form admissions alone (no closed form with it: batches
    /// no longer join groups).
    declined: bool,
}

impl Group {
    /// Empties the group (keeping its allocations) for a new one starting at `now`.
    fn reset(&mut self, now: Nanos, block_size: usize) {
        self.members.clear();
        self.since.clear();
        self.offsets.clear();
        self.due.clear();
        self.finishing.clear();
        for slot in self.slots.iter_mut() {
            slot.clear();
        }
        self.slots.resize_with(block_size, Vec::new);
        (self.pass, self.offset_sum, self.offset_max, self.last_token, self.in_flight, self.tail) = (0, 0, 0, now, false, None);
    }
}

impl Instance {
    /// Whether the scheduler declined to form admissions alone (batches no longer join groups).
    pub(super) fn groups_declined(&self) -> bool {
        self.groups.declined
    }

    /// Whether the groups may run in closed form (the colocated closed form's conditions).
    pub(super) fn groups_apply(&self) -> bool {
        self.closed_form && self.role == Role::Mixed && self.moe.is_none() && self.spec.is_none() && self.kv.grows_by_block() && self.batch.shape.attention_window.is_none() && self.queues.swapped.is_empty()
    }

    /// Forms the next batch from the one ready group, if the closed form applies (see the module
    /// documentation): Some(Some(group)) for its decode pass, Some(None) for a prefill batch of
    /// the scheduler's admissions (the group waits), None when the scheduler must form the batch
    /// (the caller settles the groups first). What a None leaves changed, a second call meets and
    /// answers None again: calendar entries taken for a pass whose crossings do not fit (the same
    /// crossings fail again; settling drops the calendar), or two groups folded into one (its tail
    /// declines at once); the back-to-back loop (`group_flights.rs`) relies on it.
    pub(super) fn form_group_batch(&mut self, now: Nanos, reqs: &mut [Request]) -> Option<Option<usize>> {
        if !self.groups_apply() {
            return None;
        }
        self.form_applying_group_batch(now, reqs)
    }

    /// [`Instance::form_group_batch`] where the closed form is known to apply (the back-to-back
    /// loop checked it as it began, and nothing it runs changes it).
    pub(super) fn form_applying_group_batch(&mut self, now: Nanos, reqs: &mut [Request]) -> Option<Option<usize>> {
        debug_assert!(self.groups_apply());
        let p = self.pipeline.as_ref()?;
        if !p.one_slot_free() {
            return None;
        }
        // The ready groups (not in flight): one, or two where one's members all precede the
        // other's in the running list (a prefill batch's requests, admitted last, joined).
        // (Every group's members counted on the way.)
        let (mut first, mut second, mut members) = (None, None, 0);
        for (i, g) in self.groups.slots.iter().enumerate() {
            let Some(g) = g.as_ref() else { continue };
            members += g.members.len();
            if g.in_flight {
                continue;
            }
            if second.is_some() || g.members.is_empty() || g.tail.is_some() {
                return None;
            }
            if first.is_none() {
                first = Some(i);
            } else {
                second = Some(i);
            }
        }
        let mut gi = first?;
        let held = members + p.items_in_flight();
        if held != self.queues.running.len() {
            return None;
        }
        if let Some(other) = second {
            let member = |i: usize| &self.groups.slots[i].as_ref().expect("a live group").members;
            if precedes(&self.queues.running, member(other), member(gi)) {
                (gi, second) = (other, Some(gi));
            } else if !precedes(&self.queues.running, member(gi), member(other)) {
                return None;
            }
        }
        self.batch.clear();
        let admits = if self.queues.waiting.is_empty() && self.queues.swapped.is_empty() && self.scheduler.admits_alone() {
            // Nothing to admit, and a scheduler that admits alone admits none.
            true
        } else if self.queues.waiting.is_empty() {
            self.scheduler.set_now(now);
            // Admissions come from the waiting queue: with none waiting there are none, whatever
            // the running list (the scheduler is still asked, and may decline the closed form).
            self.scheduler.schedule_admissions(&mut self.queues, reqs, &mut self.kv, &mut self.batch)
        } else {
            // The admissions with the running list cut to the group, as `schedule_share` would.
            self.scheduler.set_now(now);
            let mut cut = std::mem::take(&mut self.groups.cut);
            cut.clear();
            for i in std::iter::once(gi).chain(second) {
                cut.extend_from_slice(&self.groups.slots[i].as_ref().expect("a live group").members);
            }
            let n = cut.len();
            let order = std::mem::replace(&mut self.queues.running, cut);
            let admits = self.scheduler.schedule_admissions(&mut self.queues, reqs, &mut self.kv, &mut self.batch);
            let mut merged = order;
            merged.extend_from_slice(&self.queues.running[n..]);
            self.groups.cut = std::mem::replace(&mut self.queues.running, merged);
            admits
        };
        if !admits {
            self.groups.declined = true;
            return None;
        }
        if !self.batch.items.is_empty() {
            return Some(None);
        }
        if let Some(other) = second {
            // The later group's members join the earlier one at its pass, their previous token
            // time kept as the pass's tail.
            let s = self.groups.slots[other].take().expect("a live group");
            s.write_out(reqs);
            let bs = self.kv.block_size() as u64;
            let g = self.groups.slots[gi].as_mut().expect("a live group");
            g.tail = Some((g.members.len(), s.last_token));
            for &idx in &s.members {
                g.add_member(idx, &reqs[idx as usize], bs);
            }
            self.groups.spare.push(s);
        }
        self.group_decode_pass(gi, reqs).then_some(Some(gi))
    }

    /// Forms a decode pass of group `gi` in closed form; false (nothing changed but the calendar
    /// and slots, which settling clears) when its crossings need more blocks than are free.
    #[inline(always)]
    fn group_decode_pass(&mut self, gi: usize, reqs: &mut [Request]) -> bool {
        let bs = self.kv.block_size() as u64;
        let crossing = &mut self.groups.crossing;
        let g = self.groups.slots[gi].as_mut().expect("a live group");
        let next = g.pass + 1;
        crossing.clear();
        g.finishing.clear();
        while let Some(&Reverse(d)) = g.due.peek() {
            if d.pass != next {
                debug_assert!(d.pass > next, "a calendar entry was missed");
                break;
            }
            g.due.pop();
            g.finishing.push(d);
        }
        if g.slots.len() != bs as usize {
            g.slots.resize_with(bs as usize, Vec::new);
        }
        // A slot holds running members only (`finish_group` takes the leavers out).
        for c in &g.slots[(next % bs) as usize] {
            if c.from <= next {
                crossing.push(c.req);
            }
        }
        if crossing.len() as u64 > self.kv.free() as u64 {
            return false;
        }
        for &req in crossing.iter() {
            reqs[req as usize].blocks += 1;
        }
        self.kv.allocate_each(crossing.len() as u32);
        let m = g.members.len() as i64;
        let context_sum = g.offset_sum + m * g.pass as i64 + m;
        self.batch.shape.add_decodes(m as u64, context_sum as u64, (g.offset_max + g.pass as i64 + 1) as u64);
        g.in_flight = true;
        true
    }

    /// Applies group `gi`'s pass, done at `now`: one token each, one run of equal gaps through
    /// `on_token`, and the finishes the calendar held (dropped from the running list and the
    /// group).
    pub(super) fn finish_group(&mut self, gi: usize, now: Nanos, reqs: &mut [Request], on_token: &mut impl FnMut(Nanos, Nanos, u64)) {
        let bs = self.kv.block_size() as u64;
        let g = self.groups.slots[gi].as_mut().expect("a live group");
        g.pass += 1;
        g.in_flight = false;
        let members = g.members.len() as u64;
        match g.tail.take() {
            Some((from, token)) => {
                on_token(now, g.last_token, from as u64);
                on_token(now, token, members - from as u64);
            }
            None => on_token(now, g.last_token, members),
        }
        g.last_token = now;
        self.outstanding_tokens += members;
        if g.finishing.is_empty() {
            return;
        }
        let mut max_left = false;
        for &d in &g.finishing {
            let r = &mut reqs[d.req as usize];
            let offset = r.computed as i64 - d.since as i64;
            let passes = (g.pass - d.since) as u32;
            let slot = &mut g.slots[((d.since + (r.blocks as u64 * bs - r.computed as u64) + 1) % bs) as usize];
            slot.remove(slot.iter().position(|c| c.req == d.req).expect("a member has its crossing slot"));
            r.computed += passes;
            r.generated += passes;
            debug_assert_eq!(r.generated, r.output, "a member finishes at its last token");
            r.last_token = now;
            self.outstanding_tokens -= complete(&mut self.kv, r, now);
            self.stats.finished += 1;
            self.stretch.gone.push(d.req);
            g.offset_sum -= offset;
            max_left |= offset == g.offset_max;
        }
        let mut kept = 0;
        for i in 0..g.members.len() {
            if !g.finishing.iter().any(|d| d.req == g.members[i]) {
                g.members[kept] = g.members[i];
                g.since[kept] = g.since[i];
                g.offsets[kept] = g.offsets[i];
                kept += 1;
            }
        }
        g.members.truncate(kept);
        g.since.truncate(kept);
        g.offsets.truncate(kept);
        if max_left {
            g.offset_max = g.offsets.iter().copied().max().unwrap_or(i64::MIN);
        }
        if g.members.is_empty() {
            let g = self.groups.slots[gi].take().expect("a live group");
            self.groups.spare.push(g);
        }
        // `retain_running` drops the leavers listed in `stretch.gone` (pushed above).
        self.retain_running(reqs);
    }

    /// After an ordinary batch was applied at `now`: its requests still running become a group,
    /// if all of them are decoding and the closed form applies.
    pub(super) fn join_group(&mut self, now: Nanos, reqs: &[Request]) {
        if self.groups.declined || !self.groups_apply() {
            return;
        }
        let bs = self.kv.block_size() as u64;
        let mut g = self.groups.spare.pop().unwrap_or_default();
        g.reset(now, bs as usize);
        for it in &self.batch.items {
            let r = &reqs[it.req as usize];
            if r.status != Status::Running {
                continue;
            }
            if !r.is_decoding() || r.last_token != now {
                self.groups.spare.push(g);
                return;
            }
            g.add_member(it.req, r, bs);
        }
        if g.members.is_empty() {
            self.groups.spare.push(g);
            return;
        }
        match self.groups.slots.iter().position(Option::is_none) {
            Some(i) => self.groups.slots[i] = Some(g),
            None => self.groups.slots.push(Some(g)),
        }
    }

    /// Writes every group's members' counters and latest token time out to their requests and
    /// ends the groups; a group in flight hands its members to its batch as ordinary items.
    pub(super) fn settle_groups(&mut self, reqs: &mut [Request]) {
        if self.groups.slots.is_empty() {
            return;
        }
        for (gi, slot) in self.groups.slots.iter_mut().enumerate() {
            let Some(g) = slot.take() else { continue };
            g.write_out(reqs);
            if g.in_flight {
                let f = self.pipeline.as_mut().expect("pipelined").group_batch(gi).expect("a group in flight has its batch");
                f.items.clear();
                f.items.extend(g.members.iter().map(|&req| Item { req, tokens: 1, draft: 0 }));
            }
            self.groups.spare.push(g);
        }
        self.groups.slots.clear();
    }
}

/// Whether `a` then `b` appear in `running` in that order (each a part of it in its order).
fn precedes(running: &[u32], a: &[u32], b: &[u32]) -> bool {
    // Greedily: each of a's then b's requests at the first place after the previous one's.
    let mut rest = running.iter();
    a.iter().chain(b).all(|x| rest.any(|r| r == x))
}

#[cfg(test)]
#[path = "pipeline_groups_tests.rs"]
mod tests;
