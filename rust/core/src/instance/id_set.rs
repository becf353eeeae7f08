//! A set of request ids for the membership tests of one scheduling step (which running requests
//! are parked, in flight, or still running): open addressing with linear probing and a
//! multiplicative hash, reused from step to step so that it allocates only when it grows.

/// The id no request has; marks an empty slot.
const EMPTY: u32 = u32::MAX;

/// A reusable set of request ids (any `u32` but `u32::MAX`).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdSet {
    slots: Vec<u32>,
    shift: u32,
    len: usize,
    room: usize,
}

impl IdSet {
    /// Empties the set and makes room for `n` ids (at most half the slots are used).
    pub(crate) fn reset(&mut self, n: usize) {
        let want = (2 * n).next_power_of_two().max(16);
        if self.slots.len() < want || self.slots.len() > 8 * want {
            self.slots = vec![EMPTY; want];
        } else {
            self.slots.fill(EMPTY);
        }
        self.shift = 64 - self.slots.len().trailing_zeros();
        self.len = 0;
        self.room = n;
    }

    /// The empty set with room for every id of `ids`, which it then holds.
    pub(crate) fn fill_from(&mut self, ids: &[u32]) {
        self.reset(ids.len());
        for &id in ids {
            self.insert(id);
        }
    }

    /// The slot where the probe for `id` starts.
    #[inline]
    fn home(&self, id: u32) -> usize {
        ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Adds `id` (no effect if present). Panics beyond the room given to [`reset`](Self::reset).
    pub(crate) fn insert(&mut self, id: u32) {
        assert!(id != EMPTY, "u32::MAX is not a request id");
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        loop {
            let s = self.slots[i];
            if s == id {
                return;
            }
            if s == EMPTY {
                assert!(self.len < self.room, "IdSet holds at most the {} ids it was reset for", self.room);
                self.slots[i] = id;
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub(crate) fn contains(&self, id: u32) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        loop {
            let s = self.slots[i];
            if s == id {
                return true;
            }
            if s == EMPTY {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdSet;

    #[test]
    fn holds_exactly_the_ids_inserted_across_resets() {
        let mut s = IdSet::default();
        let ids: Vec<u32> = (0..1000).map(|i| i * 7 + (i % 3) * 100_000).collect();
        s.fill_from(&ids);
        assert!(ids.iter().all(|&i| s.contains(i)));
        assert_eq!((0..800_000u32).filter(|&i| s.contains(i)).count(), 1000);
        s.insert(ids[5]);
        // Reused for a small step: the old ids are gone.
        s.fill_from(&[3, 4]);
        assert!(s.contains(3) && s.contains(4) && !s.contains(ids[10]) && !s.contains(0));
        s.reset(0);
        assert!(!s.contains(3));
    }

    #[test]
    #[should_panic(expected = "at most")]
    fn refuses_more_ids_than_it_was_reset_for() {
        let mut s = IdSet::default();
        s.reset(2);
        for i in 0..3 {
            s.insert(i);
        }
    }
}
