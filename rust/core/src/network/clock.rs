//! The network's clock: finding the next internal event, moving flows forward in time, and
//! handling activations and completions as they fall due.

use super::flow::{FlowRecord, NetEvent};
use super::Network;
use crate::error::{Error, Result};
use crate::time::{Nanos, NS_PER_SEC};

impl Network {
    /// Errors if `now` is before the network's clock.
    pub(super) fn check_time(&self, now: Nanos) -> Result<()> {
        if now < self.now {
            return Err(Error::Simulation {
                message: format!("network time went backwards: {now} ns is before {} ns", self.now),
            });
        }
        Ok(())
    }

    /// The earliest internal event of the flows in progress (lowest id on ties).
    pub(super) fn next_flow_event(&self) -> Option<(Nanos, NetEvent)> {
        let mut best: Option<(Nanos, NetEvent)> = None;
        for (&id, flow) in &self.flows {
            let event = flow.next_event(id);
            if best.is_none_or(|(t, _)| event.0 < t) {
                best = Some(event);
            }
        }
        best
    }

    /// Handles every internal event due by `until`, then moves the clock there.
    pub(super) fn run_until(&mut self, until: Nanos) {
        while let Some((t, _)) = self.next_flow_event().filter(|&(t, _)| t <= until) {
            self.progress_to(t);
            self.process_due(t);
        }
        self.progress_to(until);
    }

    /// Moves every transferring flow forward at its rate to time `t`.
    pub(super) fn progress_to(&mut self, t: Nanos) {
        if t <= self.now {
            return;
        }
        let dt = (t - self.now) as f64;
        for flow in self.flows.values_mut().filter(|f| f.transferring) {
            let moved = flow.rate * dt / NS_PER_SEC;
            flow.remaining = (flow.remaining - moved).max(0.0);
        }
        self.now = t;
    }

    /// Activates or completes every flow whose event is due by `t` (the clock, already there),
    /// then recomputes the rates of the flows connected to the links they cross.
    pub(super) fn process_due(&mut self, t: Nanos) {
        let (mut due, mut touched) = std::mem::take(&mut self.due_work);
        due.extend(self.flows.iter().filter(|(&id, f)| f.next_event(id).0 <= t).map(|(&id, _)| id));
        if due.is_empty() {
            self.due_work = (due, touched);
            return;
        }
        for &id in &due {
            let Some(flow) = self.flows.get_mut(&id) else { continue };
            touched.extend_from_slice(&flow.path);
            if !flow.transferring && flow.bytes > 0 {
                flow.transferring = true;
                flow.slot = self.sharing.attach(id, &flow.path);
            } else if let Some(flow) = self.flows.remove(&id) {
                if flow.transferring {
                    self.sharing.detach(flow.slot);
                }
                for &link in &flow.path {
                    self.carried[link as usize] += flow.bytes;
                }
                self.finished.push(FlowRecord { id, start: flow.start, end: t, bytes: flow.bytes, path: flow.path });
            }
        }
        self.recompute_rates(&touched);
        self.version += 1;
        due.clear();
        touched.clear();
        self.due_work = (due, touched);
    }
}
