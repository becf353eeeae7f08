//! The paged KV-cache block manager of one instance.
//!
//! Blocks are interchangeable, so the manager only counts them: which request holds how many is
//! kept on the request. Capacity is never exceeded: every allocation is checked.

/// Counts free and used KV blocks.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    total: u32,
    used: u32,
    peak: u32,
    watermark: u32,
}

impl BlockManager {
    /// A manager of `total` blocks of `block_size` tokens; admissions keep `watermark` blocks free
    /// (vLLM keeps 1% free so that running requests can still grow).
    pub fn new(total: u32, block_size: u32, watermark: u32) -> Self {
        BlockManager { block_size, total, used: 0, peak: 0, watermark }
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u64) -> u32 {
        tokens.div_ceil(self.block_size as u64) as u32
    }

    /// Free blocks.
    pub fn free(&self) -> u32 {
        self.total - self.used
    }

    /// Blocks in use.
    pub fn used(&self) -> u32 {
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

    /// Takes `blocks` blocks; the caller has checked they are free.
    pub fn allocate(&mut self, blocks: u32) {
        assert!(blocks <= self.free(), "KV allocation beyond capacity: {blocks} > {} free", self.free());
        self.used += blocks;
        self.peak = self.peak.max(self.used);
    }

    /// Returns `blocks` blocks.
    pub fn release(&mut self, blocks: u32) {
        assert!(blocks <= self.used, "releasing {blocks} blocks with only {} in use", self.used);
        self.used -= blocks;
    }
}
