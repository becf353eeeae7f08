//! The summary of one iteration's batch that the cost model charges.

/// What one iteration computes, summarised so that its cost is O(1) to evaluate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchShape {
    /// Tokens of prefill chunks.
    pub prefill_tokens: u64,
    /// Query-key pairs of causal prefill attention: sum over chunks of q * (c + (q + 1) / 2) for a
    /// chunk of q tokens after c cached tokens.
    pub prefill_pairs: f64,
    /// Keys (and values) the prefill chunks read: sum of c + q.
    pub prefill_kv_tokens: u64,
    /// Prefill chunks (one per sequence that prefills in this iteration).
    pub prefill_seqs: u64,
    /// Sequences decoding one token.
    pub decode_seqs: u64,
    /// Keys the decodes read: sum of their context lengths including the new token.
    pub decode_kv_tokens: u64,
    /// The longest decode context, including the new token.
    pub decode_max_context: u64,
    /// Sequences that sample a token at the end of the iteration (decodes and finished prefills).
    pub sampled: u64,
    /// Of the prefill chunks, those of a single token (a prompt's last token after a prefix-cache
    /// hit, a chunked prompt's last one), which attention kinds whose engines run one-token
    /// queries as decodes (MLA's absorbed form) charge apart: how many ...
    pub single_token_chunks: u64,
    /// ... and the keys they read (each of their queries attends to all of its chunk's keys).
    pub single_token_keys: u64,
    /// The model's sliding attention window, tokens (`None`: the whole context): each query
    /// attends to at most this many keys, so the pairs and keys above are counted within it.
    pub attention_window: Option<u64>,
}

impl BatchShape {
    /// An empty shape for a model whose attention is bounded to `window` tokens, if any.
    pub fn windowed(window: Option<u32>) -> Self {
        BatchShape { attention_window: window.map(u64::from), ..Default::default() }
    }

    /// Adds a prefill chunk of `q` tokens after `cached` tokens; `samples` when it ends the prompt.
    /// The query at position p attends to min(p + 1, window) keys: without a window the chunk's
    /// pairs are q (cached + (q + 1) / 2) and it reads cached + q keys; with one, the queries past
    /// the window attend to `window` keys each and the keys before the first query's window are
    /// not read.
    pub fn add_prefill(&mut self, q: u64, cached: u64, samples: bool) {
        let keys_before = self.prefill_kv_tokens;
        self.prefill_tokens += q;
        self.prefill_seqs += 1;
        let (qf, c) = (q as f64, cached as f64);
        match self.attention_window {
            None => {
                self.prefill_pairs += qf * (c + (qf + 1.0) / 2.0);
                self.prefill_kv_tokens += cached + q;
            }
            Some(w) => {
                // Queries whose p + 1 <= w attend causally, the rest to w keys.
                let causal = (cached + q).min(w).saturating_sub(cached) as f64;
                self.prefill_pairs += causal * (c + (causal + 1.0) / 2.0) + (qf - causal) * w as f64;
                self.prefill_kv_tokens += cached + q - (cached + 1).saturating_sub(w);
            }
        }
        if q == 1 {
            self.single_token_chunks += 1;
            self.single_token_keys += self.prefill_kv_tokens - keys_before;
        }
        self.sampled += samples as u64;
    }

    /// Adds one decode whose context, including the token being processed, is `context` tokens
    /// (it reads at most the window's keys).
    #[inline]
    pub fn add_decode(&mut self, context: u64) {
        let keys = self.attention_window.map_or(context, |w| context.min(w));
        self.decode_seqs += 1;
        self.decode_kv_tokens += keys;
        self.decode_max_context = self.decode_max_context.max(keys);
        self.sampled += 1;
    }

    /// Adds `count` decodes whose contexts (each including its token being processed) sum to
    /// `context_sum`, the longest `max_context`; for models without an attention window (each
    /// context would be clipped to it).
    pub fn add_decodes(&mut self, count: u64, context_sum: u64, max_context: u64) {
        debug_assert!(self.attention_window.is_none());
        self.decode_seqs += count;
        self.decode_kv_tokens += context_sum;
        self.decode_max_context = self.decode_max_context.max(max_context);
        self.sampled += count;
    }

    /// All tokens that pass through the linear layers.
    pub fn tokens(&self) -> u64 {
        self.prefill_tokens + self.decode_seqs
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens() == 0
    }
}

/// Speculative decoding's verify chunks of a batch (a decode's token and its drafts, each a
/// prefill chunk of its `BatchShape`): their tokens, query-key pairs and keys read, which attention
/// kinds whose engines run such short chunks as decodes (MLA's absorbed form) charge apart. Kept
/// beside the shape, not in it: only verify passes have them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VerifyChunks {
    /// The chunks' tokens (a part of the shape's `prefill_tokens`).
    pub tokens: u64,
    /// Their query-key pairs (a part of `prefill_pairs`).
    pub pairs: f64,
    /// The keys they read (a part of `prefill_kv_tokens`).
    pub kv_tokens: u64,
    /// The most keys one of them reads.
    pub max_kv_tokens: u64,
}

impl VerifyChunks {
    /// Adds to `shape` a verify chunk of `q` tokens (a decode's own and its drafts) after
    /// `cached` tokens, every position sampled, and counts it here.
    pub fn add(&mut self, shape: &mut BatchShape, q: u64, cached: u64) {
        let (pairs, keys) = (shape.prefill_pairs, shape.prefill_kv_tokens);
        shape.add_prefill(q, cached, true);
        shape.sampled += q - 1;
        self.tokens += q;
        self.pairs += shape.prefill_pairs - pairs;
        self.kv_tokens += shape.prefill_kv_tokens - keys;
        self.max_kv_tokens = self.max_kv_tokens.max(shape.prefill_kv_tokens - keys);
    }
}

#[cfg(test)]
mod tests {
    use super::BatchShape;

    #[test]
    fn a_window_bounds_the_pairs_and_keys_of_prefills_and_decodes() {
        let mut w = BatchShape::windowed(Some(4));
        // Positions 2..8 (6 queries after 2 cached): keys min(p + 1, 4) = 3, 4, 4, 4, 4, 4; the first
        // query's window starts at key 0 (2 + 1 - 4 < 0), so all 8 keys are read.
        w.add_prefill(6, 2, true);
        assert_eq!((w.prefill_pairs, w.prefill_kv_tokens), (23.0, 8));
        // Positions 10..12 after 10 cached: 4 keys each; keys 7..12 are read (5 of them).
        w.add_prefill(2, 10, false);
        assert_eq!((w.prefill_pairs, w.prefill_kv_tokens), (31.0, 13));
        w.add_decode(3);
        w.add_decode(9000);
        assert_eq!((w.decode_kv_tokens, w.decode_max_context), (3 + 4, 4));
        // No window: the causal sums.
        let mut n = BatchShape::default();
        n.add_prefill(6, 2, true);
        n.add_decode(9000);
        assert_eq!((n.prefill_pairs, n.prefill_kv_tokens, n.decode_kv_tokens), (6.0 * (2.0 + 3.5), 8, 9000));
        // A window wider than the context changes nothing.
        let mut wide = BatchShape::windowed(Some(1 << 20));
        wide.add_prefill(6, 2, true);
        wide.add_decode(9000);
        assert_eq!((wide.prefill_pairs, wide.prefill_kv_tokens, wide.decode_kv_tokens), (n.prefill_pairs, 8, 9000));
    }
}
