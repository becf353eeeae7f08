//! The paged KV-cache block manager of one instance.
//!
//! Blocks are interchangeable, so the manager only counts them: which request holds how many is
//! kept on the request. Capacity is never exceeded: every allocation is checked. With a prefix
//! cache ([`crate::prefix`]), blocks of cached prefixes belong to the cache; those no request
//! references count as free and are evicted (least recently used first) only when an allocation
//! needs them.

use crate::prefix::PrefixCache;
use crate::request::Request;

/// Counts free and used KV blocks.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    total: u32,
    used: u32,
    peak: u32,
    watermark: u32,
    cache: Option<PrefixCache>,
    cache_blocks: u32,
    reclaimable: u32,
}

impl BlockManager {
    /// A manager of `total` blocks of `block_size` tokens; admissions keep `watermark` blocks free
    /// (vLLM keeps 1% free so that running requests can still grow).
    pub fn new(total: u32, block_size: u32, watermark: u32) -> Self {
        BlockManager { block_size, total, used: 0, peak: 0, watermark, cache: None, cache_blocks: 0, reclaimable: 0 }
    }

    /// Keeps prompt prefixes of `tokens_per_entry` tokens (a multiple of the block size) cached.
    pub fn with_prefix_cache(mut self, tokens_per_entry: u32) -> Self {
        self.cache = Some(PrefixCache::new(tokens_per_entry, tokens_per_entry / self.block_size));
        self
    }

    /// The prefix cache, if enabled.
    pub fn prefix_cache(&self) -> Option<&PrefixCache> {
        self.cache.as_ref()
    }

    /// The prefix cache, mutably (to plug in an eviction policy or take its error).
    pub fn prefix_cache_mut(&mut self) -> Option<&mut PrefixCache> {
        self.cache.as_mut()
    }

    /// Own blocks `req` still needs to hold KV for `tokens` tokens (its shared prefix blocks count).
    pub fn growth(&self, req: &Request, tokens: u64) -> u32 {
        self.blocks_for(tokens).saturating_sub(req.blocks + req.shared_blocks)
    }

    /// Points a request about to start its prefill at the longest cached prefix of its prompt:
    /// it references those entries and skips computing their tokens. At least one token is always
    /// computed.
    pub fn attach(&mut self, req: &mut Request) {
        let Some(c) = self.cache.as_mut() else { return };
        if req.hashes.is_empty() || req.cache_refs > 0 || req.computed > 0 {
            return;
        }
        debug_assert_eq!(req.blocks, 0, "attach before any blocks are allocated");
        let tpe = c.tokens_per_entry();
        let most = ((req.known_tokens() - 1) / tpe) as usize;
        let hits = c.leading_hits(&req.hashes).min(most);
        c.lookup_tokens += req.prompt as u64;
        c.hit_tokens += hits as u64 * tpe as u64;
        let bpe = c.blocks_per_entry();
        for &h in &req.hashes[..hits] {
            if c.acquire(h) {
                self.reclaimable -= bpe;
            }
        }
        req.cache_refs = hits as u32;
        req.shared_blocks = hits as u32 * bpe;
        req.computed = hits as u32 * tpe;
    }

    /// Undoes [`attach`](Self::attach) for a request that could not be admitted after all.
    pub fn abandon(&mut self, req: &mut Request) {
        if let Some(c) = self.cache.as_mut() {
            if !req.hashes.is_empty() {
                c.lookup_tokens -= req.prompt as u64;
                c.hit_tokens -= req.cache_refs as u64 * c.tokens_per_entry() as u64;
            }
        }
        self.detach(req);
        req.computed = 0;
    }

    /// Drops `req`'s references to cached entries (when it finishes or is preempted by recompute).
    pub fn detach(&mut self, req: &mut Request) {
        let Some(c) = self.cache.as_mut() else { return };
        let bpe = c.blocks_per_entry();
        for &h in &req.hashes[..req.cache_refs as usize] {
            if c.release(h) {
                self.reclaimable += bpe;
            }
        }
        req.cache_refs = 0;
        req.shared_blocks = 0;
    }

    /// Publishes the whole entries of `req`'s prompt it has computed: their blocks move to the
    /// cache (or, when another request already cached the same prefix, are freed), and `req`
    /// references them.
    pub fn publish(&mut self, req: &mut Request) {
        let Some(c) = self.cache.as_mut() else { return };
        let tpe = c.tokens_per_entry();
        let bpe = c.blocks_per_entry();
        let whole = ((req.prompt.min(req.computed) / tpe) as usize).min(req.hashes.len());
        while (req.cache_refs as usize) < whole {
            let h = req.hashes[req.cache_refs as usize];
            if c.contains(h) {
                if c.acquire(h) {
                    self.reclaimable -= bpe;
                }
            } else {
                c.insert(h);
                self.cache_blocks += bpe;
            }
            self.used -= bpe;
            req.blocks -= bpe;
            req.cache_refs += 1;
            req.shared_blocks += bpe;
        }
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u64) -> u32 {
        tokens.div_ceil(self.block_size as u64) as u32
    }

    /// Free blocks (idle cached prefixes included: they are evicted when needed).
    pub fn free(&self) -> u32 {
        self.total - self.used - self.cache_blocks + self.reclaimable
    }

    /// Blocks in use: requests' own blocks and cached prefixes, idle ones included.
    pub fn used(&self) -> u32 {
        self.used + self.cache_blocks
    }

    /// Blocks held by requests themselves (not their shared prefixes).
    pub fn own_blocks(&self) -> u32 {
        self.used
    }

    /// Highest number of blocks ever in use.
    pub fn peak(&self) -> u32 {
        self.peak
    }

    /// Total blocks.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Blocks an admission must leave free.
    pub fn watermark(&self) -> u32 {
        self.watermark
    }

    /// Whether a new request needing `blocks` can be admitted (leaving the watermark free).
    pub fn can_admit(&self, blocks: u32) -> bool {
        self.free() as u64 >= blocks as u64 + self.watermark as u64
    }

    /// Whether `blocks` more can be handed to a running request.
    pub fn can_grow(&self, blocks: u32) -> bool {
        self.free() >= blocks
    }

    /// Takes `blocks` blocks, evicting idle cached prefixes if needed; the caller has checked
    /// they are free.
    pub fn allocate(&mut self, blocks: u32) {
        assert!(blocks <= self.free(), "KV allocation beyond capacity: {blocks} > {} free", self.free());
        while self.total - self.used - self.cache_blocks < blocks {
            let c = self.cache.as_mut().expect("only cached prefixes can be reclaimed");
            let bpe = c.blocks_per_entry();
            assert!(c.evict_one(), "free blocks were counted that no eviction can provide");
            self.cache_blocks -= bpe;
            self.reclaimable -= bpe;
        }
        self.used += blocks;
        self.peak = self.peak.max(self.used + self.cache_blocks);
    }

    /// Returns `blocks` blocks.
    pub fn release(&mut self, blocks: u32) {
        assert!(blocks <= self.used, "releasing {blocks} blocks with only {} in use", self.used);
        self.used -= blocks;
    }
}
