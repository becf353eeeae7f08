//! The event loop: a binary heap of events keyed by (time, sequence), and a clock that steps
//! through them. It knows nothing of what the events mean.
//!
//! Two events at the same time run in the order they were pushed, so a run is fully determined by
//! the scenario and the seed (the same rule as SimPy's `(time, priority, eid)` key, with a single
//! priority). Events may also come from outside the heap (a time-sorted table of arrivals): at
//! equal times such an event runs before any heap event, exactly as if it had been pushed before
//! the run started.

use crate::error::{Error, Result};
use crate::time::{ns_to_secs, Nanos, MAX_TIME_NS};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Debug, Clone, Copy)]
struct Entry<E> {
    time: Nanos,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl<E> Eq for Entry<E> {}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest (time, seq) pops first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A deterministic priority queue of timed events.
#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Entry<E>>,
    next_seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue { heap: BinaryHeap::new(), next_seq: 0 }
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `event` at `time`; it runs after every event already queued for the same time.
    pub fn push(&mut self, time: Nanos, event: E) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { time, seq, event });
    }

    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        self.heap.pop().map(|e| (e.time, e.event))
    }

    /// The time of the earliest event, if any.
    pub fn peek_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|e| e.time)
    }

    /// Number of queued events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// What the event loop drives: handles queued events and, optionally, events from a sorted
/// table outside the queue.
pub trait Process<E> {
    /// The time of the next event from outside the queue, if any (it runs before queued events
    /// of the same time).
    fn next_external(&self) -> Option<Nanos> {
        None
    }

    /// Runs the next event from outside the queue, at `now`.
    fn external(&mut self, now: Nanos, queue: &mut EventQueue<E>) -> Result<()> {
        let _ = (now, queue);
        Ok(())
    }

    /// Runs `event`, due at `now`; it may schedule more events on `queue`.
    fn handle(&mut self, now: Nanos, event: E, queue: &mut EventQueue<E>) -> Result<()>;
}

/// The simulation clock and its queue of pending events.
#[derive(Debug)]
pub struct EventLoop<E> {
    queue: EventQueue<E>,
    now: Nanos,
}

impl<E> Default for EventLoop<E> {
    fn default() -> Self {
        EventLoop { queue: EventQueue::new(), now: 0 }
    }
}

impl<E> EventLoop<E> {
    /// A loop at time 0 with nothing queued.
    pub fn new() -> Self {
        Self::default()
    }

    /// The time of the last event run (0 before any).
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Runs the earliest event (an external one first at equal times): advances the clock to it
    /// and hands it to `process`. Returns false, doing nothing, when no event is left. A queued
    /// event past the clock's limit ([`MAX_TIME_NS`]) is an error.
    pub fn step(&mut self, process: &mut impl Process<E>) -> Result<bool> {
        if let Some(t) = process.next_external() {
            if self.queue.peek_time().is_none_or(|q| t <= q) {
                self.now = t;
                process.external(t, &mut self.queue)?;
                return Ok(true);
            }
        }
        let Some((t, event)) = self.queue.pop() else {
            return Ok(false);
        };
        if t > MAX_TIME_NS {
            return Err(Error::Simulation { message: format!("simulated time overflow: a transfer would end past the {:.0}-year limit of the clock (at {:.3} s its rate is too low); check the links' bandwidths", ns_to_secs(MAX_TIME_NS) / (365.25 * 86400.0), ns_to_secs(self.now)) });
        }
        self.now = t;
        process.handle(t, event, &mut self.queue)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test events: which test pushed them and a tag.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ev {
        Wake(u32),
        End(u32),
    }

    #[test]
    fn pops_in_time_order() {
        let mut q = EventQueue::new();
        q.push(30, Ev::Wake(0));
        q.push(10, Ev::Wake(1));
        q.push(20, Ev::End(2));
        assert_eq!(q.len(), 3);
        let times: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(t, _)| t).collect();
        assert_eq!(times, vec![10, 20, 30]);
    }

    #[test]
    fn ties_break_by_insertion_order() {
        let mut q = EventQueue::new();
        for i in 0..100u32 {
            q.push(5, if i % 2 == 0 { Ev::Wake(i) } else { Ev::End(i) });
        }
        q.push(1, Ev::Wake(999));
        assert_eq!(q.pop(), Some((1, Ev::Wake(999))));
        for i in 0..100u32 {
            let (t, ev) = q.pop().unwrap();
            assert_eq!(t, 5);
            let (Ev::Wake(idx) | Ev::End(idx)) = ev;
            assert_eq!(idx, i, "same-time events must pop in push order");
        }
        assert!(q.is_empty());
    }

    #[test]
    fn pops_in_the_order_of_a_sorted_reference_under_random_pushes_and_pops() {
        // Times from a small range (many ties), pushes and pops interleaved, the queue growing to
        // a thousand entries and draining: the same order as (time, push order) sorting.
        let mut q = EventQueue::new();
        let mut reference = std::collections::BinaryHeap::new();
        let (mut x, mut tag, mut popped) = (12345u64, 0u32, 0);
        for round in 0..20_000u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let grow = round < 12_000;
            if (x >> 60) < if grow { 10 } else { 5 } {
                let t = (x >> 33) % 500 + round as u64 / 4;
                q.push(t, Ev::Wake(tag));
                reference.push(std::cmp::Reverse((t, tag)));
                tag += 1;
            } else if let Some(std::cmp::Reverse((t, want))) = reference.pop() {
                assert_eq!(q.pop(), Some((t, Ev::Wake(want))), "round {round}");
                popped += 1;
            } else {
                assert_eq!(q.pop(), None);
            }
            assert_eq!(q.len(), reference.len());
        }
        while let Some(std::cmp::Reverse((t, want))) = reference.pop() {
            assert_eq!(q.peek_time(), Some(t));
            assert_eq!(q.pop(), Some((t, Ev::Wake(want))));
        }
        assert!(q.is_empty() && popped > 5_000 && tag > 9_000, "{popped} {tag}");
    }

    #[test]
    fn interleaved_push_pop_keeps_order() {
        let mut q = EventQueue::new();
        q.push(10, Ev::Wake(0));
        q.push(10, Ev::Wake(1));
        assert_eq!(q.pop(), Some((10, Ev::Wake(0))));
        // Pushed later at the same time: runs after the one already waiting.
        q.push(10, Ev::Wake(2));
        assert_eq!(q.pop(), Some((10, Ev::Wake(1))));
        assert_eq!(q.pop(), Some((10, Ev::Wake(2))));
        assert_eq!(q.peek_time(), None);
    }

    /// Records what it ran; each `Wake(n)` with n > 0 schedules `Wake(n - 1)` 5 ns later and an
    /// `End(n)` at the same instant.
    #[derive(Default)]
    struct Recorder {
        external: Vec<Nanos>,
        ran: Vec<(Nanos, String)>,
    }

    impl Process<Ev> for Recorder {
        fn next_external(&self) -> Option<Nanos> {
            self.external.first().copied()
        }

        fn external(&mut self, now: Nanos, queue: &mut EventQueue<Ev>) -> Result<()> {
            self.external.remove(0);
            self.ran.push((now, "arrival".into()));
            queue.push(now, Ev::End(100));
            Ok(())
        }

        fn handle(&mut self, now: Nanos, event: Ev, queue: &mut EventQueue<Ev>) -> Result<()> {
            self.ran.push((now, format!("{event:?}")));
            if let Ev::Wake(n) = event {
                if n > 0 {
                    queue.push(now + 5, Ev::Wake(n - 1));
                    queue.push(now, Ev::End(n));
                }
            }
            Ok(())
        }
    }

    fn run(lp: &mut EventLoop<Ev>, p: &mut Recorder) -> u32 {
        let mut steps = 0;
        while lp.step(p).unwrap() {
            steps += 1;
        }
        steps
    }

    #[test]
    fn step_advances_the_clock_and_runs_same_time_events_in_push_order() {
        let mut lp = EventLoop::new();
        let mut p = Recorder::default();
        assert_eq!(lp.now(), 0);
        assert!(!lp.step(&mut p).unwrap(), "nothing to run");
        lp.queue.push(10, Ev::Wake(2));
        assert_eq!(run(&mut lp, &mut p), 5);
        let ran: Vec<(Nanos, &str)> = p.ran.iter().map(|(t, s)| (*t, s.as_str())).collect();
        // Wake(2) at 10 pushes Wake(1)@15 then End(2)@10; End(2) runs first (earlier time).
        assert_eq!(ran, vec![(10, "Wake(2)"), (10, "End(2)"), (15, "Wake(1)"), (15, "End(1)"), (20, "Wake(0)")]);
        assert_eq!(lp.now(), 20);
    }

    #[test]
    fn external_events_run_before_queued_ones_of_the_same_time() {
        let mut lp = EventLoop::new();
        let mut p = Recorder { external: vec![0, 10, 12], ..Recorder::default() };
        lp.queue.push(10, Ev::Wake(0));
        assert_eq!(run(&mut lp, &mut p), 7);
        let ran: Vec<(Nanos, &str)> = p.ran.iter().map(|(t, s)| (*t, s.as_str())).collect();
        assert_eq!(
            ran,
            vec![(0, "arrival"), (0, "End(100)"), (10, "arrival"), (10, "Wake(0)"), (10, "End(100)"), (12, "arrival"), (12, "End(100)")]
        );
    }

    #[test]
    fn an_event_past_the_clock_limit_is_an_error() {
        let mut lp = EventLoop::new();
        let mut p = Recorder::default();
        lp.queue.push(MAX_TIME_NS, Ev::End(0));
        lp.queue.push(MAX_TIME_NS + 1, Ev::End(1));
        assert!(lp.step(&mut p).unwrap());
        assert_eq!(lp.now(), MAX_TIME_NS);
        let err = lp.step(&mut p).unwrap_err();
        assert!(err.to_string().contains("simulated time overflow"), "{err}");
        assert_eq!(lp.now(), MAX_TIME_NS, "the clock does not move past its limit");
    }
}
