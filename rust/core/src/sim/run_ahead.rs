//! Running an instance ahead between arrivals: a mixed-role instance's events (its wake-ups,
//! iteration ends, or a pipeline's stage-1-free and batch-done events) are kept in its own small
//! queue, and the run's event queue holds one *token* per instance, at its earliest event. When
//! the token comes due, the instance runs every event of its own that comes before the next
//! arrival, in its own order, without going through the run's queue; then its token goes back at
//! its next event.
//!
//! Why the results stay the same: an instance that runs ahead shares nothing order-dependent
//! with the others between arrivals. Its events touch its own requests, KV cache and counters
//! and the run's inter-token sketch (whose statistics are integers: order-independent); the
//! router reads it only at arrivals, and an arrival comes after every event of the instance
//! before it (and before its events at the same time, as the event loop runs arrivals first) —
//! the state the router would have seen with every event in one queue. Its own events run in
//! the order the run's queue would give them: by time, then by the order they were scheduled.
//!
//! It applies only where nothing else watches or interleaves with each event: a mixed-role
//! instance (no handoffs, no KV transfers) whose iterations start no flow on the shared network
//! (no weight streams, no expert runtime, no KV swapping), no per-iteration log, no Splitwise
//! mixed pool, no policy plugged in from Python. The run's event count counts the instance's
//! events, not the tokens, so it is the count the run's queue would give.
//!
//! One difference remains, on runs that fail: a simulation error (the clock overflowing in an
//! absurdly slow iteration) raised by an instance running ahead stops the run there, possibly
//! after events of that instance that the single queue would have run after another instance's
//! error; the run is still deterministic, and a run that finishes is unaffected.

use crate::error::Result;
use crate::time::Nanos;

use super::cluster::{Cluster, Event, Queue};

/// At most this many events run ahead per token, so that the run's loop, which looks for an
/// interruption every 4096 events (those run ahead included), gets to look soon enough.
const EVENTS_PER_TOKEN: u32 = 4096;

/// One instance's own events, in the order the run's queue would run them.
#[derive(Debug, Clone, Default)]
pub(super) struct OwnEvents {
    /// (time, order scheduled, event): a handful at most (pp batches in flight, a wake-up).
    pub(super) pending: Vec<(Nanos, u64, Event)>,
    pub(super) next_seq: u64,
    /// The time of the instance's token in the run's queue (None: no token queued).
    token: Option<Nanos>,
}

impl OwnEvents {
    /// The earliest pending event's index, by (time, order scheduled).
    fn earliest(&self) -> Option<usize> {
        (0..self.pending.len()).min_by_key(|&i| (self.pending[i].0, self.pending[i].1))
    }
}

/// The instances that run ahead and their own events.
#[derive(Debug, Clone, Default)]
pub(super) struct RunAhead {
    /// Per instance; None for one whose events go through the run's queue.
    pub(super) own: Vec<Option<OwnEvents>>,
    /// Events run ahead less the tokens that carried them: added to the loop's count of events.
    pub(super) extra_events: i64,
    /// Events run ahead.
    pub(super) run: u64,
    /// Of `run`, those run by the loop of back-to-back group passes.
    pub(super) grouped: u64,
}

impl RunAhead {
    /// Run-ahead state for instances whose `runs_ahead` is true.
    pub(super) fn new(runs_ahead: impl Iterator<Item = bool>) -> Self {
        RunAhead { own: runs_ahead.map(|r| r.then(OwnEvents::default)).collect(), extra_events: 0, run: 0, grouped: 0 }
    }
}

impl RunAhead {
    /// Schedules `event` for instance `idx` at `time`: in its own queue if it runs ahead (with a
    /// token in the run's queue no later than `time`), else in the run's queue.
    pub(super) fn schedule(&mut self, idx: u32, time: Nanos, event: Event, queue: &mut Queue) {
        let Some(own) = self.own.get_mut(idx as usize).and_then(Option::as_mut) else {
            queue.push(time, event);
            return;
        };
        own.pending.push((time, own.next_seq, event));
        own.next_seq += 1;
        if own.token.is_none_or(|t| t > time) {
            // An earlier token: the later one, when it comes, finds the token moved and is skipped.
            own.token = Some(time);
            queue.push(time, Event::Ahead { instance: idx });
        }
    }
}

impl Cluster<'_> {
    /// Schedules `event` for instance `idx` at `time` ([`RunAhead::schedule`]).
    pub(super) fn schedule(&mut self, idx: u32, time: Nanos, event: Event, queue: &mut Queue) {
        self.ahead.schedule(idx, time, event, queue);
    }

    /// `idx`'s token came due at `now`: runs the instance's own events before the next arrival
    /// (up to [`EVENTS_PER_TOKEN`]), then queues its token at its next event.
    pub(super) fn run_ahead(&mut self, idx: u32, now: Nanos, queue: &mut Queue) -> Result<()> {
        self.ahead.extra_events -= 1;
        let own = self.ahead.own[idx as usize].as_mut().expect("a token of an instance that runs ahead");
        if own.token != Some(now) {
            return Ok(());
        }
        // The token stays at `now` while the instance runs: what it schedules (never before `now`)
        // queues no token of its own.
        let horizon = self.arrivals.next_time().unwrap_or(Nanos::MAX);
        let mut budget = EVENTS_PER_TOKEN;
        while budget > 0 {
            // Group passes back to back, while the instance's events are nothing else.
            let ran = self.run_group_passes(idx, horizon, budget, queue)?;
            if ran > 0 {
                budget -= ran;
                continue;
            }
            budget -= 1;
            let own = self.ahead.own[idx as usize].as_mut().expect("runs ahead");
            let Some(i) = own.earliest().filter(|&i| own.pending[i].0 < horizon) else { break };
            let (t, _, event) = own.pending.swap_remove(i);
            self.ahead.extra_events += 1;
            self.ahead.run += 1;
            self.last_work = self.last_work.max(t);
            match event {
                Event::Wake { instance } => self.wake(instance, t, queue)?,
                Event::StageFree { instance } => self.stage1_free(instance, t, queue)?,
                Event::BatchDone { instance } => self.batch_done(instance, t, queue)?,
                Event::IterationEnd { instance } => {
                    if self.iterations.compute_done(instance, t, &mut self.ahead, queue)? {
                        self.end_iteration(instance, t, queue)?;
                    }
                }
                other => unreachable!("{other:?} is not an instance's own event"),
            }
            self.note_load(idx);
        }
        let own = self.ahead.own[idx as usize].as_mut().expect("runs ahead");
        own.token = own.earliest().map(|i| own.pending[i].0);
        if let Some(t) = own.token {
            queue.push(t, Event::Ahead { instance: idx });
        }
        Ok(())
    }
}
