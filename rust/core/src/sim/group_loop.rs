//! Group passes back to back: an instance running ahead whose batches in flight are all
//! closed-form group passes (`instance/pipeline_groups.rs`), with nothing waiting, runs its own
//! events in one loop instead of through its queue of events and the handlers.
//!
//! Its events are then only "stage 1 free" and "batch done"; the loop keeps them as the done
//! times of the passes in flight (oldest first, each with the order it was scheduled in) and the
//! one pending stage-1-free, and takes them in the order the instance's queue would: by time, then
//! by the order scheduled. For each it calls what the handler would (stage 1 freed, or the
//! oldest pass applied), then forms the next batch as `start_batch` would. What the handlers
//! would also do is nothing for such an instance (it runs ahead: no log, no handoffs, no mixed
//! pool, no plugged policy). Each event is counted as the queue would count it.
//!
//! It stops before the next arrival (the run-ahead horizon), after `budget` events, or when the
//! next batch is not a group's pass; then it hands the events back to the instance's queue,
//! exactly as the handlers would have left them: the rest of that event (forming the batch) goes
//! through `begin_batch`, or an ordinary batch the scheduler formed is scheduled as `begin_batch`
//! schedules one. On the Vidur benchmark's workload it runs 54% of the core's instructions and
//! saves a few percent of them; the time it saves is within the measuring host's noise
//! (`benchmarks/results/perf/group-loop-pass.md`).

use crate::error::Result;
use crate::instance::FlightStart;
use crate::time::Nanos;

use super::cluster::{Cluster, Event, Queue};

/// How the loop stopped.
enum Stop {
    /// At the horizon or the budget: nothing left half done.
    Done,
    /// At `t`, with the next batch to be formed by `begin_batch`.
    General(Nanos),
    /// At `t`, with an ordinary batch formed and sent into the pipeline, its events not yet
    /// scheduled.
    Ordinary(Nanos, crate::instance::BatchTimes),
}

/// The passes in flight's done times and scheduling order, oldest first: a ring of at most
/// [`PassesInFlight::CAPACITY`] (the loop runs pipelines of up to that many stages).
#[derive(Default)]
struct PassesInFlight {
    at: [(Nanos, u64); PassesInFlight::CAPACITY],
    head: usize,
    len: usize,
}

impl PassesInFlight {
    const CAPACITY: usize = 8;

    fn first(&self) -> Option<(Nanos, u64)> {
        (self.len > 0).then(|| self.at[self.head])
    }

    fn pop(&mut self) {
        debug_assert!(self.len > 0);
        self.head = (self.head + 1) % Self::CAPACITY;
        self.len -= 1;
    }

    fn push(&mut self, d: (Nanos, u64)) {
        debug_assert!(self.len < Self::CAPACITY, "no more passes in flight than stages");
        self.at[(self.head + self.len) % Self::CAPACITY] = d;
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = (Nanos, u64)> + '_ {
        (0..self.len).map(|k| self.at[(self.head + k) % Self::CAPACITY])
    }
}

impl Cluster<'_> {
    /// Runs instance `idx`'s own events before `horizon` (at most `budget`) in one loop while
    /// they are group passes; returns how many ran (0: its events are not all group passes).
    pub(super) fn run_group_passes(&mut self, idx: u32, horizon: Nanos, budget: u32, queue: &mut Queue) -> Result<u32> {
        let i = idx as usize;
        if !self.instances[i].group_flights_only() || self.instances[i].cost().pp() as usize > PassesInFlight::CAPACITY {
            return Ok(0);
        }
        let own = self.ahead.own[i].as_mut().expect("runs ahead");
        // Only stage-1-free and batch-done events, one done per pass in flight, at most one
        // stage-1-free (the newest pass's, scheduled just before its done).
        // (Inline: this runs at every event the instance runs ahead, so it allocates nothing.)
        let mut dones: smallvec::SmallVec<[(Nanos, u64); 8]> = smallvec::SmallVec::new();
        let mut stage_free: Option<(Nanos, u64)> = None;
        for &(t, seq, e) in &own.pending {
            match e {
                Event::BatchDone { .. } => dones.push((t, seq)),
                Event::StageFree { .. } if stage_free.is_none() => stage_free = Some((t, seq)),
                _ => return Ok(0),
            }
        }
        dones.sort_unstable_by_key(|&(_, seq)| seq);
        let in_flight = self.instances[i].batches_in_flight();
        if dones.len() != in_flight || stage_free.is_some_and(|(_, s)| dones.last().is_none_or(|&(_, d)| d != s + 1)) {
            return Ok(0);
        }
        let earliest = dones.first().copied().into_iter().chain(stage_free).min();
        if earliest.is_none_or(|(t, _)| t >= horizon) {
            return Ok(0);
        }
        let mut next_seq = own.next_seq;
        own.pending.clear();
        // The passes in flight's done times and scheduling order, oldest first.
        let mut done_at = PassesInFlight::default();
        dones.iter().for_each(|&d| done_at.push(d));
        let mut ran = 0;
        let stop = loop {
            let first_done = done_at.first();
            let take_stage_free = match (stage_free, first_done) {
                (Some(sf), Some(d)) => sf < d,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break Stop::Done,
            };
            let (t, _) = if take_stage_free { stage_free.expect("a stage-1-free") } else { first_done.expect("a pass in flight") };
            if t >= horizon || ran == budget {
                break Stop::Done;
            }
            ran += 1;
            self.ahead.extra_events += 1;
            self.ahead.run += 1;
            self.ahead.grouped += 1;
            self.last_work = self.last_work.max(t);
            let inst = &mut self.instances[i];
            if take_stage_free {
                stage_free = None;
                inst.stage1_freed();
            } else {
                done_at.pop();
                let itl = &mut self.itl;
                inst.finish_group_flight(t, self.reqs, &mut |now, prev, n| itl.add_repeated(now - prev, n));
            }
            match inst.start_group_flight(t, self.reqs)? {
                FlightStart::Blocked => {}
                FlightStart::Group(times) => {
                    // As `begin_batch` schedules them: stage 1 free, then done.
                    stage_free = Some((times.stage1_free, next_seq));
                    done_at.push((times.done, next_seq + 1));
                    next_seq += 2;
                }
                FlightStart::General => break Stop::General(t),
                FlightStart::Ordinary(times) => break Stop::Ordinary(t, times),
            }
        };
        // The instance's load as the handlers would have left it after each event (only the
        // arrivals after the horizon read it, and it depends on the loads alone).
        self.note_load(idx);
        // Hand the events back.
        let own = self.ahead.own[i].as_mut().expect("runs ahead");
        own.pending.extend(done_at.iter().map(|(t, seq)| (t, seq, Event::BatchDone { instance: idx })));
        own.pending.extend(stage_free.map(|(t, seq)| (t, seq, Event::StageFree { instance: idx })));
        own.next_seq = next_seq;
        match stop {
            Stop::Done => {}
            Stop::General(t) => {
                self.begin_batch(idx, t, queue)?;
                self.note_load(idx);
            }
            Stop::Ordinary(t, times) => {
                self.schedule(idx, times.stage1_free, Event::StageFree { instance: idx }, queue);
                self.schedule(idx, times.done, Event::BatchDone { instance: idx }, queue);
                self.start_layerwise_handoffs(idx, t, queue)?;
                self.note_load(idx);
            }
        }
        Ok(ran)
    }
}
