//! Speculative decoding on an instance: which decodes of a batch speculate and how far, their
//! KV lookahead, the step's cost, and how many draft tokens each one accepts.
//!
//! Each decode of a speculating pool proposes k_i = min(k, output tokens left - 1) draft tokens
//! (never more than it can still emit), holding KV room for them (vLLM's lookahead slots: they
//! stay allocated, so the next step reuses them; a decode whose room does not fit proposes
//! fewer, or none). When the step ends, draft position i is accepted with probability a_i given
//! every earlier one was, drawn from the instance's seeded stream; the sequence emits its
//! accepted tokens plus the target's own next token, in one streamed chunk.

use crate::cost::{BatchShape, InstanceSpec, IterationCost, SpecSeq, SpeculativeConfig, Speculator};
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::request::Request;
use crate::rng::RngStream;
use serde::Serialize;

use super::Instance;

/// What speculation did on one instance (vLLM's `spec_decode` metrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SpecStats {
    /// Sequence-steps that proposed draft tokens (vLLM's `num_drafts`).
    pub drafts: u64,
    /// Draft tokens proposed.
    pub draft_tokens: u64,
    /// Draft tokens accepted.
    pub accepted_tokens: u64,
    /// Draft tokens proposed at each position (1-based position i at index i - 1).
    pub draft_tokens_per_position: Vec<u64>,
    /// Draft tokens accepted at each position.
    pub accepted_per_position: Vec<u64>,
    /// Decodes that proposed fewer than they could because their KV lookahead did not fit.
    pub lookahead_denied: u64,
}

/// An instance's proposer, its random stream and the speculation of the iteration running.
#[derive(Debug, Clone)]
pub struct SpecRuntime {
    spec: Speculator,
    rng: RngStream,
    /// Accepted draft tokens of each item of the running batch (0: not speculating).
    accepted: Vec<u32>,
    /// Counters.
    pub stats: SpecStats,
}

impl SpecRuntime {
    /// The proposer.
    pub fn speculator(&self) -> &Speculator {
        &self.spec
    }

    /// Accepted draft tokens of item `i` of the running batch.
    pub(super) fn accepted(&self, i: usize) -> u32 {
        self.accepted.get(i).copied().unwrap_or(0)
    }

    /// Draws how many of `k` draft tokens are accepted: position i with probability a_i given
    /// all before it were; stops at the first rejection.
    fn sample(&mut self, k: u32) -> u32 {
        let mut n = 0;
        while n < k && self.rng.next_f64() < self.spec.rates()[n as usize] {
            n += 1;
        }
        n
    }

    /// Counts one sequence-step that proposed `k` and accepted `n`.
    fn count(&mut self, k: u32, n: u32) {
        let s = &mut self.stats;
        s.drafts += 1;
        s.draft_tokens += k as u64;
        s.accepted_tokens += n as u64;
        for i in 0..k as usize {
            s.draft_tokens_per_position[i] += 1;
            s.accepted_per_position[i] += (i < n as usize) as u64;
        }
    }
}

/// Draft tokens a decode of `r` proposes: up to `k`, at most its output tokens left but one,
/// and as many as its KV lookahead room allows (allocated here).
fn reserve_lookahead(r: &mut Request, k: u32, kv: &mut BlockManager) -> u32 {
    let want = k.min(r.output.saturating_sub(r.generated + 1));
    for ki in (1..=want).rev() {
        let need = kv.growth(r, r.computed as u64 + 1 + ki as u64);
        if kv.can_grow(need) {
            kv.allocate(need);
            r.blocks += need;
            return ki;
        }
    }
    0
}

impl Instance {
    /// Speculates with `cfg`'s proposer, if given: its weights and KV come out of the KV cache
    /// (fails when not one block is left); `seed` and `stream` name its acceptance draws. Call
    /// before any request arrives (and before [`Instance::with_prefix_cache`]).
    pub fn with_speculation(mut self, cfg: Option<&SpeculativeConfig>, spec: &InstanceSpec, seed: u64, stream: &str) -> Result<Self> {
        let Some(cfg) = cfg else { return Ok(self) };
        if self.moe.is_some() {
            return Err(Error::config("speculative", "speculative decoding with expert settings (experts:) is not modelled"));
        }
        let sp = Speculator::build(cfg, spec)?;
        let plan = &mut self.plan;
        let weights = plan.weight_bytes + sp.weight_bytes_per_gpu;
        let per_token = plan.kv_bytes_per_token + sp.kv_bytes_per_token_per_gpu;
        let block_bytes = per_token * plan.block_size as u64;
        let needed = weights + plan.activation_bytes + block_bytes;
        if needed > plan.usable_bytes {
            let proposer = cfg.draft_model.as_ref().map_or_else(|| format!("{} head", cfg.method.name()), |d| format!("draft model {}", d.name));
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            return Err(Error::Capacity {
                what: format!("{} with its speculative {proposer} on {} x{} (weights {:.2} GiB + {proposer} {:.2} GiB + activations {:.2} GiB + one KV block, per GPU)", self.cost.model().name, self.cost.gpu().name, self.cost.tp(), gib(plan.weight_bytes), gib(sp.weight_bytes_per_gpu), gib(plan.activation_bytes)),
                needed_bytes: needed,
                available_bytes: plan.usable_bytes,
            });
        }
        plan.weight_bytes = weights;
        plan.kv_bytes = plan.usable_bytes - weights - plan.activation_bytes;
        plan.kv_bytes_per_token = per_token;
        plan.num_blocks = (plan.kv_bytes / block_bytes).min(u32::MAX as u64) as u32;
        self.kv = BlockManager::new(plan.num_blocks, plan.block_size, super::kv_watermark(plan.num_blocks)).with_attention_window(self.cost.model().sliding_window);
        let k = sp.k() as usize;
        let stats = SpecStats { draft_tokens_per_position: vec![0; k], accepted_per_position: vec![0; k], ..Default::default() };
        self.spec = Some(Box::new(SpecRuntime { spec: sp, rng: RngStream::new(seed, stream), accepted: Vec::new(), stats }));
        Ok(self)
    }

    /// The speculation runtime, for speculating pools.
    pub fn speculation(&self) -> Option<&SpecRuntime> {
        self.spec.as_deref()
    }

    /// The cost of the batch just formed: the cost model's, or for a speculating pool the
    /// proposer's steps and the verify pass, after reserving each decode's lookahead and drawing
    /// its accepted tokens.
    pub(super) fn batch_cost(&mut self, reqs: &mut [Request]) -> IterationCost {
        let Some(rt) = self.spec.as_deref_mut() else { return self.cost.iteration_memo(&self.batch.shape, &mut self.decode_memo) };
        rt.accepted.clear();
        let mut rest = BatchShape::windowed(self.cost.model().sliding_window);
        let mut seqs = Vec::new();
        for it in &self.batch.items {
            let r = &mut reqs[it.req as usize];
            let decoding = it.tokens == 1 && r.is_decoding();
            let k = if decoding { reserve_lookahead(r, rt.spec.k(), &mut self.kv) } else { 0 };
            if decoding && k < rt.spec.k().min(r.output.saturating_sub(r.generated + 1)) {
                rt.stats.lookahead_denied += 1;
            }
            if k == 0 {
                rt.accepted.push(0);
                if decoding {
                    rest.add_decode(r.computed as u64 + 1);
                } else {
                    rest.add_prefill(it.tokens as u64, r.computed as u64, r.computed + it.tokens == r.known_tokens());
                }
                continue;
            }
            let n = rt.sample(k);
            rt.count(k, n);
            rt.accepted.push(n);
            seqs.push(SpecSeq { cached: r.computed as u64, k });
        }
        if seqs.is_empty() {
            return self.cost.iteration_memo(&self.batch.shape, &mut self.decode_memo);
        }
        rt.spec.step(&self.cost, &rest, &seqs)
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;
