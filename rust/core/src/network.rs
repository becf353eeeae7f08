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

use crate::error::{Error, Result};
use crate::time::{ns_to_secs, secs_to_ns, Nanos, NS_PER_SEC};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One link: a per-direction bandwidth and a latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Name for reports, e.g. `node0-nvlink` or `node1-nic0`.
    pub name: String,
    /// Bandwidth in one direction, bytes/s.
    pub bandwidth: f64,
    /// Latency a flow pays before transferring over this link, seconds.
    pub latency: f64,
}

/// Index of a link in the list given to [`Network::new`].
pub type LinkId = u32;

/// Identifier of a flow, unique within a [`Network`] and increasing in start order.
pub type FlowId = u64;

/// An internal event of the network, as reported by [`Network::next_event`].
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
    /// The flow's identifier, as returned by [`Network::start_flow`].
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
struct Flow {
    path: Vec<LinkId>,
    bytes: u64,
    start: Nanos,
    /// End of the latency phase.
    active_at: Nanos,
    /// Whether the latency phase is over.
    transferring: bool,
    /// Bytes still to move.
    remaining: f64,
    /// Current rate, bytes/s (zero in the latency phase).
    rate: f64,
    /// Completion time under the current rate (meaningful while transferring).
    finish_at: Nanos,
}

impl Flow {
    /// This flow's next internal event and its time.
    fn next_event(&self, id: FlowId) -> (Nanos, NetEvent) {
        match (self.transferring, self.bytes) {
            (false, 0) => (self.active_at, NetEvent::Complete(id)),
            (false, _) => (self.active_at, NetEvent::Activate(id)),
            (true, _) => (self.finish_at, NetEvent::Complete(id)),
        }
    }
}

/// Nanoseconds, rounded up, to move `bytes` at `rate` bytes/s. A relative slack of 1e-14 absorbs
/// float rounding so that an exact duration is not pushed one nanosecond late.
fn transfer_ns(bytes: f64, rate: f64) -> Nanos {
    if bytes <= 0.0 {
        return 0;
    }
    if rate <= 0.0 {
        return Nanos::MAX;
    }
    let ns = bytes * NS_PER_SEC / rate;
    (ns - ns * 1e-14).ceil() as Nanos
}

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
}

impl Network {
    /// A network of `links`, indexed by position ([`LinkId`]). Bandwidths must be positive and
    /// latencies non-negative, both finite.
    pub fn new(links: Vec<LinkSpec>) -> Result<Self> {
        if LinkId::try_from(links.len()).is_err() {
            return Err(Error::config("links", format!("at most {} links, got {}", LinkId::MAX, links.len())));
        }
        for (i, link) in links.iter().enumerate() {
            if !(link.bandwidth.is_finite() && link.bandwidth > 0.0) {
                return Err(Error::config(
                    format!("links.{i}.bandwidth"),
                    format!("must be a positive number of bytes/s, got {}", link.bandwidth),
                ));
            }
            if !(link.latency.is_finite() && link.latency >= 0.0) {
                return Err(Error::config(
                    format!("links.{i}.latency"),
                    format!("must be a non-negative number of seconds, got {}", link.latency),
                ));
            }
        }
        let carried = vec![0; links.len()];
        Ok(Network { links, carried, flows: BTreeMap::new(), finished: Vec::new(), next_id: 0, now: 0, version: 0 })
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
        let latency = self.path_latency(path)?;
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

    fn check_time(&self, now: Nanos) -> Result<()> {
        if now < self.now {
            return Err(Error::Simulation {
                message: format!("network time went backwards: {now} ns is before {} ns", self.now),
            });
        }
        Ok(())
    }

    /// Total latency of a valid path, seconds.
    fn path_latency(&self, path: &[LinkId]) -> Result<f64> {
        if path.is_empty() {
            return Err(Error::Simulation { message: "a flow needs a path of at least one link".into() });
        }
        let mut latency = 0.0;
        for (i, &link) in path.iter().enumerate() {
            let Some(spec) = self.links.get(link as usize) else {
                return Err(Error::Simulation {
                    message: format!("flow path names link {link}, but the network has {} links", self.links.len()),
                });
            };
            if path[..i].contains(&link) {
                return Err(Error::Simulation { message: format!("flow path crosses link {link} twice") });
            }
            latency += spec.latency;
        }
        Ok(latency)
    }

    /// The earliest internal event of the flows in progress (lowest id on ties).
    fn next_flow_event(&self) -> Option<(Nanos, NetEvent)> {
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
    fn run_until(&mut self, until: Nanos) {
        while let Some((t, _)) = self.next_flow_event().filter(|&(t, _)| t <= until) {
            self.progress_to(t);
            self.process_due(t);
        }
        self.progress_to(until);
    }

    /// Moves every transferring flow forward at its rate to time `t`.
    fn progress_to(&mut self, t: Nanos) {
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
    /// then recomputes rates if anything happened.
    fn process_due(&mut self, t: Nanos) {
        let due: Vec<FlowId> =
            self.flows.iter().filter(|(&id, f)| f.next_event(id).0 <= t).map(|(&id, _)| id).collect();
        if due.is_empty() {
            return;
        }
        for id in due {
            let Some(flow) = self.flows.get_mut(&id) else { continue };
            if !flow.transferring && flow.bytes > 0 {
                flow.transferring = true;
            } else if let Some(flow) = self.flows.remove(&id) {
                for &link in &flow.path {
                    self.carried[link as usize] += flow.bytes;
                }
                self.finished.push(FlowRecord { id, start: flow.start, end: t, bytes: flow.bytes, path: flow.path });
            }
        }
        self.recompute_rates();
        self.version += 1;
    }

    /// Max-min fair rates by progressive filling; a flow whose rate is unchanged keeps its
    /// completion time, the others get a new one from the clock.
    fn recompute_rates(&mut self) {
        let mut residual: Vec<f64> = self.links.iter().map(|l| l.bandwidth).collect();
        let mut count = vec![0usize; self.links.len()];
        let mut unfrozen: Vec<FlowId> = Vec::new();
        for (&id, flow) in self.flows.iter().filter(|(_, f)| f.transferring) {
            unfrozen.push(id);
            for &link in &flow.path {
                count[link as usize] += 1;
            }
        }
        let mut rates: BTreeMap<FlowId, f64> = BTreeMap::new();
        let mut level = 0.0;
        while !unfrozen.is_empty() {
            // Every unfrozen flow grows by the fair share of the tightest link.
            let delta = (0..residual.len())
                .filter(|&l| count[l] > 0)
                .map(|l| residual[l] / count[l] as f64)
                .fold(f64::INFINITY, f64::min);
            level += delta;
            let tight = |l: usize| count[l] > 0 && residual[l] / count[l] as f64 <= delta * (1.0 + 1e-12);
            let saturated: Vec<bool> = (0..residual.len()).map(tight).collect();
            for l in 0..residual.len() {
                if count[l] > 0 {
                    residual[l] = if saturated[l] { 0.0 } else { residual[l] - delta * count[l] as f64 };
                }
            }
            let mut still = Vec::with_capacity(unfrozen.len());
            for id in unfrozen {
                let path = &self.flows[&id].path;
                if path.iter().any(|&l| saturated[l as usize]) {
                    rates.insert(id, level);
                    for &l in path {
                        count[l as usize] -= 1;
                    }
                } else {
                    still.push(id);
                }
            }
            unfrozen = still;
        }
        let now = self.now;
        for (id, rate) in rates {
            if let Some(flow) = self.flows.get_mut(&id) {
                if flow.rate != rate {
                    flow.rate = rate;
                    flow.finish_at = now.saturating_add(transfer_ns(flow.remaining, rate));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, gbps: f64, latency: f64) -> LinkSpec {
        LinkSpec { name: name.into(), bandwidth: gbps * 1e9, latency }
    }

    /// Drives `net` with the versioned wake-up protocol until nothing is pending; returns the
    /// completed flows and how many stale wake-ups were dropped.
    fn run_to_end(net: &mut Network) -> (Vec<FlowRecord>, usize) {
        let mut queue: BTreeMap<(Nanos, u64), u64> = BTreeMap::new();
        let mut seq = 0;
        let mut done = Vec::new();
        let mut stale = 0;
        if let Some((t, _)) = net.next_event() {
            queue.insert((t, seq), net.version());
            seq += 1;
        }
        while let Some(((now, _), version)) = queue.pop_first() {
            if version != net.version() {
                stale += 1;
                continue;
            }
            done.extend(net.advance(now).expect("time moves forward"));
            if let Some((t, _)) = net.next_event() {
                queue.insert((t, seq), net.version());
                seq += 1;
            }
        }
        (done, stale)
    }

    fn assert_close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} != {b}");
    }

    #[test]
    fn single_flow_pays_latency_then_full_bandwidth() {
        let mut net = Network::new(vec![link("nvlink", 100.0, 5e-6)]).unwrap();
        let f = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        assert_eq!(net.rate(f), Some(0.0));
        assert_eq!(net.next_event(), Some((5_000, NetEvent::Activate(f))));
        assert!(net.advance(5_000).unwrap().is_empty());
        assert_eq!(net.rate(f), Some(100e9));
        assert_eq!(net.next_event(), Some((10_005_000, NetEvent::Complete(f))));
        let done = net.advance(10_005_000).unwrap();
        assert_eq!(done, vec![FlowRecord { id: f, start: 0, end: 10_005_000, bytes: 1_000_000_000, path: vec![0] }]);
        assert_eq!(net.active_flows(), 0);
        assert_eq!(net.rate(f), None);
        assert_eq!(net.next_event(), None);
    }

    #[test]
    fn two_flows_share_then_survivor_speeds_up() {
        let mut net = Network::new(vec![link("nic", 100.0, 1e-6)]).unwrap();
        let small = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        let large = net.start_flow(0, &[0], 3_000_000_000).unwrap();
        net.advance(1_000).unwrap();
        assert_eq!(net.rate(small), Some(50e9));
        assert_eq!(net.rate(large), Some(50e9));
        // Small: 1 GB at 50 GB/s = 20 ms (= 2 * size / bw). Large then has 3 - 1 = 2 GB left at
        // 100 GB/s: 20 ms more.
        let (done, _) = run_to_end(&mut net);
        assert_eq!(done.len(), 2);
        assert_eq!((done[0].id, done[0].end), (small, 1_000 + 20_000_000));
        assert_eq!((done[1].id, done[1].end), (large, 1_000 + 40_000_000));
    }

    #[test]
    fn survivor_rate_rises_when_the_other_completes() {
        let mut net = Network::new(vec![link("nic", 100.0, 0.0)]).unwrap();
        let a = net.start_flow(0, &[0], 500_000_000).unwrap();
        let b = net.start_flow(0, &[0], 2_000_000_000).unwrap();
        assert_eq!(net.next_event(), Some((10_000_000, NetEvent::Complete(a))));
        let done = net.advance(10_000_000).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(net.rate(b), Some(100e9));
        assert_eq!(net.link_bytes(0), Some(1_000_000_000));
        // 1.5 GB left at 100 GB/s.
        assert_eq!(net.next_event(), Some((25_000_000, NetEvent::Complete(b))));
    }

    #[test]
    fn max_min_gives_unused_share_to_others() {
        // A on link0 (100 GB/s), B on link0+link1, C on link1 (50 GB/s).
        let mut net = Network::new(vec![link("l1", 100.0, 0.0), link("l2", 50.0, 0.0)]).unwrap();
        let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        let b = net.start_flow(0, &[0, 1], 1_000_000_000).unwrap();
        let c = net.start_flow(0, &[1], 1_000_000_000).unwrap();
        assert_close(net.rate(b).unwrap(), 25e9);
        assert_close(net.rate(c).unwrap(), 25e9);
        assert_close(net.rate(a).unwrap(), 75e9);
        // Both links are full.
        assert_close(net.rate(a).unwrap() + net.rate(b).unwrap(), 100e9);
        assert_close(net.rate(b).unwrap() + net.rate(c).unwrap(), 50e9);
    }

    #[test]
    fn two_link_flow_limited_by_its_tighter_link() {
        let mut net = Network::new(vec![link("fast", 100.0, 0.0), link("slow", 10.0, 0.0)]).unwrap();
        let f = net.start_flow(0, &[0, 1], 1_000_000_000).unwrap();
        assert_close(net.rate(f).unwrap(), 10e9);
        let g = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        assert_close(net.rate(g).unwrap(), 90e9);
        assert_close(net.rate(f).unwrap(), 10e9);
    }

    #[test]
    fn latency_phase_takes_no_bandwidth() {
        // A on link0 (no latency); B on link1 (1 ms latency) then link0.
        let mut net = Network::new(vec![link("l0", 100.0, 0.0), link("l1", 100.0, 1e-3)]).unwrap();
        let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        let b = net.start_flow(0, &[1, 0], 2_000_000_000).unwrap();
        assert_eq!(net.rate(a), Some(100e9));
        assert_eq!(net.rate(b), Some(0.0));
        assert_eq!(net.next_event(), Some((1_000_000, NetEvent::Activate(b))));
        // A stale completion for A (10 ms alone) would be dropped by the protocol.
        let (done, stale) = run_to_end(&mut net);
        // A moved 0.1 GB alone, then 0.9 GB at 50 GB/s: ends at 1 + 18 = 19 ms. B moved 0.9 GB by
        // then, and its 1.1 GB left take 11 ms at 100 GB/s: 30 ms.
        assert_eq!((done[0].id, done[0].end), (a, 19_000_000));
        assert_eq!((done[1].id, done[1].end), (b, 30_000_000));
        assert_eq!(stale, 0);
    }

    #[test]
    fn stale_wakeups_are_detected_by_version() {
        let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
        let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        let (t_alone, _) = net.next_event().unwrap();
        let v_alone = net.version();
        assert_eq!(t_alone, 10_000_000);
        net.start_flow(5_000_000, &[0], 1_000_000_000).unwrap();
        assert_ne!(net.version(), v_alone, "a start changes rates, so the old wake-up is stale");
        // A: 0.5 GB left at 50 GB/s from 5 ms.
        assert_eq!(net.next_event(), Some((15_000_000, NetEvent::Complete(a))));
        // Advancing to the stale time is harmless: nothing completes.
        assert!(net.advance(t_alone).unwrap().is_empty());
        assert_eq!(net.next_event(), Some((15_000_000, NetEvent::Complete(a))));
    }

    #[test]
    fn start_at_the_instant_of_a_pending_completion() {
        let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
        let a = net.start_flow(0, &[0], 1_000_000_000).unwrap();
        // A is due at 10 ms; the caller starts another flow at 10 ms before handling it.
        let b = net.start_flow(10_000_000, &[0], 1_000_000_000).unwrap();
        assert_eq!(net.rate(b), Some(100e9), "A is done, B has the link to itself");
        assert_eq!(net.next_event(), Some((10_000_000, NetEvent::Complete(a))));
        let done = net.advance(10_000_000).unwrap();
        assert_eq!((done[0].id, done[0].end), (a, 10_000_000));
        assert_eq!(net.next_event(), Some((20_000_000, NetEvent::Complete(b))));
    }

    #[test]
    fn zero_bytes_complete_after_latency() {
        let links = vec![link("l0", 100.0, 2e-6), link("l1", 100.0, 3e-6), link("l2", 100.0, 0.0)];
        let mut net = Network::new(links).unwrap();
        let f = net.start_flow(100, &[0, 1], 0).unwrap();
        assert_eq!(net.next_event(), Some((5_100, NetEvent::Complete(f))));
        let done = net.advance(5_100).unwrap();
        assert_eq!(done, vec![FlowRecord { id: f, start: 100, end: 5_100, bytes: 0, path: vec![0, 1] }]);
        // Without latency it completes at once and is handed over by the next advance.
        let g = net.start_flow(6_000, &[2], 0).unwrap();
        assert_eq!(net.active_flows(), 0);
        assert_eq!(net.next_event(), Some((6_000, NetEvent::Complete(g))));
        assert_eq!(net.advance(6_000).unwrap()[0].end, 6_000);
        assert_eq!(net.next_event(), None);
    }

    #[test]
    fn bytes_and_utilisation_accounting() {
        let mut net = Network::new(vec![link("l0", 100.0, 0.0), link("l1", 100.0, 0.0)]).unwrap();
        net.start_flow(0, &[0], 1_000_000_000).unwrap();
        net.start_flow(0, &[0, 1], 2_000_000_000).unwrap();
        net.advance(4_000_000).unwrap();
        // 4 ms at 50 GB/s each: 0.2 GB per flow so far.
        assert_eq!(net.link_bytes(0), Some(400_000_000));
        assert_eq!(net.link_bytes(1), Some(200_000_000));
        let (done, _) = run_to_end(&mut net);
        assert_eq!(done.len(), 2);
        assert_eq!(net.link_bytes(0), Some(3_000_000_000));
        assert_eq!(net.link_bytes(1), Some(2_000_000_000));
        // 100 ms horizon: 3 GB of 10 GB capacity, 2 GB of 10 GB.
        assert_close(net.link_utilisation(0, 100_000_000).unwrap(), 0.3);
        assert_close(net.link_utilisation(1, 100_000_000).unwrap(), 0.2);
        // Link 0 is saturated until the last flow ends at 30 ms.
        assert_eq!(done[1].end, 30_000_000);
        assert_close(net.link_utilisation(0, 30_000_000).unwrap(), 1.0);
        assert_eq!(net.link_utilisation(0, 0), Some(0.0));
        assert_eq!(net.link_bytes(2), None);
        assert_eq!(net.link_utilisation(2, 1), None);
    }

    #[test]
    fn ties_go_to_the_lowest_flow_id() {
        let mut net = Network::new(vec![link("l0", 100.0, 1e-6)]).unwrap();
        let ids: Vec<FlowId> = (0..3).map(|_| net.start_flow(0, &[0], 300_000_000).unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(net.next_event(), Some((1_000, NetEvent::Activate(0))));
        net.advance(1_000).unwrap();
        assert_eq!(net.next_event(), Some((1_000 + 9_000_000, NetEvent::Complete(0))));
        let done = net.advance(1_000 + 9_000_000).unwrap();
        assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        assert!(done.iter().all(|r| r.end == 9_001_000));
    }

    /// 200 flows on random one- or two-link paths; returns the completions and each link's bytes.
    fn random_run() -> (Vec<FlowRecord>, Vec<u64>) {
        let mut rng = crate::rng::RngStream::new(7, "network-test");
        let links = vec![link("a", 100.0, 1e-6), link("b", 50.0, 2e-6), link("c", 25.0, 0.0), link("d", 200.0, 5e-7)];
        let mut net = Network::new(links).unwrap();
        let mut done = Vec::new();
        let mut now = 0;
        for _ in 0..200 {
            now += rng.next_u64() % 2_000_000;
            done.extend(net.advance(now).unwrap());
            let first = (rng.next_u64() % 4) as LinkId;
            let second = (rng.next_u64() % 4) as LinkId;
            let path: Vec<LinkId> = if first == second { vec![first] } else { vec![first, second] };
            net.start_flow(now, &path, rng.next_u64() % 500_000_000).unwrap();
        }
        done.extend(run_to_end(&mut net).0);
        let carried = (0..4).map(|l| net.link_bytes(l).unwrap()).collect();
        (done, carried)
    }

    #[test]
    fn runs_are_deterministic_and_conserve_bytes() {
        let (first, carried) = random_run();
        assert_eq!(first.len(), 200);
        assert_eq!((first.clone(), carried.clone()), random_run());
        for (l, &bytes) in carried.iter().enumerate() {
            let expected: u64 = first.iter().filter(|r| r.path.contains(&(l as LinkId))).map(|r| r.bytes).sum();
            assert_eq!(bytes, expected, "link {l}");
        }
        for r in &first {
            assert!(r.end > r.start || r.bytes == 0);
        }
        // Completions come out in time order.
        assert!(first.windows(2).all(|w| w[0].end <= w[1].end));
    }

    #[test]
    fn completion_never_precedes_the_bytes() {
        // A flow alone can never beat bytes / bandwidth plus latency.
        let mut net = Network::new(vec![link("odd", 3.0, 1e-6)]).unwrap();
        let f = net.start_flow(0, &[0], 1_000_000_007).unwrap();
        let (done, _) = run_to_end(&mut net);
        let exact_ns = 1_000.0 + 1_000_000_007.0 / 3e9 * 1e9;
        assert_eq!(done[0].id, f);
        assert!(done[0].end as f64 >= exact_ns && (done[0].end as f64) < exact_ns + 1.0);
    }

    #[test]
    fn errors_never_panic() {
        let bad_bw = Network::new(vec![link("ok", 1.0, 0.0), link("zero", 0.0, 0.0)]).unwrap_err();
        assert!(matches!(&bad_bw, Error::Config { path, .. } if path == "links.1.bandwidth"));
        let nan_bw = Network::new(vec![LinkSpec { name: "nan".into(), bandwidth: f64::NAN, latency: 0.0 }]);
        assert!(matches!(nan_bw, Err(Error::Config { path, .. }) if path == "links.0.bandwidth"));
        let bad_lat = Network::new(vec![link("neg", 1.0, -1e-6)]).unwrap_err();
        assert!(matches!(&bad_lat, Error::Config { path, .. } if path == "links.0.latency"));

        let mut net = Network::new(vec![link("l0", 100.0, 0.0)]).unwrap();
        assert!(net.start_flow(0, &[], 10).is_err());
        assert!(net.start_flow(0, &[1], 10).is_err());
        assert!(net.start_flow(0, &[0, 0], 10).is_err());
        assert_eq!(net.active_flows(), 0);
        net.start_flow(100, &[0], 10).unwrap();
        assert!(net.start_flow(50, &[0], 10).is_err());
        assert!(net.advance(50).is_err());
        assert_eq!(net.active_flows(), 1);
    }

    #[test]
    fn link_spec_rejects_unknown_fields() {
        let ok: LinkSpec = serde_json::from_str(r#"{"name": "nic", "bandwidth": 5e10, "latency": 2e-6}"#).unwrap();
        assert_eq!(ok, link("nic", 50.0, 2e-6));
        assert!(serde_json::from_str::<LinkSpec>(r#"{"name": "nic", "bandwidth": 1, "latency": 0, "x": 1}"#).is_err());
    }
}
