//! The prefix cache: KV blocks of prompt prefixes kept after use and shared by later requests with
//! the same prefix (vLLM's automatic prefix caching), keyed by block hashes.
//!
//! A request carries the hashes of its prompt's blocks of `tokens_per_entry` tokens (a hash chains
//! everything before it, so equal hashes mean equal prefixes, as in Mooncake's `hash_ids`). Once its
//! prefill has computed whole entries they are published: their KV blocks move from the request to
//! the cache. A later request referencing the leading entries of its hash list skips computing them.
//! Entries nobody references stay cached but count as free memory; they are evicted least recently
//! used first when an allocation needs their blocks.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy)]
struct Entry {
    refs: u32,
    tick: u64,
}

/// Block-hash prefix cache with LRU eviction of unreferenced entries.
#[derive(Debug, Clone)]
pub struct PrefixCache {
    tokens_per_entry: u32,
    blocks_per_entry: u32,
    entries: HashMap<u64, Entry>,
    idle: BTreeMap<u64, u64>,
    tick: u64,
    /// Prompt tokens looked up on admission.
    pub lookup_tokens: u64,
    /// Prompt tokens found cached on admission.
    pub hit_tokens: u64,
    /// Entries evicted.
    pub evictions: u64,
}

impl PrefixCache {
    /// A cache of entries of `tokens_per_entry` tokens, each `blocks_per_entry` KV blocks.
    pub fn new(tokens_per_entry: u32, blocks_per_entry: u32) -> Self {
        PrefixCache { tokens_per_entry, blocks_per_entry, entries: HashMap::new(), idle: BTreeMap::new(), tick: 0, lookup_tokens: 0, hit_tokens: 0, evictions: 0 }
    }

    /// Tokens one entry covers.
    pub fn tokens_per_entry(&self) -> u32 {
        self.tokens_per_entry
    }

    /// KV blocks one entry holds.
    pub fn blocks_per_entry(&self) -> u32 {
        self.blocks_per_entry
    }

    /// Entries cached (referenced or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many leading hashes of `hashes` are cached.
    pub fn leading_hits(&self, hashes: &[u64]) -> usize {
        hashes.iter().take_while(|h| self.entries.contains_key(h)).count()
    }

    /// Whether `hash` is cached.
    pub fn contains(&self, hash: u64) -> bool {
        self.entries.contains_key(&hash)
    }

    /// Takes a reference on a cached entry; returns true if it was idle (its blocks stop being reclaimable).
    pub fn acquire(&mut self, hash: u64) -> bool {
        let e = self.entries.get_mut(&hash).expect("acquire a cached entry");
        let was_idle = e.refs == 0;
        if was_idle {
            self.idle.remove(&e.tick);
        }
        e.refs += 1;
        was_idle
    }

    /// Adds a new entry referenced once.
    pub fn insert(&mut self, hash: u64) {
        self.tick += 1;
        self.entries.insert(hash, Entry { refs: 1, tick: self.tick });
    }

    /// Drops a reference; returns true if the entry became idle (its blocks become reclaimable).
    pub fn release(&mut self, hash: u64) -> bool {
        self.tick += 1;
        let e = self.entries.get_mut(&hash).expect("release a cached entry");
        e.refs -= 1;
        e.tick = self.tick;
        if e.refs == 0 {
            self.idle.insert(self.tick, hash);
            return true;
        }
        false
    }

    /// Evicts the least recently used idle entry; returns whether there was one.
    pub fn evict_one(&mut self) -> bool {
        let Some((_, hash)) = self.idle.pop_first() else { return false };
        self.entries.remove(&hash);
        self.evictions += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_released_idle_entry() {
        let mut c = PrefixCache::new(16, 1);
        for h in [1, 2, 3] {
            c.insert(h);
        }
        assert!(c.release(2));
        assert!(c.release(1));
        assert!(c.evict_one() && !c.contains(2), "2 was released first");
        assert!(c.contains(1) && c.contains(3));
        assert!(c.evict_one() && !c.contains(1));
        assert!(!c.evict_one(), "3 is still referenced");
        assert_eq!(c.leading_hits(&[3, 1, 3]), 1);
        assert!(!c.acquire(3));
        assert_eq!(c.evictions, 2);
    }
}
