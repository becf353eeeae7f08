//! The per-layer timeline of one iteration: expert caches, on-demand fetches and prefetches.
//!
//! An iteration runs the MoE layers in order. Each layer first runs its non-expert operators
//! (attention, projections, router), then its experts as one fused grouped GEMM, which needs every
//! expert the layer's tokens chose on the GPU. A needed expert is a hit if cached in HBM, a
//! prefetch hit if a prefetch brought it, and a miss otherwise: the miss is fetched over the GPU's
//! link (host link, after the drive for flash) once the router has run, and the layer's experts
//! start when the last of them arrives. Fetches queue first-come first-served on the link.
//! With prefetching, when layer `l`'s router runs the predictor names the experts of layer
//! `l + lead` and the ones not cached are fetched behind `l`'s own misses, overlapping compute.
//! The layer's stall is how much later its experts finish than they would with every expert in HBM.

use super::runtime::{ExpertRuntime, TokenSpan};
use super::stats::ExpertIteration;
use crate::cost::CostModel;

/// The timeline's working buffers, reused from iteration to iteration (no allocation per layer).
#[derive(Debug, Clone, Default)]
pub struct TimelineScratch {
    /// Per GPU: when its fetch link is next free.
    pub(super) link_free: Vec<f64>,
    /// Per GPU: this layer's token-expert pairs.
    pub(super) rank_pairs: Vec<f64>,
    /// Per expert of one GPU: whether it was cached when the layer looked.
    hit: Vec<bool>,
    /// This layer's cached experts on one GPU.
    hits: Vec<u16>,
    /// This layer's fetched experts on one GPU.
    misses: Vec<u16>,
    /// The experts the predictor names.
    named: Vec<usize>,
    /// Per touched-expert count: the token-expert pairs (bits) and seconds of the expert kernel
    /// timed this iteration (layers mostly repeat a few); `u64::MAX`: none yet.
    pub(super) kernel: Vec<(u64, f64)>,
    /// Indices into `staged` that this iteration's prefetches set (reset at the next iteration).
    pub(super) staged_set: Vec<u32>,
    /// Per layer and GPU: the used experts as bits (the bitmask timeline, `timeline_masks.rs`).
    pub(super) used_masks: Vec<u64>,
    /// Per layer and GPU: the experts this iteration's prefetches staged, as bits.
    pub(super) staged_masks: Vec<u64>,
    /// Per layer: the used experts as bits, from per-iteration routing (with at most 64 experts).
    pub(super) route_masks: Vec<u64>,
    /// The token-expert pairs of every layer, from per-iteration routing (whole).
    pub(super) route_pairs: f64,
}

impl ExpertRuntime {
    /// Runs one iteration over `spans`: `fixed` seconds of non-layer work plus, per MoE layer,
    /// `base` seconds of non-expert work and the experts `cost` charges for the routed tokens.
    pub fn iteration(&mut self, spans: &[TokenSpan], cost: &CostModel, base: f64, fixed: f64) -> ExpertIteration {
        self.route(spans);
        if self.masks_apply() {
            return self.iteration_masked(cost, base, fixed);
        }
        self.stats.iterations += 1;
        let (e, per_gpu) = (self.experts as usize, self.residency.experts_per_gpu as usize);
        let offloaded = self.cfg.offloaded();
        // Per-iteration routing counts whole pairs: their sums are exact in any order.
        let whole_counts = self.aggregate.is_some();
        let fetch = self.fetch_seconds();
        let eb = self.residency.expert_bytes;
        let lead = self.cfg.prefetch.as_ref().map(|p| (p.lead_layers, p.accuracy));
        let mut link_free = std::mem::take(&mut self.work.link_free);
        link_free.clear();
        link_free.resize(self.ranks as usize, 0.0);
        let mut rank_pairs = std::mem::take(&mut self.work.rank_pairs);
        let (mut t, mut stall) = (0.0f64, 0.0f64);
        let (mut demand, mut prefetched, mut wasted) = (0.0f64, 0.0f64, 0.0f64);
        // Counters kept in locals through the layer loop, added to the stats once.
        let (mut activated, mut lookups, mut hit_count, mut miss_count, mut prefetch_hits) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for &i in &self.work.staged_set {
            self.staged[i as usize] = -1.0;
        }
        self.work.staged_set.clear();
        // The cost model is only fixed within one iteration: kernel times are kept for this one.
        self.work.kernel.clear();
        self.work.kernel.resize(per_gpu + 1, (u64::MAX, 0.0));
        for l in 0..self.layers as usize {
            let router_t = t + base;
            let (mut end, mut ideal) = (router_t, router_t);
            rank_pairs.clear();
            for (r, free) in link_free.iter_mut().enumerate() {
                let lo = l * e + r * per_gpu;
                let counts = &self.counts[lo..lo + per_gpu];
                let (pairs, touched) = if whole_counts { whole_sum(counts) } else { in_order_sum(counts) };
                rank_pairs.push(pairs);
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
                let mut ready = router_t;
                if offloaded {
                    let cache = &mut self.caches[r];
                    // Cached experts are looked up first, so that admitting this layer's fetched
                    // experts cannot evict one the layer still needs.
                    let (hit, hits, misses) = (&mut self.work.hit, &mut self.work.hits, &mut self.work.misses);
                    // A built-in cache's flags are read in the loop below; a plugged policy is
                    // asked once for the layer's used-and-resident experts.
                    let builtin = cache.builtin_layer(l as u32).map(|b| b.resident());
                    if builtin.is_none() {
                        cache.used_and_resident(l as u32, counts, hit);
                        assert_eq!(hit.len(), per_gpu, "an expert cache policy answers for every expert of its GPU");
                    }
                    // Hits and misses are written at their counts' places and the counts advance
                    // by flag (no branch on the random used/cached flags); a slot is written
                    // before it can be past an expert, so `per_gpu` slots suffice.
                    hits.resize(per_gpu, 0);
                    misses.resize(per_gpu, 0);
                    let (hits, misses) = (&mut hits[..per_gpu], &mut misses[..per_gpu]);
                    let (mut nh, mut nm) = (0, 0);
                    // The link's clock through this layer's fetches: the first starts at
                    // max(free, router), each later one when the previous ends (which is past the
                    // router already), so after the first max the clock only adds `fetch`.
                    let mut link = free.max(router_t);
                    let mut fetches = 0u64;
                    let mut staged_ready = ready;
                    let staged_row = &self.staged[lo..lo + per_gpu];
                    for (i, (&c, &staged)) in counts.iter().zip(staged_row).enumerate() {
                        let used = c != 0.0;
                        let cached = match builtin {
                            Some(resident) => resident[i],
                            None => hit[i],
                        };
                        // Adding +0.0 leaves `wasted` as it is.
                        wasted += if !used && staged >= 0.0 { eb } else { 0.0 };
                        hits[nh] = i as u16;
                        nh += (used && cached) as usize;
                        let missed = used && !cached;
                        misses[nm] = i as u16;
                        nm += missed as usize;
                        // A miss waits for its prefetch if one was staged, else is fetched now:
                        // selected, not branched on (adding +0.0 or taking `ready` again changes
                        // nothing).
                        let prefetch_hit = missed && staged >= 0.0;
                        let fetched = missed && staged < 0.0;
                        prefetch_hits += prefetch_hit as u64;
                        fetches += fetched as u64;
                        link = if fetched { link + fetch } else { link };
                        staged_ready = later(staged_ready, if prefetch_hit { staged } else { staged_ready });
                        demand += if fetched { eb } else { 0.0 };
                    }
                    // The layer waits for its last fetch (the link clock only grows) and its
                    // staged prefetches: max is exact, so the order it is taken in is free.
                    ready = staged_ready;
                    if fetches > 0 {
                        *free = link;
                        ready = later(ready, link);
                    }
                    miss_count += fetches;
                    lookups += (nh + nm) as u64;
                    hit_count += nh as u64;
                    if let Err(err) = cache.lookup(l as u32, &hits[..nh], &misses[..nm]) {
                        self.error.get_or_insert(err);
                    }
                }
                end = end.max(ready + compute);
                ideal = ideal.max(router_t + compute);
            }
            if self.ranks > 1 {
                let mean = rank_pairs.iter().sum::<f64>() / self.ranks as f64;
                if mean > 0.0 {
                    self.stats.imbalance_sum += rank_pairs.iter().cloned().fold(0.0, f64::max) / mean;
                    self.stats.imbalance_layers += 1;
                }
            }
            if let (true, Some((d, accuracy))) = (offloaded, lead) {
                let target = l + d as usize;
                if target < self.layers as usize {
                    prefetched += self.prefetch(target, router_t, accuracy, fetch, &mut link_free);
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
        let bytes = demand + prefetched;
        self.stats.demand_bytes += demand.round() as u64;
        self.stats.prefetch_bytes += prefetched.round() as u64;
        self.stats.wasted_prefetch_bytes += wasted.round() as u64;
        ExpertIteration { seconds: fixed + t, stall_seconds: stall, fetch_bytes: bytes.round() as u64 }
    }

    /// Issues at `now` the prefetches of layer `target`: the predictor names each expert the layer
    /// will use with probability `accuracy`, otherwise a wrong one of the same GPU. Returns bytes.
    fn prefetch(&mut self, target: usize, now: f64, accuracy: f64, fetch: f64, link_free: &mut [f64]) -> f64 {
        let (e, per_gpu) = (self.experts as usize, self.residency.experts_per_gpu as usize);
        let mut bytes = 0.0;
        let mut named = std::mem::take(&mut self.work.named);
        // The predictor's stream in a local (kept in registers, not stored back per draw).
        let mut predictor = self.predictor.clone();
        // A draw `m / 2^53` (`m` its 53 random bits, both exact in binary) is below `accuracy`
        // exactly when `m` is below `ceil(accuracy * 2^53)`.
        let accuracy_bits = (accuracy * (1u64 << 53) as f64).ceil() as u64;
        let mut staged_set = std::mem::take(&mut self.work.staged_set);
        let eb = self.residency.expert_bytes;
        let mut staged = std::mem::take(&mut self.staged);
        for (r, free) in link_free.iter_mut().enumerate() {
            let lo = target * e + r * per_gpu;
            let counts = &self.counts[lo..lo + per_gpu];
            named.clear();
            let cache = &self.caches[r];
            let builtin = cache.builtin_layer(target as u32);
            // As for demand fetches: after the first max the link clock only adds `fetch`.
            let mut link = free.max(now);
            let mut fetched = false;
            // Unused experts not named yet, counted at the first wrong guess: a wrong guess names
            // one of them, a right one a used expert, so each wrong guess takes one off.
            let mut unnamed_unused: Option<usize> = None;
            for i in 0..per_gpu {
                if counts[i] == 0.0 {
                    continue;
                }
                // `next_f64() < accuracy` on the integer draw (see `accuracy_bits`).
                let j = if predictor.next_u64() >> 11 < accuracy_bits {
                    i
                } else {
                    // A wrong guess: uniformly one of the unused experts not named yet.
                    let is_wrong = |j: &usize| counts[*j] == 0.0 && !named.contains(j);
                    let wrong = *unnamed_unused.get_or_insert_with(|| (0..per_gpu).filter(is_wrong).count());
                    if wrong == 0 {
                        continue;
                    }
                    unnamed_unused = Some(wrong - 1);
                    let pick = predictor.below(wrong as u64) as usize;
                    (0..per_gpu).filter(is_wrong).nth(pick).expect("pick < wrong")
                };
                named.push(j);
                // Each named expert is staged as soon as it is named (the naming reads only the
                // counts and the names, so this is the order and the clock of staging them all
                // after naming).
                let cached = match builtin {
                    Some(b) => b.contains(j as u16),
                    None => cache.contains(target as u32, j as u16),
                };
                if cached || staged[lo + j] >= 0.0 {
                    continue;
                }
                link += fetch;
                fetched = true;
                staged[lo + j] = link;
                staged_set.push((lo + j) as u32);
                bytes += eb;
            }
            if fetched {
                *free = link;
            }
        }
        self.staged = staged;
        self.predictor = predictor;
        self.work.staged_set = staged_set;
        self.work.named = named;
        bytes
    }
}

/// The later of two instants (`f64::max` without its NaN handling, which the times never need).
#[inline(always)]
pub(super) fn later(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// The pairs (summed in order, as weighted counts need) and the touched experts of `counts`.
#[inline]
pub(super) fn in_order_sum(counts: &[f64]) -> (f64, usize) {
    let (mut pairs, mut touched) = (0.0f64, 0usize);
    for &c in counts {
        pairs += c;
        touched += (c > 0.0) as usize;
    }
    (pairs, touched)
}

/// [`in_order_sum`] for whole-number counts (below 2^53 in all): every partial sum is exact, so
/// four running sums give the same total without one long chain of dependent additions.
#[inline]
pub(super) fn whole_sum(counts: &[f64]) -> (f64, usize) {
    let (mut lanes, mut touched) = ([0.0f64; 4], 0usize);
    let mut chunks = counts.chunks_exact(4);
    for c in &mut chunks {
        for j in 0..4 {
            lanes[j] += c[j];
            touched += (c[j] > 0.0) as usize;
        }
    }
    for &c in chunks.remainder() {
        lanes[0] += c;
        touched += (c > 0.0) as usize;
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]), touched)
}
