//! The prefix cache: KV blocks of prompt prefixes kept after use and shared by later requests with
//! the same prefix (vLLM's automatic prefix caching), keyed by block hashes.
//!
//! A request carries the hashes of its prompt's blocks of `tokens_per_entry` tokens (a hash chains
//! everything before it, so equal hashes mean equal prefixes, as in Mooncake's `hash_ids`). Once its
//! prefill has computed whole entries (with `vllm-v1`: once the step computing them is scheduled)
//! they are published: their KV blocks move from the request to the cache. A later request
//! referencing the leading entries of its hash list skips computing them.
//! Entries nobody references stay cached but count as free memory; they are evicted least recently
//! used first when an allocation needs their blocks — or in the order a plugged-in
//! [`PrefixEvictor`] (a user's policy) chooses.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy)]
struct Entry {
    refs: u32,
    tick: u64,
    hits: u32,
}

/// An idle (unreferenced) cache entry as an eviction policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleEntry {
    /// The entry's block hash.
    pub hash: u64,
    /// When it was last released (a counter of cache events; larger is more recent).
    pub last_use: u64,
    /// Requests that found it cached.
    pub hits: u32,
}

/// Chooses which idle entry to evict.
pub trait PrefixEvictor: Send + Sync {
    /// The hash of the entry to evict among `idle` (least recently released first).
    fn victim(&mut self, idle: &[IdleEntry]) -> Result<u64>;

    /// What to call the policy in an error about its answer.
    fn describe(&self) -> String {
        "the prefix cache policy".into()
    }
}

/// A shared handle on a plugged-in evictor and the first error it met.
#[derive(Clone)]
struct Plugged {
    evictor: Arc<Mutex<Box<dyn PrefixEvictor>>>,
    error: Arc<Mutex<Option<Error>>>,
}

impl std::fmt::Debug for Plugged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plugged(PrefixEvictor)")
    }
}

/// Block-hash prefix cache with LRU eviction of unreferenced entries (or a plugged-in policy's).
#[derive(Debug, Clone)]
pub struct PrefixCache {
    tokens_per_entry: u32,
    blocks_per_entry: u32,
    entries: HashMap<u64, Entry>,
    idle: BTreeMap<u64, u64>,
    tick: u64,
    plugged: Option<Plugged>,
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
        PrefixCache { tokens_per_entry, blocks_per_entry, entries: HashMap::new(), idle: BTreeMap::new(), tick: 0, plugged: None, lookup_tokens: 0, hit_tokens: 0, evictions: 0 }
    }

    /// Evicts in the order `evictor` chooses instead of LRU.
    pub fn set_evictor(&mut self, evictor: Box<dyn PrefixEvictor>) {
        self.plugged = Some(Plugged { evictor: Arc::new(Mutex::new(evictor)), error: Arc::new(Mutex::new(None)) });
    }

    /// The first error the plugged-in evictor met (the cache fell back to LRU from then on).
    pub fn take_error(&mut self) -> Option<Error> {
        self.plugged.as_ref().and_then(|p| p.error.lock().expect("evictor error").take())
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
        e.hits += 1;
        was_idle
    }

    /// Adds a new entry referenced once.
    pub fn insert(&mut self, hash: u64) {
        self.tick += 1;
        self.entries.insert(hash, Entry { refs: 1, tick: self.tick, hits: 0 });
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

    /// Evicts one idle entry (the least recently used, or the plugged-in policy's choice); returns
    /// whether there was one.
    pub fn evict_one(&mut self) -> bool {
        if self.idle.is_empty() {
            return false;
        }
        let chosen = self.plugged.as_ref().and_then(|p| {
            let mut error = p.error.lock().expect("evictor error");
            if error.is_some() {
                return None;
            }
            let idle: Vec<IdleEntry> = self.idle.iter().map(|(&tick, &hash)| IdleEntry { hash, last_use: tick, hits: self.entries[&hash].hits }).collect();
            let mut evictor = p.evictor.lock().expect("evictor");
            match evictor.victim(&idle) {
                Ok(h) if self.entries.get(&h).is_some_and(|e| e.refs == 0) => Some(h),
                Ok(h) => {
                    *error = Some(Error::Policy { message: format!("{}: victim() chose to evict {h}, which is not an idle cached entry", evictor.describe()) });
                    None
                }
                Err(e) => {
                    *error = Some(e);
                    None
                }
            }
        });
        let hash = match chosen {
            Some(h) => {
                let tick = self.entries[&h].tick;
                self.idle.remove(&tick);
                h
            }
            None => self.idle.pop_first().expect("idle is not empty").1,
        };
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

    struct MostHits;
    impl PrefixEvictor for MostHits {
        fn victim(&mut self, idle: &[IdleEntry]) -> Result<u64> {
            Ok(idle.iter().max_by_key(|e| (e.hits, e.last_use)).expect("idle entries").hash)
        }
    }

    #[test]
    fn a_plugged_evictor_chooses_the_victim() {
        let mut c = PrefixCache::new(16, 1);
        c.set_evictor(Box::new(MostHits));
        for h in [1, 2] {
            c.insert(h);
        }
        c.release(1);
        c.acquire(1);
        c.release(1);
        c.release(2);
        // LRU would evict 1 (released first... then again); the plugged policy evicts the most hit.
        assert!(c.evict_one() && !c.contains(1) && c.contains(2));
        assert!(c.take_error().is_none());
    }

    struct Wrong;
    impl PrefixEvictor for Wrong {
        fn victim(&mut self, _idle: &[IdleEntry]) -> Result<u64> {
            Ok(999)
        }
    }

    #[test]
    fn a_bad_choice_is_an_error_and_lru_takes_over() {
        let mut c = PrefixCache::new(16, 1);
        c.set_evictor(Box::new(Wrong));
        c.insert(1);
        c.release(1);
        assert!(c.evict_one() && !c.contains(1));
        assert!(c.take_error().expect("an error").to_string().contains("999"));
    }
}
