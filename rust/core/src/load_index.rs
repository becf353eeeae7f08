//! An incrementally maintained load index for routing: the instance with the fewest outstanding
//! tokens (lowest index on ties) in O(1), each load change in O(log n), so a load-aware router's
//! cost per arrival does not grow with the instance count (no per-arrival scan of every load).

/// A min-tournament tree over `len` slots keyed by (load, slot): every inner node holds the
/// winning slot of its subtree, the root the least-loaded slot overall. Left subtrees hold lower
/// slots, and ties go left, so the winner of equal loads is the lowest slot.
#[derive(Debug, Clone)]
pub struct LeastLoadedIndex {
    /// Load per slot.
    loads: Vec<u64>,
    /// Leaves in the tree (a power of two, at least `loads.len()`).
    leaves: usize,
    /// Winning slot per node (node 1 the root, leaves from `leaves`); [`EMPTY`] for padding leaves.
    winners: Vec<u32>,
}

/// The winner of a subtree with no slot (padding beyond the last slot).
const EMPTY: u32 = u32::MAX;

impl LeastLoadedIndex {
    /// An index of `len` slots, every load 0.
    pub fn new(len: usize) -> Self {
        let leaves = len.max(1).next_power_of_two();
        let mut winners = vec![EMPTY; 2 * leaves];
        for slot in 0..len {
            winners[leaves + slot] = slot as u32;
        }
        let mut index = LeastLoadedIndex { loads: vec![0; len], leaves, winners };
        for node in (1..leaves).rev() {
            index.winners[node] = index.better(index.winners[2 * node], index.winners[2 * node + 1]);
        }
        index
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.loads.len()
    }

    /// Whether the index has no slot.
    pub fn is_empty(&self) -> bool {
        self.loads.is_empty()
    }

    /// The load of `slot`.
    pub fn load(&self, slot: usize) -> u64 {
        self.loads[slot]
    }

    /// Sets the load of `slot`, replaying the matches on its path to the root (nothing when the
    /// load is unchanged). The replay stops at the first match whose winner stays another slot:
    /// nothing above it changed.
    pub fn set(&mut self, slot: usize, load: u64) {
        if self.loads[slot] == load {
            return;
        }
        self.loads[slot] = load;
        let mut node = (self.leaves + slot) / 2;
        while node >= 1 {
            let was = self.winners[node];
            let now = self.better(self.winners[2 * node], self.winners[2 * node + 1]);
            if now == was && was != slot as u32 {
                return;
            }
            self.winners[node] = now;
            node /= 2;
        }
    }

    /// The slot with the least load, the lowest slot on ties; None when the index is empty.
    pub fn least(&self) -> Option<usize> {
        let w = self.winners[1];
        (w != EMPTY).then_some(w as usize)
    }

    /// The winner of a match between slots `a` (left, lower) and `b` (right, higher).
    fn better(&self, a: u32, b: u32) -> u32 {
        if b == EMPTY || (a != EMPTY && self.loads[a as usize] <= self.loads[b as usize]) {
            a
        } else {
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer of a full scan: least load, lowest slot on ties.
    fn scan(loads: &[u64]) -> Option<usize> {
        (0..loads.len()).min_by_key(|&i| (loads[i], i))
    }

    #[test]
    fn least_is_the_lowest_slot_of_the_least_load() {
        let mut x = LeastLoadedIndex::new(5);
        assert_eq!(x.least(), Some(0));
        x.set(0, 30);
        x.set(1, 10);
        x.set(2, 30);
        x.set(3, 20);
        x.set(4, 10);
        assert_eq!(x.least(), Some(1));
        x.set(1, 11);
        assert_eq!(x.least(), Some(4));
        x.set(4, 40);
        assert_eq!(x.least(), Some(1));
        assert_eq!((x.len(), x.load(3)), (5, 20));
        assert_eq!(LeastLoadedIndex::new(0).least(), None);
    }

    #[test]
    fn agrees_with_a_scan_under_random_updates() {
        let mut seed: u64 = 7;
        let mut next = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for len in [1usize, 2, 3, 7, 8, 9, 100, 1024] {
            let mut x = LeastLoadedIndex::new(len);
            let mut loads = vec![0u64; len];
            for _ in 0..2000 {
                let slot = next(len as u64) as usize;
                // Few distinct loads, so ties are common.
                loads[slot] = next(6) * 1000;
                x.set(slot, loads[slot]);
                assert_eq!(x.least(), scan(&loads), "{len} slots, loads {loads:?}");
            }
        }
    }
}
