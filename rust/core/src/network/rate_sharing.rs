//! Max-min fair rate sharing among the transferring flows (progressive filling), recomputed only
//! over the links and flows connected to the links an event touched.

use super::flow::{transfer_ns, FlowId};
use super::link::LinkId;
use super::Network;

/// The transferring flows (their ids and paths, in reusable slots), which of them cross each
/// link, and the per-link working arrays of [`Network::recompute_rates`], kept between calls so
/// that a recomputation costs in the part of the network it touches, not in the network's size.
/// Between calls every count is zero and every flag false.
#[derive(Debug, Clone, Default)]
pub(super) struct Sharing {
    /// Transferring flows by slot: id and path (None: a free slot).
    slots: Vec<Option<(FlowId, Vec<LinkId>)>>,
    free: Vec<usize>,
    /// The slots of the transferring flows crossing each link.
    link_flows: Vec<Vec<usize>>,
    residual: Vec<f64>,
    count: Vec<usize>,
    saturated: Vec<bool>,
    seen: Vec<bool>,
    seen_slot: Vec<bool>,
    /// The recomputation's lists, kept (empty) between calls so that it allocates nothing.
    work: Work,
}

/// [`Network::recompute_rates`]'s lists: the component's links, the search stack, the
/// component's flows (slots), the flows still growing (slots), and the rates found.
#[derive(Debug, Clone, Default)]
struct Work {
    links: Vec<usize>,
    stack: Vec<usize>,
    slots: Vec<usize>,
    unfrozen: Vec<usize>,
    newly_saturated: Vec<usize>,
    rates: Vec<(FlowId, f64)>,
}

impl Sharing {
    /// No flows over `links` links.
    pub(super) fn new(links: usize) -> Self {
        Sharing { link_flows: vec![Vec::new(); links], residual: vec![0.0; links], count: vec![0; links], saturated: vec![false; links], seen: vec![false; links], ..Default::default() }
    }

    /// Flow `id` starts taking bandwidth on `path`; returns its slot.
    pub(super) fn attach(&mut self, id: FlowId, path: &[LinkId]) -> usize {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.seen_slot.push(false);
            self.slots.len() - 1
        });
        self.slots[slot] = Some((id, path.to_vec()));
        for &l in path {
            self.link_flows[l as usize].push(slot);
        }
        slot
    }

    /// The flow in `slot` no longer takes bandwidth.
    pub(super) fn detach(&mut self, slot: usize) {
        let (_, path) = self.slots[slot].take().expect("detaching an attached flow");
        for &l in &path {
            self.link_flows[l as usize].retain(|&f| f != slot);
        }
        self.free.push(slot);
    }
}

impl Network {
    /// Max-min fair rates by progressive filling over the connected component (links joined by
    /// the flows crossing them) of the `seeds` links; a flow whose rate is unchanged keeps its
    /// completion time, the others get a new one from the clock.
    ///
    /// Flows of other components keep their rates: max-min sharing separates by component, and a
    /// component's rates are computed from its flows alone, so they do not depend on unrelated
    /// traffic, not even in the last bit (the order flows are visited in does not enter the
    /// arithmetic: each round's share is a minimum over links).
    pub(super) fn recompute_rates(&mut self, seeds: &[LinkId]) {
        let mut s = std::mem::take(&mut self.sharing);
        let mut w = std::mem::take(&mut s.work);
        let Work { links, stack, slots, unfrozen, newly_saturated, rates } = &mut w;
        // The component: links reachable from the seeds through transferring flows.
        for &l in seeds {
            if !s.seen[l as usize] {
                s.seen[l as usize] = true;
                stack.push(l as usize);
            }
        }
        while let Some(l) = stack.pop() {
            links.push(l);
            for &slot in &s.link_flows[l] {
                if s.seen_slot[slot] {
                    continue;
                }
                s.seen_slot[slot] = true;
                slots.push(slot);
                for &m in &s.slots[slot].as_ref().expect("an attached flow").1 {
                    if !s.seen[m as usize] {
                        s.seen[m as usize] = true;
                        stack.push(m as usize);
                    }
                }
            }
        }
        for &l in links.iter() {
            s.seen[l] = false;
        }
        for &slot in slots.iter() {
            s.seen_slot[slot] = false;
            unfrozen.push(slot);
            let (_, path) = s.slots[slot].as_ref().expect("an attached flow");
            for &link in path {
                let l = link as usize;
                if s.count[l] == 0 {
                    s.residual[l] = self.links[l].bandwidth;
                }
                s.count[l] += 1;
            }
        }
        let mut level = 0.0;
        while !unfrozen.is_empty() {
            // Every unfrozen flow grows by the fair share of the tightest link.
            let delta = links.iter().filter(|&&l| s.count[l] > 0).map(|&l| s.residual[l] / s.count[l] as f64).fold(f64::INFINITY, f64::min);
            level += delta;
            newly_saturated.clear();
            for &l in links.iter() {
                if s.count[l] > 0 {
                    if s.residual[l] / s.count[l] as f64 <= delta * (1.0 + 1e-12) {
                        s.saturated[l] = true;
                        newly_saturated.push(l);
                        s.residual[l] = 0.0;
                    } else {
                        s.residual[l] -= delta * s.count[l] as f64;
                    }
                }
            }
            // The flows crossing a saturated link freeze at this level (in the list's order).
            let (flows, count, saturated) = (&s.slots, &mut s.count, &s.saturated);
            unfrozen.retain(|&slot| {
                let (id, path) = flows[slot].as_ref().expect("an attached flow");
                if !path.iter().any(|&l| saturated[l as usize]) {
                    return true;
                }
                rates.push((*id, level));
                for &l in path {
                    count[l as usize] -= 1;
                }
                false
            });
            for &l in newly_saturated.iter() {
                s.saturated[l] = false;
            }
            links.retain(|&l| s.count[l] > 0);
        }
        let now = self.now;
        for &(id, rate) in rates.iter() {
            if let Some(flow) = self.flows.get_mut(&id) {
                if flow.rate != rate {
                    flow.rate = rate;
                    flow.finish_at = now.saturating_add(transfer_ns(flow.remaining, rate));
                }
            }
        }
        links.clear();
        slots.clear();
        newly_saturated.clear();
        rates.clear();
        s.work = w;
        self.sharing = s;
    }
}
