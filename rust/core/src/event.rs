//! The event queue: a binary heap keyed by (time, sequence).
//!
//! Two events at the same time run in the order they were pushed, so a run is fully determined by
//! the scenario and the seed (the same rule as SimPy's `(time, priority, eid)` key, with a single
//! priority).

use crate::time::Nanos;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// What happens at an instant. Indices refer to the simulation's instance table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An idle instance has work and should start an iteration.
    Wake { instance: u32 },
    /// The iteration running on an instance finishes.
    IterationEnd { instance: u32 },
    /// The network's next internal event is due (stale unless `version` is still current).
    Network { version: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    time: Nanos,
    seq: u64,
    event: Event,
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest (time, seq) pops first.
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A deterministic priority queue of timed events.
#[derive(Debug, Default)]
pub struct EventQueue {
    heap: BinaryHeap<Entry>,
    next_seq: u64,
}

impl EventQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules `event` at `time`; it runs after every event already queued for the same time.
    pub fn push(&mut self, time: Nanos, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { time, seq, event });
    }

    /// Removes and returns the earliest event.
    pub fn pop(&mut self) -> Option<(Nanos, Event)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_order() {
        let mut q = EventQueue::new();
        q.push(30, Event::Wake { instance: 0 });
        q.push(10, Event::Wake { instance: 1 });
        q.push(20, Event::IterationEnd { instance: 2 });
        let times: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(t, _)| t).collect();
        assert_eq!(times, vec![10, 20, 30]);
    }

    #[test]
    fn ties_break_by_insertion_order() {
        let mut q = EventQueue::new();
        for i in 0..100u32 {
            let ev = if i % 2 == 0 { Event::Wake { instance: i } } else { Event::IterationEnd { instance: i } };
            q.push(5, ev);
        }
        q.push(1, Event::Wake { instance: 999 });
        assert_eq!(q.pop(), Some((1, Event::Wake { instance: 999 })));
        for i in 0..100u32 {
            let (t, ev) = q.pop().unwrap();
            assert_eq!(t, 5);
            let idx = match ev {
                Event::Wake { instance } | Event::IterationEnd { instance } => instance,
                Event::Network { .. } => unreachable!("only instance events were pushed"),
            };
            assert_eq!(idx, i, "same-time events must pop in push order");
        }
        assert!(q.is_empty());
    }

    #[test]
    fn interleaved_push_pop_keeps_order() {
        let mut q = EventQueue::new();
        q.push(10, Event::Wake { instance: 0 });
        q.push(10, Event::Wake { instance: 1 });
        assert_eq!(q.pop(), Some((10, Event::Wake { instance: 0 })));
        // Pushed later at the same time: runs after the one already waiting.
        q.push(10, Event::Wake { instance: 2 });
        assert_eq!(q.pop(), Some((10, Event::Wake { instance: 1 })));
        assert_eq!(q.pop(), Some((10, Event::Wake { instance: 2 })));
        assert_eq!(q.peek_time(), None);
    }
}
