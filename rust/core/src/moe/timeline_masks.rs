//! The per-layer timeline of `timeline.rs` on bitmasks: the same iteration, with a GPU's used,
//! cached and staged experts of a layer as 64-bit sets rather than per-expert flags.
//!
//! It applies with the built-in expert caches, at most 64 experts per GPU and layer, and an expert
//! size in whole bytes small enough that every per-iteration byte total is an integer below 2^53:
//! then a sum of `n` expert sizes is exactly `n` times the size in any order, so the byte totals are
//! counted rather than added expert by expert. Everything else keeps `timeline.rs`'s order: hits
//! and misses reach the cache in increasing id order, fetches advance the link clock one by one in
//! that order, the predictor draws once per used expert in that order (and once more per wrong
//! guess, picking among the unused experts not named yet, in id order). The outputs, statistics
//! and random streams are bit for bit those of the flag-by-flag loop.

use super::runtime::ExpertRuntime;
use super::stats::ExpertIteration;
use super::timeline::{in_order_sum, later, whole_sum};
use crate::cost::CostModel;

/// 2^53: below it every integer is exact in an `f64`.
const EXACT: f64 = (1u64 << 53) as f64;

impl ExpertRuntime {
    /// Whether [`Self::iteration_masked`] applies (see the module's description).
    pub(super) fn masks_apply(&self) -> bool {
        let eb = self.residency.expert_bytes;
        let worst = 2.0 * self.layers as f64 * self.experts as f64;
        self.cfg.offloaded()
            && self.residency.experts_per_gpu <= 64
            && self.caches.iter().all(|c| c.is_builtin())
            && eb >= 0.0
            && eb.fract() == 0.0
            && eb * worst < EXACT
    }

    /// [`Self::iteration`]'s layer loop on bitmasks, for the routing already drawn into `counts`.
    pub(super) fn iteration_masked(&mut self, cost: &CostModel, base: f64, fixed: f64) -> ExpertIteration {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("popcnt") && std::is_x86_feature_detected!("bmi1") && std::is_x86_feature_detected!("lzcnt") {
            // SAFETY: the CPU has the features the function is compiled for (checked just above).
            return unsafe { self.iteration_masked_bitcount(cost, base, fixed) };
        }
        self.iteration_masked_body(cost, base, fixed)
    }

    /// [`Self::iteration_masked_body`] compiled with the CPU's bit-count instructions (the
    /// baseline x86-64 target counts a set's bits in a dozen instructions); the same results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt,bmi1,lzcnt")]
    unsafe fn iteration_masked_bitcount(&mut self, cost: &CostModel, base: f64, fixed: f64) -> ExpertIteration {
        self.iteration_masked_body(cost, base, fixed)
    }

    /// The body of [`Self::iteration_masked`].
    #[inline(always)]
    fn iteration_masked_body(&mut self, cost: &CostModel, base: f64, fixed: f64) -> ExpertIteration {
        self.stats.iterations += 1;
        let (e, per_gpu, ranks) = (self.experts as usize, self.residency.experts_per_gpu as usize, self.ranks as usize);
        let whole_counts = self.aggregate.is_some();
        let fetch = self.fetch_seconds();
        let lead = self.cfg.prefetch.as_ref().map(|p| (p.lead_layers as usize, p.accuracy));
        let layers = self.layers as usize;
        // The used experts of every layer and GPU, once (a layer's are read again by the
        // prefetches issued at the layer before it).
        let mut used_masks = std::mem::take(&mut self.work.used_masks);
        used_masks.clear();
        let all = if per_gpu == 64 { u64::MAX } else { (1u64 << per_gpu) - 1 };
        // Per-iteration routing drew them as bits already (whole counts, at most 64 experts).
        let routed = whole_counts && e <= 64 && self.work.route_masks.len() == layers;
        if routed && ranks == 1 {
            used_masks.extend_from_slice(&self.work.route_masks);
        } else if routed {
            for &m in &self.work.route_masks {
                used_masks.extend((0..ranks).map(|r| (m >> (r * per_gpu)) & all));
            }
        } else {
            for row in self.counts.chunks_exact(per_gpu) {
                used_masks.push(row.iter().enumerate().fold(0u64, |m, (i, &c)| m | ((c != 0.0) as u64) << i));
            }
        }
        // A prefetch's arrival in `staged` is read only where this iteration's masks say one was
        // staged, so the masks alone are reset (`timeline.rs` resets the arrivals to -1 instead).
        let mut staged_masks = std::mem::take(&mut self.work.staged_masks);
        staged_masks.clear();
        staged_masks.resize(layers * ranks, 0);
        let mut link_free = std::mem::take(&mut self.work.link_free);
        link_free.clear();
        link_free.resize(ranks, 0.0);
        let mut rank_pairs = std::mem::take(&mut self.work.rank_pairs);
        self.work.kernel.clear();
        self.work.kernel.resize(per_gpu + 1, (u64::MAX, 0.0));
        let (mut t, mut stall) = (0.0f64, 0.0f64);
        let (mut activated, mut lookups, mut hit_count, mut miss_count, mut prefetch_hits) = (0u64, 0u64, 0u64, 0u64, 0u64);
        // Expert-size multiples: fetched on demand, prefetched, prefetched but unused.
        let (mut demand, mut prefetched, mut wasted) = (0u64, 0u64, 0u64);
        for l in 0..layers {
            let router_t = t + base;
            let (mut end, mut ideal) = (router_t, router_t);
            rank_pairs.clear();
            for (r, free) in link_free.iter_mut().enumerate() {
                let lo = l * e + r * per_gpu;
                let counts = &self.counts[lo..lo + per_gpu];
                let used = used_masks[l * ranks + r];
                // One GPU's whole counts of per-iteration routing sum to the layer's pairs.
                let (pairs, touched) = if routed && ranks == 1 {
                    (self.work.route_pairs, used.count_ones() as usize)
                } else if whole_counts {
                    whole_sum(counts)
                } else {
                    in_order_sum(counts)
                };
                if ranks > 1 {
                    rank_pairs.push(pairs);
                }
                activated += touched as u64;
                let compute = if touched == 0 {
                    0.0
                } else {
                    let slot = &mut self.work.kernel[touched];
                    if slot.0 != pairs.to_bits() {
                        *slot = (pairs.to_bits(), cost.expert_seconds(pairs, touched as f64));
                    }
                    slot.1
                };
                let staged = staged_masks[l * ranks + r];
                let cache = self.caches[r].builtin_layer_mut(l as u32).expect("masks apply to built-in caches");
                let cached = cache.resident_mask();
                let (hits, missed) = (used & cached, used & !cached);
                let (waited, fetched) = (missed & staged, missed & !staged);
                wasted += (!used & staged & all).count_ones() as u64;
                // A miss staged by a prefetch waits for it; the others are fetched one after
                // another on the link, the first at max(free, router). The layer's prefetches
                // were all issued by one call, one after another on the link, and a used expert
                // is only staged when named rightly, in increasing id order: so their arrivals
                // grow with the id, and the last staged miss arrives last.
                let mut ready = router_t;
                if waited != 0 {
                    ready = later(ready, self.staged[lo + 63 - waited.leading_zeros() as usize]);
                }
                let fetches = fetched.count_ones() as u64;
                if fetches > 0 {
                    let mut link = free.max(router_t);
                    for _ in 0..fetches {
                        link += fetch;
                    }
                    *free = link;
                    ready = later(ready, link);
                }
                demand += fetches;
                prefetch_hits += waited.count_ones() as u64;
                miss_count += fetches;
                lookups += used.count_ones() as u64;
                hit_count += hits.count_ones() as u64;
                cache.lookup_masks(hits, missed);
                end = end.max(ready + compute);
                ideal = ideal.max(router_t + compute);
            }
            if ranks > 1 {
                let mean = rank_pairs.iter().sum::<f64>() / ranks as f64;
                if mean > 0.0 {
                    self.stats.imbalance_sum += rank_pairs.iter().cloned().fold(0.0, f64::max) / mean;
                    self.stats.imbalance_layers += 1;
                }
            }
            if let Some((d, accuracy)) = lead {
                if l + d < layers {
                    prefetched += self.prefetch_masked(l + d, router_t, accuracy, fetch, &mut link_free, &used_masks, &mut staged_masks);
                }
            }
            stall += end - ideal;
            t = end;
        }
        self.stats.activated += activated;
        self.stats.lookups += lookups;
        self.stats.hits += hit_count;
        self.stats.misses += miss_count;
        self.stats.prefetch_hits += prefetch_hits;
        self.work.link_free = link_free;
        self.work.rank_pairs = rank_pairs;
        self.work.used_masks = used_masks;
        self.work.staged_masks = staged_masks;
        // Whole multiples of a whole expert size below 2^53: exactly the sums of sizes.
        let eb = self.residency.expert_bytes;
        let (demand, prefetched, wasted) = (demand as f64 * eb, prefetched as f64 * eb, wasted as f64 * eb);
        let bytes = demand + prefetched;
        self.stats.demand_bytes += demand.round() as u64;
        self.stats.prefetch_bytes += prefetched.round() as u64;
        self.stats.wasted_prefetch_bytes += wasted.round() as u64;
        ExpertIteration { seconds: fixed + t, stall_seconds: stall, fetch_bytes: bytes.round() as u64 }
    }

    /// `timeline.rs`'s `prefetch` on bitmasks: issues at `now` the prefetches of layer `target`
    /// and returns how many experts it fetches.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn prefetch_masked(&mut self, target: usize, now: f64, accuracy: f64, fetch: f64, link_free: &mut [f64], used_masks: &[u64], staged_masks: &mut [u64]) -> u64 {
        let (e, per_gpu, ranks) = (self.experts as usize, self.residency.experts_per_gpu as usize, self.ranks as usize);
        let all = if per_gpu == 64 { u64::MAX } else { (1u64 << per_gpu) - 1 };
        // `next_f64() < accuracy` on the integer draw, as in `timeline.rs`.
        let accuracy_bits = (accuracy * (1u64 << 53) as f64).ceil() as u64;
        let mut predictor = self.predictor.clone();
        let mut count = 0u64;
        for (r, free) in link_free.iter_mut().enumerate() {
            let lo = target * e + r * per_gpu;
            let used = used_masks[target * ranks + r];
            let unused = !used & all;
            let cached = self.caches[r].builtin_layer_mut(target as u32).expect("masks apply to built-in caches").resident_mask();
            let mut staged = staged_masks[target * ranks + r];
            let mut link = free.max(now);
            // The names, drawn in increasing id order of the used experts: a right guess names
            // the expert itself; a wrong one (rare) uniformly one of the unused experts not
            // named yet, in id order, and is kept in `order` at its place.
            let mut named = 0u64;
            let (mut order, mut n) = ([0u8; 64], 0usize);
            let mut wrong_guesses = false;
            let mut todo = used;
            if unused == 0 {
                // Every expert used: a wrong guess has nothing to name and draws nothing more,
                // so the names are the rightly guessed experts, without a branch per guess.
                while todo != 0 {
                    let i = todo.trailing_zeros();
                    todo &= todo - 1;
                    named |= ((predictor.next_u64() >> 11 < accuracy_bits) as u64) << i;
                }
            }
            while todo != 0 {
                let i = todo.trailing_zeros() as usize;
                todo &= todo - 1;
                if predictor.next_u64() >> 11 < accuracy_bits {
                    order[n] = i as u8;
                    n += 1;
                    named |= 1 << i;
                    continue;
                }
                let candidates = unused & !named;
                let wrong = candidates.count_ones() as u64;
                if wrong == 0 {
                    continue;
                }
                let j = nth_set_bit(candidates, predictor.below(wrong) as u32);
                order[n] = j as u8;
                n += 1;
                named |= 1 << j;
                wrong_guesses = true;
            }
            // Each named expert neither cached nor staged yet is fetched, one after another in
            // naming order; without a wrong guess that is increasing id order.
            let fetch_now = named & !(cached | staged);
            let fetched = fetch_now != 0;
            if wrong_guesses {
                for &j in &order[..n] {
                    if fetch_now >> j & 1 != 0 {
                        link += fetch;
                        self.staged[lo + j as usize] = link;
                    }
                }
            } else {
                let mut f = fetch_now;
                while f != 0 {
                    link += fetch;
                    self.staged[lo + f.trailing_zeros() as usize] = link;
                    f &= f - 1;
                }
            }
            staged |= fetch_now;
            count += fetch_now.count_ones() as u64;
            staged_masks[target * ranks + r] = staged;
            if fetched {
                *free = link;
            }
        }
        self.predictor = predictor;
        count
    }
}

/// The index of the `n`-th (from 0) set bit of `bits`, which has more than `n` set.
#[inline(always)]
fn nth_set_bit(mut bits: u64, n: u32) -> usize {
    for _ in 0..n {
        bits &= bits - 1;
    }
    bits.trailing_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::nth_set_bit;

    #[test]
    fn nth_set_bit_counts_from_the_lowest() {
        let bits = 0b1011_0100u64;
        assert_eq!([0, 1, 2, 3].map(|n| nth_set_bit(bits, n)), [2, 4, 5, 7]);
        assert_eq!(nth_set_bit(1 << 63, 0), 63);
    }
}
