//! Max-min fair sharing of link bandwidth among transferring flows, by progressive filling: all
//! rates grow together until a link saturates, the flows through it freeze, the others keep growing.

use super::flow::{transfer_ns, FlowId};
use super::Network;
use std::collections::BTreeMap;

impl Network {
    /// Max-min fair rates by progressive filling; a flow whose rate is unchanged keeps its
    /// completion time, the others get a new one from the clock.
    pub(super) fn recompute_rates(&mut self) {
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
