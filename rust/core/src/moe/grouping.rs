//! Token grouping (ExpertFlow): when more requests decode than one iteration takes, which of them
//! sit out so that those that run share experts.

use super::runtime::ExpertRuntime;
use crate::request::Request;
use crate::time::Nanos;

impl ExpertRuntime {
    /// Token grouping: of the `running` requests, which decoding ones sit out this iteration so
    /// that at most `batch` decode. With affinity, the request that has waited longest since its
    /// last token seeds the group, and requests are added one by one, each time the one whose last
    /// token's experts add the fewest experts neither in the group's set nor cached (ties: the
    /// longest waiting); without affinity, the `batch` longest waiting decode.
    pub fn park(&self, running: &[u32], reqs: &[Request]) -> Vec<u32> {
        let Some(g) = &self.cfg.grouping else { return Vec::new() };
        let decoding: Vec<u32> = running.iter().copied().filter(|&r| reqs[r as usize].is_decoding()).collect();
        let batch = g.batch as usize;
        if decoding.len() <= batch {
            return Vec::new();
        }
        let wait_key = |r: u32| -> (Nanos, u32) { (reqs[r as usize].last_token, r) };
        let mut chosen: Vec<u32> = Vec::with_capacity(batch);
        let mut left = decoding.clone();
        left.sort_by_key(|&r| wait_key(r));
        if !g.affinity {
            chosen.extend(left.iter().take(batch));
        } else {
            let (e, k) = (self.experts as usize, self.k as usize);
            let mut in_set = vec![false; self.layers as usize * e];
            chosen.push(left.remove(0));
            self.mark(chosen[0], &mut in_set);
            while chosen.len() < batch {
                let mut best = (usize::MAX, 0usize);
                for (i, &r) in left.iter().enumerate() {
                    let new = match self.last.get(&r) {
                        Some(v) => v.iter().enumerate().filter(|&(j, &x)| {
                            let l = j / k;
                            !in_set[l * e + x as usize] && !self.cached(l, x)
                        }).count(),
                        None => self.layers as usize * k,
                    };
                    if new < best.0 {
                        best = (new, i);
                    }
                }
                let r = left.remove(best.1);
                self.mark(r, &mut in_set);
                chosen.push(r);
            }
        }
        decoding.into_iter().filter(|r| !chosen.contains(r)).collect()
    }

    fn mark(&self, req: u32, in_set: &mut [bool]) {
        if let Some(v) = self.last.get(&req) {
            let (e, k) = (self.experts as usize, self.k as usize);
            for (j, &x) in v.iter().enumerate() {
                in_set[(j / k) * e + x as usize] = true;
            }
        }
    }

    fn cached(&self, layer: usize, expert: u16) -> bool {
        if !self.cfg.offloaded() {
            return false;
        }
        let per_gpu = self.residency.experts_per_gpu as usize;
        let (r, i) = (expert as usize / per_gpu, expert as usize % per_gpu);
        self.caches[r].contains(layer as u32, i as u16)
    }
}
