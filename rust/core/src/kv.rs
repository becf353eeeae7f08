//! The paged KV-cache block manager of one instance.
//!
//! Blocks are interchangeable, so the manager only counts them: which request holds how many is
//! kept on the request. Capacity is never exceeded: every allocation is checked. With a prefix
//! cache ([`crate::prefix`]), blocks of cached prefixes belong to the cache; those no request
//! references count as free and are evicted (least recently used first) only when an allocation
//! needs them. A sliding-window model's request holds at most the blocks its window spans (as
//! vLLM's block manager reuses them cyclically), unless prefixes are cached (then every block is
//! kept, the cache needing them whole).

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
    window_blocks: Option<u32>,
}

impl BlockManager {
    /// A manager of `total` blocks of `block_size` tokens; admissions keep `watermark` blocks free
    /// (vLLM keeps 1% free so that running requests can still grow).
    pub fn new(total: u32, block_size: u32, watermark: u32) -> Self {
        BlockManager { block_size, total, used: 0, peak: 0, watermark, cache: None, cache_blocks: 0, reclaimable: 0, window_blocks: None }
    }

    /// Bounds a request's blocks to those a sliding attention window of `window` tokens spans:
    /// ceil(window / block_size) + 1, the window not being aligned to blocks (vLLM's
    /// `max_block_sliding_window`). `None`: the whole context.
    pub fn with_attention_window(mut self, window: Option<u32>) -> Self {
        self.window_blocks = window.map(|w| w.div_ceil(self.block_size) + 1);
        self
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

    /// Whether one more decode token of `req` (its KV at `computed + 1` tokens) fits in the blocks
    /// it already holds (own and shared), i.e. `growth(req, computed + 1)` is 0 without computing
    /// it: the decode does not cross a block boundary.
    #[inline]
    pub fn decode_fits(&self, req: &Request) -> bool {
        (req.computed as u64) < (req.blocks as u64 + req.shared_blocks as u64) * self.block_size as u64
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
        // Tail first, as vLLM frees a request's blocks ("so that the tail blocks are evicted
        // first"): the prompt's first entry, which every match starts from, is the last to go.
        for &h in req.hashes[..req.cache_refs as usize].iter().rev() {
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
        self.publish_upto(req, req.computed);
    }

    /// [`publish`](Self::publish) of the whole entries of `req`'s prompt within its first
    /// `tokens` tokens, computed or being computed in this step (vLLM v1 caches a block as soon
    /// as it is allocated for tokens the step computes).
    pub fn publish_upto(&mut self, req: &mut Request, tokens: u32) {
        let Some(c) = self.cache.as_mut() else { return };
        let tpe = c.tokens_per_entry();
        let bpe = c.blocks_per_entry();
        let whole = ((req.prompt.min(tokens) / tpe) as usize).min(req.hashes.len());
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

    /// Blocks needed to hold the KV of a request of `tokens` tokens: all of them, or (sliding
    /// window, no prefix cache) at most the window's blocks.
    pub fn blocks_for(&self, tokens: u64) -> u32 {
        // Block sizes are powers of two in practice: a shift instead of a division per decode.
        let bs = self.block_size as u64;
        let all = if bs.is_power_of_two() { (tokens.saturating_add(bs - 1) >> bs.trailing_zeros()) as u32 } else { tokens.div_ceil(bs) as u32 };
        match self.window_blocks {
            Some(w) if self.cache.is_none() => all.min(w),
            _ => all,
        }
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

    /// Whether every decode crossing a block boundary takes exactly one more block: no prefix
    /// cache (shared blocks, evictions) and no sliding window (no growth past it).
    pub fn grows_by_block(&self) -> bool {
        self.cache.is_none() && self.window_blocks.is_none()
    }

    /// Whether `blocks` more can be handed to a running request.
    pub fn can_grow(&self, blocks: u32) -> bool {
        self.free() >= blocks
    }

    /// Takes `blocks` blocks, evicting idle cached prefixes if needed; the caller has checked
    /// they are free.
    #[inline]
    pub fn allocate(&mut self, blocks: u32) {
        if blocks == 0 {
            // Most decode steps stay inside their last block: only the peak can move (cached
            // prefixes may have grown since).
            self.peak = self.peak.max(self.used + self.cache_blocks);
            return;
        }
        self.allocate_blocks(blocks);
    }

    /// `n` allocations of one block each, in one step where no cached prefix must be evicted for
    /// them (the same counts and peak as `n` calls of `allocate(1)`: the blocks in use only grow).
    pub fn allocate_each(&mut self, n: u32) {
        if n > 0 && n <= self.total - self.used - self.cache_blocks {
            self.used += n;
            self.peak = self.peak.max(self.used + self.cache_blocks);
            return;
        }
        for _ in 0..n {
            self.allocate(1);
        }
    }

    /// [`allocate`](Self::allocate) of at least one block.
    fn allocate_blocks(&mut self, blocks: u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_for_rounds_tokens_up_to_whole_blocks() {
        let kv = BlockManager::new(100, 16, 1);
        assert_eq!([0, 1, 15, 16, 17, 32, 33].map(|t| kv.blocks_for(t)), [0, 1, 1, 1, 2, 2, 3]);
        assert_eq!(kv.block_size(), 16);
    }

    #[test]
    fn admissions_leave_the_watermark_free_growth_may_use_it() {
        let mut kv = BlockManager::new(100, 16, 1);
        assert_eq!(kv.free(), 100);
        assert!(kv.can_admit(99));
        assert!(!kv.can_admit(100), "100 blocks + 1 watermark > 100 free");
        assert!(kv.can_grow(100));
        kv.allocate(90);
        assert!(kv.can_admit(9) && !kv.can_admit(10));
        assert!(kv.can_grow(10) && !kv.can_grow(11));
    }

    #[test]
    fn allocation_and_release_conserve_blocks() {
        let mut kv = BlockManager::new(100, 16, 1);
        kv.allocate(30);
        kv.allocate(20);
        assert_eq!((kv.used(), kv.free(), kv.peak()), (50, 50, 50));
        kv.release(30);
        assert_eq!((kv.used(), kv.free(), kv.peak()), (20, 80, 50), "the peak stays");
        kv.allocate(70);
        assert_eq!((kv.used(), kv.free(), kv.peak()), (90, 10, 90));
        kv.release(90);
        assert_eq!((kv.used(), kv.free(), kv.own_blocks(), kv.total()), (0, 100, 0, 100));
    }

    #[test]
    #[should_panic(expected = "KV allocation beyond capacity")]
    fn allocating_more_than_is_free_panics() {
        let mut kv = BlockManager::new(10, 16, 0);
        kv.allocate(11);
    }

    #[test]
    #[should_panic(expected = "releasing 3 blocks with only 2 in use")]
    fn releasing_more_than_is_used_panics() {
        let mut kv = BlockManager::new(10, 16, 0);
        kv.allocate(2);
        kv.release(3);
    }

    #[test]
    fn growth_counts_only_blocks_the_request_lacks() {
        let kv = BlockManager::new(100, 16, 1);
        let mut r = Request::new(0, 40, 10);
        r.blocks = 2;
        assert_eq!(kv.growth(&r, 32), 0);
        assert_eq!(kv.growth(&r, 33), 1);
        r.shared_blocks = 1;
        assert_eq!(kv.growth(&r, 64), 1, "4 blocks for 64 tokens, 3 held (2 own, 1 shared)");
    }

    #[test]
    fn published_prefixes_move_to_the_cache_and_are_evicted_only_when_needed() {
        // 32-token entries of 2 blocks each.
        let mut kv = BlockManager::new(100, 16, 0).with_prefix_cache(32);
        let mut r = Request::new(0, 64, 4);
        r.hashes = vec![7, 8].into();
        kv.allocate(4);
        r.blocks = 4;
        r.computed = 64;
        kv.publish(&mut r);
        // The request's 4 blocks now belong to the cache, which it references.
        assert_eq!((r.blocks, r.shared_blocks, r.cache_refs), (0, 4, 2));
        assert_eq!((kv.own_blocks(), kv.used(), kv.free()), (0, 4, 96));
        // Released by the request: idle cached blocks count as free but stay cached.
        kv.detach(&mut r);
        assert_eq!((kv.used(), kv.free()), (4, 100));
        assert_eq!(kv.prefix_cache().unwrap().leading_hits(&[7, 8]), 2);
        // A second request with the same prompt finds both entries.
        let mut s = Request::new(0, 64, 4);
        s.hashes = vec![7, 8].into();
        kv.attach(&mut s);
        assert_eq!((s.cache_refs, s.shared_blocks, s.computed), (1, 2, 32), "at least one token is computed: the last entry is not used");
        kv.detach(&mut s);
        // Allocating everything evicts both idle entries.
        kv.allocate(100);
        assert_eq!((kv.used(), kv.free(), kv.peak()), (100, 0, 100));
        assert_eq!(kv.prefix_cache().unwrap().leading_hits(&[7, 8]), 0);
    }

    #[test]
    fn a_finished_prompt_is_evicted_tail_first() {
        // 16-token entries of one block: a 48-token prompt [1, 2, 3] published and released,
        // then one block evicted. vLLM frees a request's blocks tail first, so entry 3 goes and a
        // later prompt [1, 2, 3] still matches [1, 2] (evicting entry 1 first left nothing usable).
        let mut kv = BlockManager::new(4, 16, 0).with_prefix_cache(16);
        let mut r = Request::new(0, 48, 2);
        r.hashes = vec![1, 2, 3].into();
        kv.allocate(3);
        (r.blocks, r.computed) = (3, 48);
        kv.publish(&mut r);
        kv.detach(&mut r);
        kv.allocate(2); // one free block and one evicted
        assert_eq!(kv.prefix_cache().unwrap().leading_hits(&[1, 2, 3]), 2);
    }

    #[test]
    fn a_sliding_window_bounds_the_blocks_a_request_holds_unless_prefixes_are_cached() {
        // Window 4096 in 16-token blocks: 256 blocks + 1 for an unaligned window.
        let kv = BlockManager::new(1000, 16, 0).with_attention_window(Some(4096));
        assert_eq!([1, 4096, 4112, 4113, 100_000].map(|t| kv.blocks_for(t)), [1, 256, 257, 257, 257]);
        assert_eq!(BlockManager::new(1000, 16, 0).blocks_for(100_000), 6250);
        assert_eq!(kv.clone().with_attention_window(None).blocks_for(100_000), 6250);
        assert_eq!(kv.with_prefix_cache(16).blocks_for(100_000), 6250, "cached prefixes keep every block");
    }
}
