//! What one iteration runs: the [`Batch`] a scheduler fills, one [`Item`] per request with its
//! tokens (and a speculating decode's draft tokens), and the batch's shape for the cost model.

use crate::cost::BatchShape;
use crate::request::Request;

/// One request's share of an iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    /// Request index.
    pub req: u32,
    /// Tokens it computes in this iteration (1 for a decode).
    pub tokens: u32,
    /// Draft tokens a speculating decode proposes and verifies beside its token (0: none).
    pub draft: u32,
}

/// What one iteration runs.
#[derive(Debug, Default)]
pub struct Batch {
    /// Requests and their tokens.
    pub items: Vec<Item>,
    /// The cost model's summary of the batch.
    pub shape: BatchShape,
    /// Requests preempted while forming the batch.
    pub preempted: u32,
    /// KV blocks moved from GPU to host memory before the iteration.
    pub swap_out_blocks: u32,
    /// KV blocks moved from host to GPU memory before the iteration.
    pub swap_in_blocks: u32,
    /// Speculating decodes that proposed fewer draft tokens than they could: no KV lookahead room.
    pub lookahead_denied: u32,
}

impl Clone for Batch {
    fn clone(&self) -> Self {
        let mut b = Batch { items: Vec::new(), shape: self.shape, preempted: 0, swap_out_blocks: 0, swap_in_blocks: 0, lookahead_denied: 0 };
        b.clone_from(self);
        b
    }

    /// Copies `src` into this batch, reusing its item list's allocation (the asynchronous
    /// pipeline copies every batch it sends in flight).
    fn clone_from(&mut self, src: &Self) {
        let Batch { items, shape, preempted, swap_out_blocks, swap_in_blocks, lookahead_denied } = src;
        self.items.clone_from(items);
        self.shape = *shape;
        self.preempted = *preempted;
        self.swap_out_blocks = *swap_out_blocks;
        self.swap_in_blocks = *swap_in_blocks;
        self.lookahead_denied = *lookahead_denied;
    }
}

impl Batch {
    /// An empty batch whose shape counts attention within `window` tokens, if any.
    pub fn windowed(window: Option<u32>) -> Self {
        Batch { shape: BatchShape::windowed(window), ..Default::default() }
    }

    /// Empties the batch for reuse (keeping its attention window).
    pub fn clear(&mut self) {
        self.items.clear();
        self.shape = BatchShape { attention_window: self.shape.attention_window, ..Default::default() };
        self.preempted = 0;
        self.swap_out_blocks = 0;
        self.swap_in_blocks = 0;
        self.lookahead_denied = 0;
    }

    /// Adds `tokens` of `req` to the batch and to its shape.
    #[inline(always)]
    pub fn push(&mut self, req_idx: u32, req: &Request, tokens: u32) {
        let samples = req.computed + tokens == req.known_tokens();
        if req.is_decoding() {
            self.shape.add_decode(req.computed as u64 + 1);
        } else {
            self.shape.add_prefill(tokens as u64, req.computed as u64, samples);
        }
        self.items.push(Item { req: req_idx, tokens, draft: 0 });
    }
}
