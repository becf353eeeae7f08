//! The HBM cache of one MoE layer's experts on one GPU.
//!
//! An access to an expert is a hit when the expert is resident. On a miss the expert is fetched and
//! then admitted: LRU evicts the least recently used resident expert, LFU the least frequently used
//! (counting every access since the start, ties to the least recent), and a static cache keeps its
//! hot set and admits nothing (the fetched expert lives only in a staging buffer for its layer).

use super::config::CachePolicy;

/// One layer's expert cache.
#[derive(Debug, Clone)]
pub struct ExpertCache {
    policy: CachePolicy,
    capacity: usize,
    resident: Vec<bool>,
    last_use: Vec<u64>,
    uses: Vec<u64>,
    clock: u64,
    count: usize,
    /// The resident experts (any order), so that finding a victim scans the cache, not the layer.
    members: Vec<u16>,
    /// The resident flags as bits (expert `i` at bit `i`; only for up to 64 experts).
    mask: u64,
}

impl ExpertCache {
    /// A cache of `capacity` of `experts` experts. A static cache holds the `capacity` most
    /// `popular` experts (ties to the lower id); the others start empty.
    pub fn new(policy: CachePolicy, experts: u32, capacity: u32, popular: &[f64]) -> Self {
        let n = experts as usize;
        let capacity = (capacity as usize).min(n);
        let mut c = ExpertCache { policy, capacity, resident: vec![false; n], last_use: vec![0; n], uses: vec![0; n], clock: 0, count: 0, members: Vec::with_capacity(capacity), mask: 0 };
        if policy == CachePolicy::Static {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| popular[b].partial_cmp(&popular[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
            for &e in order.iter().take(capacity) {
                c.resident[e] = true;
                c.members.push(e as u16);
                c.mask |= bit(e);
            }
            c.count = capacity;
        }
        c
    }

    /// Whether `expert` is resident.
    #[inline]
    pub fn contains(&self, expert: u16) -> bool {
        self.resident[expert as usize]
    }

    /// Records an access to `expert`; returns whether it hit.
    #[inline]
    pub fn access(&mut self, expert: u16) -> bool {
        let e = expert as usize;
        self.clock += 1;
        self.last_use[e] = self.clock;
        self.uses[e] += 1;
        self.resident[e]
    }

    /// One layer's lookups of one iteration: each of `hits` accessed, then each of `misses`
    /// accessed and admitted, in order (the hits' clock kept in a register).
    #[inline]
    pub fn lookup(&mut self, hits: &[u16], misses: &[u16]) {
        let mut clock = self.clock;
        for &e in hits {
            clock += 1;
            self.last_use[e as usize] = clock;
            self.uses[e as usize] += 1;
        }
        self.clock = clock;
        for &e in misses {
            self.access(e);
            self.admit(e);
        }
    }

    /// The resident flags, by expert.
    #[inline]
    pub fn resident(&self) -> &[bool] {
        &self.resident
    }

    /// The resident experts as bits (expert `i` at bit `i`): exact for caches of up to 64 experts.
    #[inline]
    pub fn resident_mask(&self) -> u64 {
        self.mask
    }

    /// [`Self::lookup`] with the hits and misses as bits (expert `i` at bit `i`, up to 64
    /// experts), each set taken in increasing id order as the slices would list them.
    #[inline(always)]
    pub fn lookup_masks(&mut self, hits: u64, misses: u64) {
        let mut clock = self.clock;
        let mut h = hits;
        while h != 0 {
            let e = h.trailing_zeros() as usize;
            h &= h - 1;
            clock += 1;
            self.last_use[e] = clock;
            self.uses[e] += 1;
        }
        self.clock = clock;
        if self.policy == CachePolicy::Lru && self.capacity > 0 && self.count == self.capacity && misses.count_ones() as usize >= self.capacity {
            return self.admit_recent(misses);
        }
        let mut m = misses;
        while m != 0 {
            let e = m.trailing_zeros() as u16;
            m &= m - 1;
            self.access(e);
            self.admit(e);
        }
    }

    /// A full LRU cache's lookups of `misses` (at least `capacity` of them, none resident) in
    /// increasing id order: each is used and admitted, evicting the least recently used. Each
    /// admitted expert is the most recent when admitted, so the cache ends with the last
    /// `capacity` of them whatever it held: those are set directly, without a victim search.
    #[inline(always)]
    fn admit_recent(&mut self, misses: u64) {
        // The clock and each expert's last use, as `access` sets them (the use counts only
        // decide LFU victims; they are kept as well).
        let mut clock = self.clock;
        let mut m = misses;
        while m != 0 {
            let e = m.trailing_zeros() as usize;
            m &= m - 1;
            clock += 1;
            self.last_use[e] = clock;
            self.uses[e] += 1;
        }
        self.clock = clock;
        // A full cache has `capacity` members: each slot takes one of the kept experts.
        let mut keep = misses;
        let mut mask = 0u64;
        for slot in self.members.iter_mut() {
            self.resident[*slot as usize] = false;
            let e = 63 - keep.leading_zeros() as usize;
            keep &= !(1u64 << e);
            mask |= 1u64 << e;
            *slot = e as u16;
        }
        for slot in &self.members {
            self.resident[*slot as usize] = true;
        }
        self.mask = mask;
    }

    /// Admits a fetched `expert`, evicting one if full; returns the evicted expert.
    #[inline(always)]
    pub fn admit(&mut self, expert: u16) -> Option<u16> {
        let e = expert as usize;
        if self.resident[e] || self.capacity == 0 || self.policy == CachePolicy::Static {
            return None;
        }
        if self.count == self.capacity {
            // The least recently (LFU: least frequently, then least recently) used resident; ties
            // to the lowest id, as a scan over all experts in id order would pick.
            // (`e` is not resident, so it is not among the members.) One scan with the policy
            // chosen outside it; the first minimum wins, as `min_by_key` picks.
            let slot = match self.policy {
                CachePolicy::Lfu => self.victim_slot(|i| (self.uses[i], self.last_use[i], i)),
                _ => self.victim_slot(|i| (0, self.last_use[i], i)),
            };
            // The fetched expert takes the victim's slot (the members' order never decides: the
            // victim's key ends with its id, so it is unique).
            let victim = self.members[slot] as usize;
            self.members[slot] = expert;
            self.resident[victim] = false;
            self.resident[e] = true;
            self.mask = (self.mask & !bit(victim)) | bit(e);
            return Some(victim as u16);
        }
        self.resident[e] = true;
        self.mask |= bit(e);
        self.members.push(expert);
        self.count += 1;
        None
    }

    /// The member slot whose expert has the smallest `key` (a full cache is never empty).
    #[inline]
    fn victim_slot(&self, key: impl Fn(usize) -> (u64, u64, usize)) -> usize {
        let mut best = (0, key(self.members[0] as usize));
        for (s, &m) in self.members.iter().enumerate().skip(1) {
            let k = key(m as usize);
            if k < best.1 {
                best = (s, k);
            }
        }
        best.0
    }

    /// Experts resident now.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether nothing is resident.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Expert `e`'s bit in a resident mask (none past 64 experts, where the mask is not used).
#[inline(always)]
fn bit(e: usize) -> u64 {
    1u64.checked_shl(e as u32).unwrap_or(0)
}

/// Replays `accesses` (one layer's expert ids in order) through a fresh cache; returns the hits.
pub fn replay_hits(policy: CachePolicy, experts: u32, capacity: u32, popular: &[f64], accesses: &[u16]) -> u64 {
    let mut c = ExpertCache::new(policy, experts, capacity, popular);
    let mut hits = 0;
    for &e in accesses {
        if c.access(e) {
            hits += 1;
        } else {
            c.admit(e);
        }
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: [f64; 4] = [1.0; 4];

    #[test]
    fn lru_by_hand() {
        // Capacity 2: 0 m, 1 m, 0 h, 2 m (evicts 1), 1 m (evicts 0), 2 h, 0 m (evicts 1).
        let seq = [0, 1, 0, 2, 1, 2, 0];
        assert_eq!(replay_hits(CachePolicy::Lru, 4, 2, &FLAT, &seq), 2);
        let mut c = ExpertCache::new(CachePolicy::Lru, 4, 2, &FLAT);
        for e in [0, 1, 0] {
            if !c.access(e) {
                c.admit(e);
            }
        }
        c.access(2);
        assert_eq!(c.admit(2), Some(1));
        assert!(c.contains(0) && c.contains(2) && !c.contains(1));
    }

    #[test]
    fn lfu_by_hand() {
        // Capacity 2: 0 m, 0 h, 1 m, 2 m (evicts 1: one use against 0's two), 1 m (evicts 2: one
        // use against two), 0 h.
        let seq = [0, 0, 1, 2, 1, 0];
        assert_eq!(replay_hits(CachePolicy::Lfu, 4, 2, &FLAT, &seq), 2);
        // LRU on the same sequence: 0 m, 0 h, 1 m, 2 m (evicts 0), 1 h, 0 m -> 2 hits as well, but a
        // different resident set at the end.
        let mut lfu = ExpertCache::new(CachePolicy::Lfu, 4, 2, &FLAT);
        let mut lru = ExpertCache::new(CachePolicy::Lru, 4, 2, &FLAT);
        for c in [&mut lfu, &mut lru] {
            for &e in &seq {
                if !c.access(e) {
                    c.admit(e);
                }
            }
        }
        assert!(lfu.contains(0) && lfu.contains(1));
        assert!(lru.contains(1) && lru.contains(0));
        // Frequency beats recency: 0 0 0 1 2 1 -> LFU keeps 0 through the scan, LRU loses it.
        let seq = [0, 0, 0, 1, 2, 0];
        assert_eq!(replay_hits(CachePolicy::Lfu, 4, 2, &FLAT, &seq), 3);
        assert_eq!(replay_hits(CachePolicy::Lru, 4, 2, &FLAT, &seq), 2);
    }

    #[test]
    fn static_keeps_the_hot_set() {
        let pop = [0.1, 0.5, 0.3, 0.1];
        let c = ExpertCache::new(CachePolicy::Static, 4, 2, &pop);
        assert!(c.contains(1) && c.contains(2) && !c.contains(0));
        // Hits exactly on experts 1 and 2, whatever the order.
        let seq = [0, 1, 2, 3, 1, 0, 2, 2];
        assert_eq!(replay_hits(CachePolicy::Static, 4, 2, &pop, &seq), 5);
    }

    #[test]
    fn zero_capacity_never_hits() {
        assert_eq!(replay_hits(CachePolicy::Lru, 4, 0, &FLAT, &[1, 1, 1]), 0);
        assert!(ExpertCache::new(CachePolicy::Lfu, 4, 0, &FLAT).is_empty());
    }
}
