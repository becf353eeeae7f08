//! Max-min fair rate sharing among the transferring flows (progressive filling).

use super::flow::{transfer_ns, FlowId};
use super::Network;

/// Per-link working arrays of [`Network::recompute_rates`], kept between calls so that a
/// recomputation costs in the links its flows cross, not in the network's size. Between calls
/// every count is zero and every saturation flag false.
#[derive(Debug, Clone, Default)]
pub(super) struct RateScratch {
    residual: Vec<f64>,
    count: Vec<usize>,
    saturated: Vec<bool>,
    /// Links crossed by at least one transferring flow, each once.
    active: Vec<usize>,
}

impl RateScratch {
    /// Working arrays for `links` links.
    pub(super) fn new(links: usize) -> Self {
        RateScratch { residual: vec![0.0; links], count: vec![0; links], saturated: vec![false; links], active: Vec::new() }
    }
}

impl Network {
    /// Max-min fair rates by progressive filling; a flow whose rate is unchanged keeps its
    /// completion time, the others get a new one from the clock.
    ///
    /// Each round visits only the links some transferring flow crosses (a link without flows
    /// neither bounds the fill nor changes), so the arithmetic, and with it every rate, is the
    /// same as filling over all links.
    pub(super) fn recompute_rates(&mut self) {
        let mut s = std::mem::take(&mut self.scratch);
        s.active.clear();
        let mut unfrozen: Vec<(FlowId, &[u32])> = Vec::new();
        for (&id, flow) in self.flows.iter().filter(|(_, f)| f.transferring) {
            unfrozen.push((id, &flow.path));
            for &link in &flow.path {
                let l = link as usize;
                if s.count[l] == 0 {
                    s.active.push(l);
                    s.residual[l] = self.links[l].bandwidth;
                }
                s.count[l] += 1;
            }
        }
        let mut rates: Vec<(FlowId, f64)> = Vec::with_capacity(unfrozen.len());
        let mut level = 0.0;
        let mut newly_saturated: Vec<usize> = Vec::new();
        while !unfrozen.is_empty() {
            // Every unfrozen flow grows by the fair share of the tightest link.
            let delta = s.active.iter().filter(|&&l| s.count[l] > 0).map(|&l| s.residual[l] / s.count[l] as f64).fold(f64::INFINITY, f64::min);
            level += delta;
            newly_saturated.clear();
            for &l in &s.active {
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
            let mut still = Vec::with_capacity(unfrozen.len());
            for (id, path) in unfrozen {
                if path.iter().any(|&l| s.saturated[l as usize]) {
                    rates.push((id, level));
                    for &l in path {
                        s.count[l as usize] -= 1;
                    }
                } else {
                    still.push((id, path));
                }
            }
            unfrozen = still;
            for &l in &newly_saturated {
                s.saturated[l] = false;
            }
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
        self.scratch = s;
    }
}
