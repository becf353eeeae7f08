//! Speculative decoding on an instance: which decodes of a batch speculate and how far, their
//! KV lookahead, the step's cost, and how many draft tokens each one accepts.
//!
//! Each decode of a speculating pool proposes k_i = min(k, output tokens left - 1) draft tokens
//! (never more than it can still emit), fewer when the scheduler's token budget runs out (the
//! verify pass's 1 + k_i tokens count against it), holding KV room for them (vLLM's lookahead
//! slots: they stay allocated, so the next step reuses them; a decode whose room does not fit
//! proposes fewer, or none). The scheduler grants them (`scheduler::lookahead`). When the step ends, draft position i is accepted with probability a_i given
//! every earlier one was, drawn from the instance's seeded stream; the sequence emits its
//! accepted tokens plus the target's own next token, in one streamed chunk. An n-gram lookup
//! first draws whether it matched (its `proposal_rate`); without a match the decode proposes
//! nothing that step. A token tree's decode is granted up to the tree's nodes and speculates as
//! many whole levels as its grant holds (none below the first level's nodes: a plain decode);
//! its accepted count is drawn over those levels with the per-level rates. With acceptance
//! classes (`cost/acceptance_classes.rs`) each decode draws with its request's class's rates, and
//! under adaptive verification verifies its class's number of drafts.

use crate::cost::{AcceptanceHistory, BatchShape, ClassCaps, InstanceSpec, IterationCost, RequestClasses, SpecSeq, SpeculativeConfig, Speculator, StageCosts, VerifyChunks};
use crate::error::{Error, Result};
use crate::kv::BlockManager;
use crate::request::Request;
use crate::rng::RngStream;
use crate::scheduler::DraftGrant;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;

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
    /// Draft tokens proposed by the requests of each acceptance class (empty with one class).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub draft_tokens_per_class: Vec<u64>,
    /// Draft tokens accepted from the requests of each acceptance class (empty with one class).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted_per_class: Vec<u64>,
}

/// An instance's proposer, its random stream and the speculation of the iteration running.
#[derive(Debug, Clone)]
pub struct SpecRuntime {
    spec: Speculator,
    rng: RngStream,
    /// The run's requests mapped to the proposer's acceptance classes.
    classes: Arc<RequestClasses>,
    /// Under adaptive verification with several acceptance classes, the draft tokens each
    /// class's decodes verify in the batch being formed (empty otherwise).
    plan: Vec<u32>,
    /// Under adaptive verification learning from history, the acceptance observed so far.
    history: Option<AcceptanceHistory>,
    /// Accepted draft tokens of each item of the running batch (0: not speculating).
    accepted: Vec<u32>,
    /// The running batch's verify shape and proposer seconds, when some decode speculates.
    verify: Option<(BatchShape, VerifyChunks, f64)>,
    /// Accepted draft tokens of each batch in flight on an asynchronous pipeline, oldest first.
    in_flight: VecDeque<Vec<u32>>,
    /// The draft tokens the scheduler grants the batch being formed: k, or under dynamic
    /// speculation the table's k for the requests the previous batch scheduled, or under
    /// adaptive verification the k chosen for the previous batch's decodes.
    k_now: u32,
    /// Counters.
    pub stats: SpecStats,
}

impl SpecRuntime {
    /// The proposer.
    pub fn speculator(&self) -> &Speculator {
        &self.spec
    }

    /// The running batch's verify pass (the target's shape) and its proposer's seconds, when
    /// some decode of it speculates on a pool with experts or offloaded weights: an expert
    /// runtime times that verify pass itself, a weight stream is sized by its tokens.
    pub(super) fn verify(&self) -> Option<&(BatchShape, VerifyChunks, f64)> {
        self.verify.as_ref()
    }

    /// Accepted draft tokens of item `i` of the running batch.
    pub(super) fn accepted(&self, i: usize) -> u32 {
        self.accepted.get(i).copied().unwrap_or(0)
    }

    /// Draws how many of `depth` draft positions (a tree's levels) of a request of acceptance
    /// class `class` are accepted: position i with probability a_i given all before it were;
    /// stops at the first rejection.
    fn sample(&mut self, depth: u32, class: usize) -> u32 {
        let rates = self.spec.class_rates(class);
        let mut n = 0;
        while n < depth && self.rng.next_f64() < rates[n as usize] {
            n += 1;
        }
        n
    }

    /// The scheduler's grant of up to `k` draft tokens a decode, capped by the decode's class
    /// where a class drafts fewer.
    fn grant(&self, k: u32) -> DraftGrant {
        if !self.spec.caps_by_class() {
            return DraftGrant::uniform(k);
        }
        let caps = (0..self.spec.num_classes()).map(|c| self.spec.class_k(c)).collect();
        DraftGrant { k, by_class: Some(ClassCaps { classes: Arc::clone(&self.classes), caps }) }
    }

    /// Counts one sequence-step of a request of acceptance class `class` that proposed `draft`
    /// tokens over `depth` positions (a tree's levels: one position each) and accepted `n` of them.
    fn count(&mut self, draft: u32, depth: u32, n: u32, class: usize) {
        let s = &mut self.stats;
        s.drafts += 1;
        s.draft_tokens += draft as u64;
        s.accepted_tokens += n as u64;
        for i in 0..depth as usize {
            s.draft_tokens_per_position[i] += 1;
            s.accepted_per_position[i] += (i < n as usize) as u64;
        }
        if !s.draft_tokens_per_class.is_empty() {
            s.draft_tokens_per_class[class] += draft as u64;
            s.accepted_per_class[class] += n as u64;
        }
    }
}

impl Instance {
    /// Speculates with `cfg`'s proposer, if given: its weights and KV come out of the KV cache
    /// (fails when not one block is left); `seed` and `stream` name its acceptance draws. Call
    /// before any request arrives (and before [`Instance::with_prefix_cache`]).
    pub fn with_speculation(mut self, cfg: Option<&SpeculativeConfig>, spec: &InstanceSpec, seed: u64, stream: &str) -> Result<Self> {
        let Some(cfg) = cfg else { return Ok(self) };
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
        let k_now = sp.k();
        let k = sp.positions();
        let per_class = if sp.num_classes() > 1 { sp.num_classes() } else { 0 };
        let stats = SpecStats { draft_tokens_per_position: vec![0; k], accepted_per_position: vec![0; k], draft_tokens_per_class: vec![0; per_class], accepted_per_class: vec![0; per_class], ..Default::default() };
        let classes = Arc::new(sp.request_classes(seed));
        let history = sp.learns_from_history().then(|| AcceptanceHistory::new(k));
        let rt = SpecRuntime { spec: sp, rng: RngStream::new(seed, stream), classes, plan: Vec::new(), history, accepted: Vec::new(), verify: None, in_flight: VecDeque::new(), k_now, stats };
        self.scheduler.set_draft_grant(rt.grant(k_now));
        self.spec = Some(Box::new(rt));
        Ok(self)
    }

    /// Puts each request in the acceptance class the workload gives it (`given[r]`, by request
    /// index; [`crate::cost::DRAWN_CLASS`]: drawn by share), on a speculating instance; nothing
    /// otherwise. Fails naming the first entry that is not one of the pool's classes. Call after
    /// [`Instance::with_speculation`], before any request arrives.
    pub fn with_given_classes(mut self, given: Option<Arc<[u8]>>) -> Result<Self> {
        let (Some(rt), Some(given)) = (self.spec.as_deref_mut(), given) else { return Ok(self) };
        rt.classes = Arc::new(RequestClasses::clone(&rt.classes).with_given(given)?);
        let grant = rt.grant(rt.k_now);
        self.scheduler.set_draft_grant(grant);
        Ok(self)
    }

    /// The speculation runtime, for speculating pools.
    pub fn speculation(&self) -> Option<&SpecRuntime> {
        self.spec.as_deref()
    }

    /// Draws how many draft tokens each speculating decode of the batch just formed accepts (in
    /// batch order, with its request's acceptance class's rates) and counts them; returns the
    /// batch's other items as a shape and its speculating decodes (None for a pool that does not
    /// speculate). Under dynamic speculation a batch formed with k = 0 lists its decodes as
    /// drafting nothing (their proposer still runs over them), and the next batch's k follows
    /// this one's request count; under adaptive verification, the best plan for this batch's
    /// decodes ([`Speculator::adaptive_plan`]): a decode of a class whose plan verifies nothing
    /// is listed as drafting nothing, as under k = 0.
    fn draw_batch(&mut self, reqs: &[Request]) -> Option<(BatchShape, Vec<SpecSeq>)> {
        let rt = self.spec.as_deref_mut()?;
        rt.accepted.clear();
        rt.verify = None;
        rt.stats.lookahead_denied += self.batch.lookahead_denied as u64;
        let runs_a_model = rt.spec.runs_a_model();
        let syncing = rt.k_now == 0 && runs_a_model;
        let mut rest = BatchShape::windowed(self.cost.model().sliding_window);
        let mut seqs = Vec::new();
        // Under adaptive verification, the decodes of the next step: this one's decodes and the
        // prompts it completes, at the tokens cached once it ends (before its accepted drafts),
        // with their classes.
        let mut next: Vec<(u64, usize)> = Vec::new();
        for it in &self.batch.items {
            let r = &reqs[it.req as usize];
            let class = rt.classes.class_of(it.req);
            if rt.spec.is_adaptive() && r.computed + it.tokens == r.known_tokens() {
                next.push(((r.computed + it.tokens) as u64, class));
            }
            // An n-gram lookup that finds no match proposes nothing: a plain decode this step.
            let unmatched = it.draft > 0 && rt.spec.proposal_rate() < 1.0 && rt.rng.next_f64() >= rt.spec.proposal_rate();
            // A model-free proposal whose match is shorter than the grant drafts fewer.
            let draft = if it.draft > 0 && !unmatched && rt.spec.varies_draft_length() { rt.spec.draft_length(it.draft, rt.rng.next_f64()) } else { it.draft };
            // A tree's decode granted fewer draft tokens than its first level's nodes drafts nothing.
            let depth = rt.spec.depth(draft);
            // Adaptive verification with classes: this class verifies none of the drafts.
            let unverified = runs_a_model && rt.plan.get(class) == Some(&0);
            if depth == 0 || unmatched {
                rt.accepted.push(0);
                if it.tokens == 1 && r.is_decoding() {
                    if syncing || unverified {
                        seqs.push(SpecSeq { cached: r.computed as u64, k: 0 });
                    } else {
                        rest.add_decode(r.computed as u64 + 1);
                    }
                } else {
                    rest.add_prefill(it.tokens as u64, r.computed as u64, r.computed + it.tokens == r.known_tokens());
                }
                continue;
            }
            let n = rt.sample(depth, class);
            rt.count(rt.spec.nodes(depth), depth, n, class);
            if let Some(h) = rt.history.as_mut() {
                h.observe(depth, n);
            }
            rt.accepted.push(n);
            seqs.push(SpecSeq { cached: r.computed as u64, k: draft });
        }
        let grant = if rt.spec.is_adaptive() {
            let plan = match rt.history.as_mut() {
                Some(h) => {
                    h.end_step();
                    rt.spec.history_plan(&self.cost, &next, &h.survival())
                }
                None => rt.spec.adaptive_plan(&self.cost, &next),
            };
            let k = plan.iter().copied().max().unwrap_or(0);
            if plan.len() > 1 {
                rt.plan = plan.clone();
                DraftGrant { k, by_class: Some(ClassCaps { classes: Arc::clone(&rt.classes), caps: plan }) }
            } else {
                DraftGrant::uniform(k)
            }
        } else {
            rt.grant(rt.spec.k_after(self.batch.items.len()))
        };
        rt.k_now = grant.k;
        self.scheduler.set_draft_grant(grant);
        Some((rest, seqs))
    }

    /// The cost of the batch just formed: the cost model's, or for a speculating pool the
    /// proposer's steps and the verify pass of the draft tokens the scheduler granted each decode
    /// (with their lookahead), after drawing how many of them each one accepts. A model
    /// proposer's first step runs over every token the target runs, even when no decode of the
    /// batch speculates (it keeps its own KV of every token). With
    /// synchronous pipeline stages the verify pass is the pipelined iteration and the proposer
    /// runs after it drains.
    pub(super) fn batch_cost(&mut self, reqs: &[Request]) -> IterationCost {
        let drawn = self.draw_batch(reqs);
        let plain = |(rest, seqs): &(BatchShape, Vec<SpecSeq>)| self.spec.as_deref().is_some_and(|rt| rt.spec.runs_plain(rest, seqs));
        let Some((rest, seqs)) = drawn.filter(|d| !plain(d)) else { return self.cost.iteration_memo(&self.batch.shape, &mut self.ops_memo.borrow_mut()) };
        let rt = self.spec.as_deref_mut().expect("a speculating pool");
        let (cost, proposer) = rt.spec.step_parts(&self.cost, &rest, &seqs);
        if self.moe.is_some() || self.cost.offload().is_some() {
            let (shape, chunks) = rt.spec.verify_shape(&rest, &seqs);
            rt.verify = Some((shape, chunks, proposer));
        }
        cost
    }

    /// The stage times of the batch just formed on an asynchronous pipeline: for a speculating
    /// pool, the verify pass goes through the stages as any batch does (k_i + 1 query tokens per
    /// speculating decode) and the proposer's steps follow it on the last stage. Keeps the
    /// batch's accepted counts until it is applied ([`Instance::apply_speculation`]).
    pub(super) fn batch_stage_costs(&mut self, reqs: &[Request]) -> StageCosts {
        if self.spec.is_none() {
            return self.cost.stage_costs_memo(&self.batch.shape, &mut self.ops_memo.borrow_mut());
        }
        let (rest, seqs) = self.draw_batch(reqs).expect("a speculating pool");
        let rt = self.spec.as_deref_mut().expect("a speculating pool");
        rt.in_flight.push_back(std::mem::take(&mut rt.accepted));
        if rt.spec.runs_plain(&rest, &seqs) {
            return self.cost.stage_costs(&self.batch.shape);
        }
        let (shape, chunks) = rt.spec.verify_shape(&rest, &seqs);
        let mut st = self.cost.stage_costs_verify(&shape, &chunks);
        let proposer = rt.spec.proposal_cost(&rest, &seqs);
        let pp = st.seconds.len() as f64;
        *st.seconds.last_mut().expect("one stage at least") += proposer.seconds;
        st.average.seconds += proposer.seconds / pp;
        st.average.compute_bound_seconds += proposer.compute_bound_seconds / pp;
        st
    }

    /// Makes the oldest batch in flight's accepted counts the ones its application reads.
    pub(super) fn apply_speculation(&mut self) {
        if let Some(rt) = self.spec.as_deref_mut() {
            rt.accepted = rt.in_flight.pop_front().unwrap_or_default();
        }
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;
