//! A pipelined instance's group passes run back to back: what the run's loop for them
//! (`sim/group_loop.rs`) asks of the instance.
//!
//! While every batch in flight is a group's closed-form pass (`pipeline_groups.rs`) and nothing
//! waits, an instance's own events only apply passes and form the next ones. The loop calls the
//! same steps the event handlers call — [`Instance::finish_group_flight`] where `finish_batch`
//! would apply a pass, [`Instance::start_group_flight`] where `start_batch` would form the next
//! batch — so the results are the handlers', bit for bit.

use crate::error::Result;
use crate::request::Request;
use crate::time::Nanos;

use super::{BatchTimes, Instance};

/// What forming the next batch gave ([`Instance::start_group_flight`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum FlightStart {
    /// No batch may form now (stage 1 busy, or `pp` batches in flight).
    Blocked,
    /// A group's pass was formed and sent into the pipeline.
    Group(BatchTimes),
    /// The scheduler formed an ordinary batch (its admissions) and sent it into the pipeline (not
    /// met while nothing waits, as the loop runs; handled all the same).
    Ordinary(BatchTimes),
    /// No closed-form pass formed: `start_batch` forms the batch (forming the pass again gives
    /// the same answer, see `form_group_batch`, and the groups are settled).
    General,
}

impl Instance {
    /// Whether the instance is pipelined and every batch in flight is a group's pass, with no
    /// request waiting: its own events are then group passes until one of them says otherwise.
    pub(crate) fn group_flights_only(&self) -> bool {
        let Some(p) = self.pipeline.as_ref() else { return false };
        self.queues.waiting.is_empty() && !self.groups_declined() && self.groups_apply() && p.in_flight.iter().all(|f| f.group.is_some() && f.batch.items.is_empty())
    }

    /// Applies the oldest batch in flight, a group's pass, done at `now` (`finish_batch` on a
    /// group's pass).
    pub(crate) fn finish_group_flight(&mut self, now: Nanos, reqs: &mut [Request], on_token: &mut impl FnMut(Nanos, Nanos, u64)) {
        debug_assert!(self.spec.is_none() && !self.stretch.forming(), "a group's pass is all its batch holds");
        let p = self.pipeline.as_mut().expect("pipelined");
        let done = p.in_flight.pop_front().expect("a batch is in flight");
        p.spare.push(done.batch);
        self.finish_group(done.group.expect("a group's pass"), now, reqs, on_token);
        self.busy = self.pipeline.as_ref().is_some_and(|p| p.blocked());
    }

    /// Forms the next batch at `now` as `start_batch` does when it is a group's pass (or the
    /// scheduler's admissions), and sends it into the pipeline; [`FlightStart::General`] when
    /// `start_batch` must form it.
    pub(crate) fn start_group_flight(&mut self, now: Nanos, reqs: &mut [Request]) -> Result<FlightStart> {
        if self.pipeline.as_ref().is_none_or(|p| p.blocked()) {
            return Ok(FlightStart::Blocked);
        }
        // `group_flights_only` found the closed form applying when the loop began.
        let Some(group) = self.form_applying_group_batch(now, reqs) else { return Ok(FlightStart::General) };
        let (times, record) = self.launch_batch(now, reqs)?;
        self.keep_in_flight(group, record);
        Ok(match group {
            Some(_) => FlightStart::Group(times),
            None => FlightStart::Ordinary(times),
        })
    }
}
