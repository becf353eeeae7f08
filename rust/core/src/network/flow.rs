//! Flows: their identifiers, their internal events, the record of a completed one, and the state
//! of one in progress.

use super::link::LinkId;
use crate::time::{Nanos, NS_PER_SEC};

/// Identifier of a flow, unique within a [`Network`](super::Network) and increasing in start order.
pub type FlowId = u64;

/// An internal event of the network, as reported by [`Network::next_event`](super::Network::next_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetEvent {
    /// The flow leaves its latency phase and starts taking bandwidth.
    Activate(FlowId),
    /// The flow has moved all its bytes.
    Complete(FlowId),
}

/// A completed flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow's identifier, as returned by [`Network::start_flow`](super::Network::start_flow).
    pub id: FlowId,
    /// When the flow was started.
    pub start: Nanos,
    /// When its last byte arrived.
    pub end: Nanos,
    /// Bytes moved.
    pub bytes: u64,
    /// Links crossed, in order.
    pub path: Vec<LinkId>,
}

/// A flow in progress.
#[derive(Debug, Clone)]
pub(super) struct Flow {
    /// Links crossed, in order.
    pub(super) path: Vec<LinkId>,
    /// Bytes to move in all.
    pub(super) bytes: u64,
    /// When the flow was started.
    pub(super) start: Nanos,
    /// End of the latency phase.
    pub(super) active_at: Nanos,
    /// Whether the latency phase is over.
    pub(super) transferring: bool,
    /// Bytes still to move.
    pub(super) remaining: f64,
    /// Current rate, bytes/s (zero in the latency phase).
    pub(super) rate: f64,
    /// Completion time under the current rate (meaningful while transferring).
    pub(super) finish_at: Nanos,
    /// Its slot in the rate sharing while transferring.
    pub(super) slot: usize,
}

impl Flow {
    /// This flow's next internal event and its time.
    pub(super) fn next_event(&self, id: FlowId) -> (Nanos, NetEvent) {
        match (self.transferring, self.bytes) {
            (false, 0) => (self.active_at, NetEvent::Complete(id)),
            (false, _) => (self.active_at, NetEvent::Activate(id)),
            (true, _) => (self.finish_at, NetEvent::Complete(id)),
        }
    }
}

/// Nanoseconds, rounded up, to move `bytes` at `rate` bytes/s. A relative slack of 1e-14 absorbs
/// float rounding so that an exact duration is not pushed one nanosecond late.
pub(super) fn transfer_ns(bytes: f64, rate: f64) -> Nanos {
    if bytes <= 0.0 {
        return 0;
    }
    if rate <= 0.0 {
        return Nanos::MAX;
    }
    let ns = bytes * NS_PER_SEC / rate;
    (ns - ns * 1e-14).ceil() as Nanos
}
