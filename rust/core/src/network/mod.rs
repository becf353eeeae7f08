//! Links shared by concurrent flows, with max-min fair rates.
//!
//! Every transfer in the cluster (KV cache between instances, weights fetched between memory tiers,
//! KV swapped to host memory) is a *flow* of some bytes along a *path* of links (NVLink, a NIC,
//! PCIe, NVMe). A flow first waits the sum of its links' latencies (its *latency phase*, using no
//! bandwidth), then transfers. Transferring flows share each link's bandwidth max-min fairly
//! (progressive filling): all rates grow together until a link saturates, the flows through that
//! link freeze, and the others keep growing. Rates are recomputed whenever a flow starts
//! transferring or completes.
//!
//! Time is integer nanoseconds; completion times are rounded up, so a flow never ends before its
//! bytes have moved. Everything iterates in [`FlowId`] and [`LinkId`] order, so a run is
//! deterministic.
//!
//! The module by concept: [`LinkSpec`] and path checks in `link`, flows and their events in `flow`,
//! the clock and internal events in `clock`, max-min fair rate sharing in `rate_sharing`; the
//! [`Network`] and its public API here.
//!
//! # Driving a network from an event loop
//!
//! The network keeps its own clock and its own internal events (a flow leaving its latency phase,
//! a flow completing); [`Network::next_event`] says when the earliest is due, and
//! [`Network::advance`] runs every internal event up to a time and returns the flows that completed.
//! A start or a completion changes other flows' rates, so a time from `next_event` can go stale:
//!
//! 1. After [`Network::start_flow`] or [`Network::advance`], if [`Network::version`] changed,
//!    schedule a wake-up at `next_event()`'s time, tagged with the version.
//! 2. When a wake-up fires, ignore it if its tag differs from `version()` (a newer one is queued);
//!    otherwise call `advance(now)`, handle the returned [`FlowRecord`]s, and go back to 1.
//!
//! Calling `advance` on a stale wake-up is harmless too (it only moves the clock), so step 2's
//! check just saves work.
//!
//! ```
//! use fleetwise_core::network::{LinkSpec, Network};
//! use std::collections::BTreeMap;
//!
//! // One 100 GB/s link with 5 us latency.
//! let link = LinkSpec { name: "nvlink".into(), bandwidth: 100e9, latency: 5e-6 };
//! let mut net = Network::new(vec![link])?;
//!
//! // The caller's event queue: (time, sequence) -> network version the wake-up was computed under.
//! let mut queue = BTreeMap::new();
//! let mut seq = 0u64;
//! let mut schedule = |net: &Network, queue: &mut BTreeMap<(u64, u64), u64>| {
//!     if let Some((t, _)) = net.next_event() {
//!         queue.insert((t, seq), net.version());
//!         seq += 1;
//!     }
//! };
//!
//! let big = net.start_flow(0, &[0], 1_000_000_000)?; // 1 GB
//! schedule(&net, &mut queue);
//! let small = net.start_flow(0, &[0], 250_000_000)?; // 250 MB: both now share the link
//! schedule(&net, &mut queue);
//!
//! let mut done = Vec::new();
//! while let Some(((now, _), version)) = queue.pop_first() {
//!     if version != net.version() {
//!         continue; // stale: computed before a rate change
//!     }
//!     done.extend(net.advance(now)?);
//!     schedule(&net, &mut queue);
//! }
//! // Both at 50 GB/s: the small one ends after 5 ms; the big one has 750 MB left, alone at 100 GB/s.
//! assert_eq!((done[0].id, done[0].end), (small, 5_000 + 5_000_000));
//! assert_eq!((done[1].id, done[1].end), (big, 5_000 + 5_000_000 + 7_500_000));
//! assert_eq!(net.link_bytes(0), Some(1_250_000_000));
//! # Ok::<(), fleetwise_core::Error>(())
//! ```

mod clock;
mod flow;
mod link;
mod rate_sharing;
#[cfg(test)]
mod tests;

pub use flow::{FlowId, FlowRecord, NetEvent};
pub use link::{LinkId, LinkSpec};

use crate::error::Result;
use crate::time::{ns_to_secs, secs_to_ns, Nanos};
use flow::Flow;
use std::collections::BTreeMap;

/// A set of links and the flows crossing them.
#[derive(Debug, Clone)]
pub struct Network {
    links: Vec<LinkSpec>,
    /// Bytes of completed flows per link.
    carried: Vec<u64>,
    flows: BTreeMap<FlowId, Flow>,
    /// Completed flows not yet returned by [`Network::advance`].
    finished: Vec<FlowRecord>,
    next_id: FlowId,
    now: Nanos,
    version: u64,
    /// Which flows cross each link, and the rate computation's working arrays.
    sharing: rate_sharing::Sharing,
    /// [`Network::process_due`]'s lists (the due flows, the links they cross), kept empty
    /// between calls so that it allocates nothing.
    due_work: (Vec<FlowId>, Vec<LinkId>),
}

impl Network {
    /// A network of `links`, indexed by position ([`LinkId`]). Bandwidths must be positive and
    /// latencies non-negative, both finite.
    pub fn new(links: Vec<LinkSpec>) -> Result<Self> {
        link::validate_links(&links)?;
        let carried = vec![0; links.len()];
        let sharing = rate_sharing::Sharing::new(links.len());
        Ok(Network { links, carried, flows: BTreeMap::new(), finished: Vec::new(), next_id: 0, now: 0, version: 0, sharing, due_work: Default::default() })
    }

    /// The links, indexed by [`LinkId`].
    pub fn links(&self) -> &[LinkSpec] {
        &self.links
    }

    /// The network's clock: the latest time it was advanced to.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// A counter that changes whenever [`Network::next_event`] may have changed; tag scheduled
    /// wake-ups with it and drop those whose tag is stale.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Starts a flow of `bytes` along `path` at `now` (first advancing the network to `now`). It
    /// transfers after the sum of the path's latencies; a flow of zero bytes completes then.
    ///
    /// Errors if `path` is empty, names an unknown link or the same link twice, or if `now` is
    /// before the network's clock; the network is then unchanged.
    pub fn start_flow(&mut self, now: Nanos, path: &[LinkId], bytes: u64) -> Result<FlowId> {
        self.check_time(now)?;
        let latency = link::path_latency(&self.links, path)?;
        self.run_until(now);
        let id = self.next_id;
        self.next_id += 1;
        let active_at = now.saturating_add(secs_to_ns(latency));
        let flow = Flow {
            path: path.to_vec(),
            bytes,
            start: now,
            active_at,
            transferring: false,
            remaining: bytes as f64,
            rate: 0.0,
            finish_at: active_at,
            slot: usize::MAX,
        };
        self.flows.insert(id, flow);
        // A path without latency activates (or, empty, completes) at once.
        self.process_due(now);
        self.version += 1;
        Ok(id)
    }

    /// The earliest pending internal event and its time, ties going to the lowest [`FlowId`]; a
    /// flow that completed inside [`Network::start_flow`] and awaits [`Network::advance`] is
    /// reported due at the current clock. `None` when nothing is pending.
    pub fn next_event(&self) -> Option<(Nanos, NetEvent)> {
        if let Some(record) = self.finished.first() {
            return Some((self.now, NetEvent::Complete(record.id)));
        }
        self.next_flow_event()
    }

    /// Runs the network to `now`: progresses flows at their rates and handles every activation
    /// and completion due by then, in time order, recomputing rates after each instant. Returns
    /// the flows completed since the last call, ordered by (end, id).
    ///
    /// Errors if `now` is before the network's clock.
    pub fn advance(&mut self, now: Nanos) -> Result<Vec<FlowRecord>> {
        self.check_time(now)?;
        self.run_until(now);
        if !self.finished.is_empty() {
            self.version += 1;
        }
        Ok(std::mem::take(&mut self.finished))
    }

    /// A flow's current rate in bytes/s: zero in its latency phase, `None` once it has completed
    /// or if it never existed.
    pub fn rate(&self, flow: FlowId) -> Option<f64> {
        self.flows.get(&flow).map(|f| f.rate)
    }

    /// Number of flows not yet completed (in their latency phase or transferring).
    pub fn active_flows(&self) -> usize {
        self.flows.len()
    }

    /// Bytes carried by `link` so far (completed flows plus the moved part of those in progress),
    /// or `None` for an unknown link.
    pub fn link_bytes(&self, link: LinkId) -> Option<u64> {
        let done = *self.carried.get(link as usize)?;
        let moving: f64 = self
            .flows
            .values()
            .filter(|f| f.transferring && f.path.contains(&link))
            .map(|f| (f.bytes as f64 - f.remaining).max(0.0))
            .sum();
        Some(done + moving.round() as u64)
    }

    /// Fraction of `link`'s capacity used over `[0, horizon]`: [`Network::link_bytes`] divided by
    /// bandwidth × horizon. Meant for a horizon at or after the network's clock; zero for a zero
    /// horizon, `None` for an unknown link.
    pub fn link_utilisation(&self, link: LinkId, horizon: Nanos) -> Option<f64> {
        let bytes = self.link_bytes(link)?;
        if horizon == 0 {
            return Some(0.0);
        }
        Some(bytes as f64 / (self.links[link as usize].bandwidth * ns_to_secs(horizon)))
    }
}
