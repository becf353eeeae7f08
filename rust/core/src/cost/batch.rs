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
}

impl BatchShape {
    /// Adds a prefill chunk of `q` tokens after `cached` tokens; `samples` when it ends the prompt.
    pub fn add_prefill(&mut self, q: u64, cached: u64, samples: bool) {
        self.prefill_tokens += q;
        self.prefill_seqs += 1;
        self.prefill_pairs += q as f64 * (cached as f64 + (q as f64 + 1.0) / 2.0);
        self.prefill_kv_tokens += cached + q;
        self.sampled += samples as u64;
    }

    /// Adds one decode whose context, including the token being processed, is `context` tokens.
    pub fn add_decode(&mut self, context: u64) {
        self.decode_seqs += 1;
        self.decode_kv_tokens += context;
        self.decode_max_context = self.decode_max_context.max(context);
        self.sampled += 1;
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
