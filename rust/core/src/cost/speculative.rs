//! Speculative decoding's cost: the proposer's k sequential steps and the target's verify pass.
//!
//! A speculating sequence, each step: the proposer (a small draft model; an EAGLE / MTP head:
//! one decoder layer of the target's shape plus the shared LM head; an EAGLE-3 head: one dense
//! decoder layer with its own, smaller LM head; or an n-gram lookup on the CPU or suffix matching,
//! which cost the GPUs no model step) runs k sequential steps: the first over every token the target verifies (vLLM's
//! padded drafter batch), the others decoding the speculating sequences; the target
//! verifies k + 1 tokens per sequence in one pass, priced like a prefill chunk of k + 1 tokens
//! attending its cached context (the target's weights are read once for the whole batch, its
//! FLOPs grow k + 1 times). At batch 1
//! the verify pass costs about what one decode costs (weight-bandwidth bound) and emits several
//! tokens; at large batches it turns compute-bound and speculation stops paying. A token tree
//! (vLLM's `speculative_token_tree`) drafts one level per step and verifies all its nodes + 1;
//! its k is its node count and its positions are its levels. The settings (proposer, k, rates,
//! k by batch size, the tree) are in `speculative_config.rs`.

use super::speculative_config::{AdaptiveEstimate, SpecMethod, SpeculativeConfig, EAGLE3_DRAFT_VOCAB};
use super::{BatchShape, CostModel, InstanceSpec, IterationCost, Quantization, VerifyChunks};
use crate::calibration::NgramLookupCost;
use crate::error::{Error, Result};
use crate::model::ModelSpec;

/// The expected tokens one step emits per sequence: 1 + sum over i of a_1 ... a_i (accepted
/// draft tokens plus the target's own next token); for a constant rate a, (1 - a^(k+1)) / (1 - a).
pub fn expected_tokens_per_step(rates: &[f64]) -> f64 {
    let mut p = 1.0;
    let mut sum = 1.0;
    for a in rates {
        p *= a;
        sum += p;
    }
    sum
}

/// One speculating sequence of a step: its cached tokens before the step and its draft length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecSeq {
    /// Tokens whose KV is cached before the step (the last sampled token is not yet among them).
    pub cached: u64,
    /// Draft tokens it proposes this step (1..=k); 0 for a decode whose step drafts nothing
    /// under dynamic speculation (k = 0 for its batch size) but whose proposer still runs its
    /// first step over it, keeping the proposer's KV in step (vLLM's cache-sync forward): the
    /// target decodes it plainly.
    pub k: u32,
}

/// The proposer of one instance and what it adds to the instance's memory.
#[derive(Debug, Clone)]
pub struct Speculator {
    method: SpecMethod,
    /// Each acceptance class's share of the requests and its rate at each draft position given
    /// the earlier ones were accepted (one class of share 1 for `acceptance_rate`;
    /// `acceptance_classes.rs`).
    pub(super) classes: Vec<(f64, Vec<f64>)>,
    /// The most draft tokens a request of each class proposes a step (k, or less: a class's
    /// shorter drafts).
    pub(super) class_k: Vec<u32>,
    /// The probability that a decode proposes in a step (an n-gram match; 1 for a model).
    proposal_rate: f64,
    /// The proposer's cost model (for `ngram`, which runs none, the target's, never charged).
    proposer: CostModel,
    /// The proposer's copies of its cost model's KV: the MTP modules (1 for an EAGLE head or a
    /// draft model, whose cost model holds all its layers).
    modules: u64,
    /// The head's own 16-bit linear layers beside its cost model's operators, (inputs, outputs)
    /// per token: run at every draft step (EAGLE's and MTP's 2h x h input projection, EAGLE-3's
    /// second h of query/key/value inputs) ...
    per_step: Vec<(f64, f64)>,
    /// ... and once per proposal, before its first step (EAGLE-3's 3h x h fusion of the target's
    /// hidden states).
    per_proposal: Vec<(f64, f64)>,
    /// Dynamic speculation's `[start, end, k]` entries by start (empty: always k).
    per_batch_size: Vec<[u32; 3]>,
    /// A token tree's nodes up to each level, cumulative (empty: a chain of k tokens).
    tree: Vec<u32>,
    /// An n-gram proposer's CPU lookup per step (the engine's; None: free or not n-gram).
    lookup: Option<NgramLookupCost>,
    /// Adaptive verification: the proposer drafts all k tokens of every speculating sequence
    /// whatever the verify pass checks (`adaptive_verification.rs`).
    pub(super) adaptive: bool,
    /// What adaptive verification scores the draft slots by.
    pub(super) estimate: AdaptiveEstimate,
    /// The context adaptive verification prices its candidate steps at (None: each decode's).
    pub(super) profile_context: Option<u64>,
    /// Varying draft lengths' probabilities summed up to each length (empty: all granted).
    pub(super) draft_upto: Vec<f64>,
    /// The probability that a proposal reaches past each draft position (1s: all granted).
    pub(super) reach: Vec<f64>,
    /// Weight bytes the proposer adds on each GPU.
    pub weight_bytes_per_gpu: u64,
    /// KV bytes per token the proposer adds on each GPU.
    pub kv_bytes_per_token_per_gpu: u64,
}

impl Speculator {
    /// The proposer of `cfg` for the instance `spec` describes (its target): a draft model on
    /// the same GPUs and tensor parallelism (bf16 weights, the pool's KV format), or an EAGLE / MTP head shaped like one target
    /// layer (the target's quantization). With pipeline stages it runs whole on one stage's
    /// `tp` GPUs (the last: vLLM runs the proposer on the last stage's rank). Its per-step CPU overheads are zero: the k draft steps
    /// run inside the engine step, whose overhead the verify pass already pays.
    pub fn build(cfg: &SpeculativeConfig, spec: &InstanceSpec) -> Result<Self> {
        let classes = cfg.class_rates()?;
        let mut eff = spec.efficiency.clone();
        eff.iteration_overhead = 0.0;
        eff.seq_overhead = None;
        eff.token_overhead = None;
        let on_gpus = |model: ModelSpec, quantization: Quantization| InstanceSpec {
            model,
            gpu: spec.gpu.clone(),
            efficiency: eff.clone(),
            tp: spec.tp,
            pp: 1,
            microbatches: None,
            ep: 1,
            gpus_per_node: spec.gpus_per_node,
            pim: None,
            offload: None,
            power_cap_watts: spec.power_cap_watts,
            quantization,
        };
        let target = &spec.model;
        // MTP runs the model's own modules: the checkpoint must ship them (vLLM loads them from
        // it and refuses a model without), and runs them in turn, so k past n must be a multiple
        // of n. An EAGLE head is one module.
        let modules = match cfg.method {
            SpecMethod::Mtp if target.mtp_layers == 0 => {
                return Err(Error::config(
                    "speculative.method",
                    format!("mtp runs the model's multi-token-prediction layers, and {} has none (its mtp_layers is 0; DeepSeek-V3, MiMo and Qwen3-Next ship them); use eagle, or a draft model", target.name),
                ))
            }
            SpecMethod::Mtp if cfg.num_speculative_tokens > target.mtp_layers && cfg.num_speculative_tokens % target.mtp_layers != 0 => {
                return Err(Error::config(
                    "speculative.num_speculative_tokens",
                    format!("{} exceeds {}'s {} multi-token-prediction modules and is not a multiple of them (vLLM runs them in turn)", cfg.num_speculative_tokens, target.name, target.mtp_layers),
                ))
            }
            SpecMethod::Mtp => target.mtp_layers as u64,
            SpecMethod::Ngram | SpecMethod::Suffix => 0,
            _ => 1,
        };
        let h = target.hidden_size as u64;
        let (mut per_step, mut per_proposal) = (Vec::new(), Vec::new());
        let (proposer, weight, kv) = match (cfg.method, &cfg.draft_model) {
            (SpecMethod::Draft, Some(draft)) => {
                if draft.vocab_size != target.vocab_size {
                    return Err(Error::config("speculative.draft_model", format!("{}'s vocabulary ({} tokens) differs from {}'s ({}): a draft model must share the target's tokenizer", draft.name, draft.vocab_size, target.name, target.vocab_size)));
                }
                // Its weights in 16 bits; its KV cache in the pool's format, as vLLM keeps one
                // kv_cache_dtype for the target's and the draft's layers.
                let q = Quantization { kv_cache: spec.quantization.kv_cache, ..Quantization::default() };
                let cm = CostModel::build(&on_gpus(draft.clone(), q)).map_err(|e| in_draft(&draft.name, e))?;
                let (w, kv) = (cm.weight_bytes_per_gpu(), cm.kv_bytes_per_token_per_gpu());
                (cm, w, kv)
            }
            // N-gram lookup runs on the CPU, suffix matching in a small GPU kernel: no weights,
            // no KV, no model step.
            (SpecMethod::Ngram | SpecMethod::Suffix, _) => (CostModel::build(spec)?, 0, 0),
            (SpecMethod::Eagle3, head) => {
                let head = eagle3_head(target, head.as_ref(), cfg.draft_vocab_size)?;
                // A 16-bit head (published EAGLE-3 heads are bf16 whatever the target's format),
                // its KV in the pool's format.
                let q = Quantization { kv_cache: spec.quantization.kv_cache, ..Quantization::default() };
                let layers = |n: u32| ModelSpec { num_layers: n, ..head.clone() };
                let in_head = |e| in_draft(&head.name, e);
                let cm = CostModel::build(&on_gpus(head.clone(), q)).map_err(in_head)?;
                let one = CostModel::build(&on_gpus(layers(1), q)).map_err(in_head)?;
                let two = CostModel::build(&on_gpus(layers(2), q)).map_err(in_head)?;
                let per_layer = two.weight_bytes_per_gpu().saturating_sub(one.weight_bytes_per_gpu());
                // Its query/key/value projection reads [embedding; hidden state] (2h): beside the
                // layer's h inputs, h more, sharded as the projection is.
                let qkv_extra = h * qkv_width_per_gpu(&head, spec.tp);
                per_step.push((h as f64, qkv_width_per_gpu(&head, spec.tp) as f64));
                // The fusion of three target layers' hidden states (3h -> h), a plain linear
                // layer whole on every GPU; its own LM head, sharded; the embedding is the target's.
                per_proposal.push((3.0 * h as f64, h as f64));
                let fc = 3 * h * h;
                let lm_head = (head.vocab_size as u64).div_ceil(spec.tp as u64) * h;
                let w = head.num_layers as u64 * per_layer + (qkv_extra * head.num_layers as u64 + fc + lm_head) * head.dtype_bytes as u64;
                let kv = cm.kv_bytes_per_token_per_gpu();
                (cm, w, kv)
            }
            _ => {
                // One layer of the target's shape (a MoE layer for a MoE target: MTP's), plus the
                // target's embedding and LM head, which the head shares (not counted again).
                let layers = |n: u32| ModelSpec { num_layers: n, first_dense_layers: 0, moe_layer_interval: 0, name: format!("{} {} head", target.name, cfg.method.name()), ..target.clone() };
                let one = CostModel::build(&on_gpus(layers(1), spec.quantization))?;
                let two = CostModel::build(&on_gpus(layers(2), spec.quantization))?;
                // EAGLE's and MTP's input projection: [hidden; embedding] (2h) to h, a plain
                // 16-bit linear layer in vLLM, whole on every GPU (neither sharded nor quantized),
                // run at every draft step.
                let fc = 2 * h * h * target.dtype_bytes as u64;
                per_step.push((2.0 * h as f64, h as f64));
                // Every module is held (each with its own KV); a draft step runs one of them.
                let w = modules * (two.weight_bytes_per_gpu().saturating_sub(one.weight_bytes_per_gpu()) + fc);
                let kv = modules * one.kv_bytes_per_token_per_gpu();
                (one, w, kv)
            }
        };
        let proposal_rate = cfg.proposal_rate.unwrap_or(1.0);
        let mut per_batch_size = cfg.num_speculative_tokens_per_batch_size.clone().unwrap_or_default();
        per_batch_size.sort_unstable_by_key(|&[start, _, _]| start);
        let tree = cfg.tree_levels()?;
        let lookup = if cfg.method == SpecMethod::Ngram { spec.efficiency.ngram_lookup } else { None };
        let adaptive = cfg.enable_adaptive_verification;
        let class_k = cfg.class_draft_tokens();
        Ok(Speculator { method: cfg.method, classes, class_k, proposal_rate, proposer, modules, per_step, per_proposal, per_batch_size, tree, lookup, adaptive, estimate: cfg.adaptive_estimate, profile_context: cfg.adaptive_profile_context.map(u64::from), draft_upto: cfg.draft_lengths_upto(), reach: cfg.reach_probabilities(&cfg.draft_lengths_upto()), weight_bytes_per_gpu: weight, kv_bytes_per_token_per_gpu: kv })
    }

    /// The proposer's KV bytes of one token over all its layers and KV heads (what a speculating
    /// prefill instance sends per prompt token beside the target's).
    pub fn proposer_kv_bytes_per_token_whole_model(&self) -> u64 {
        self.modules * self.proposer.kv_bytes_per_token_whole_model()
    }

    /// Draft tokens per step, k (a token tree's nodes).
    pub fn k(&self) -> u32 {
        self.tree.last().copied().unwrap_or(self.positions() as u32)
    }

    /// The levels a decode granted `draft` draft tokens speculates: a chain drafts them all; a
    /// tree as many whole levels as `draft` nodes hold.
    pub fn depth(&self, draft: u32) -> u32 {
        if self.tree.is_empty() {
            draft
        } else {
            self.tree.iter().take_while(|&&upto| upto <= draft).count() as u32
        }
    }

    /// The draft tokens of `depth` levels: `depth` for a chain, a tree's nodes down to that level.
    pub fn nodes(&self, depth: u32) -> u32 {
        match depth {
            0 => 0,
            d if self.tree.is_empty() => d,
            d => self.tree[d as usize - 1],
        }
    }

    /// Draft tokens per step after a step that scheduled `batch_size` requests: the k of the
    /// dynamic table's range holding it, or between ranges and past the last the k of the range
    /// before it (vLLM's schedule carries the previous range's k forward; its first range starts
    /// at 1); k without a table or after a step that scheduled nothing.
    pub fn k_after(&self, batch_size: usize) -> u32 {
        let n = u32::try_from(batch_size).unwrap_or(u32::MAX);
        if n == 0 {
            return self.k();
        }
        self.per_batch_size.iter().take_while(|&&[start, _, _]| start <= n).last().map_or(self.k(), |&[_, _, k]| k)
    }

    /// Whether the proposer is a model that keeps its own KV (every method but `ngram` and `suffix`).
    pub fn runs_a_model(&self) -> bool {
        self.method.runs_a_model()
    }

    /// The proposer kind.
    pub fn method(&self) -> SpecMethod {
        self.method
    }

    /// The probability that a decode proposes its draft tokens in a step (1 but for `ngram`).
    pub fn proposal_rate(&self) -> f64 {
        self.proposal_rate
    }

    /// Whether a batch of `rest` and the speculating `seqs` runs as a plain iteration: nothing
    /// speculates and the proposer has nothing to run (no token for a model to keep its KV of;
    /// an n-gram lookup never runs on the GPUs, and looks nothing up without a decode).
    pub fn runs_plain(&self, rest: &BatchShape, seqs: &[SpecSeq]) -> bool {
        seqs.is_empty() && self.proposal_steps(rest, seqs) == 0 && self.lookup_seconds(rest, seqs) == 0.0
    }

    /// An n-gram proposer's CPU lookup after the step (the engine's `ngram_lookup`; 0 for other
    /// methods, or a step without decodes): every decode of the step is looked up, matched or
    /// not, over its whole context (`rest`'s plain decodes and the speculating `seqs`).
    pub fn lookup_seconds(&self, rest: &BatchShape, seqs: &[SpecSeq]) -> f64 {
        let Some(cost) = &self.lookup else { return 0.0 };
        let n = rest.decode_seqs + seqs.len() as u64;
        if n == 0 {
            return 0.0;
        }
        cost.seconds(n, rest.decode_kv_tokens + seqs.iter().map(|s| s.cached + 1).sum::<u64>())
    }

    /// The proposer's cost model (the draft model, or the one-layer head).
    pub fn proposer(&self) -> &CostModel {
        &self.proposer
    }

    /// The target's verify shape: `rest` (the batch's prefill chunks and plain decodes) plus a
    /// (k + 1)-token chunk after its cached tokens for each speculating sequence (a tree: its
    /// nodes down to the sequence's depth + 1, attending their ancestors), all positions sampled
    /// (the target scores every draft token and the bonus one); and those chunks listed apart
    /// (MLA runs them as decodes).
    pub fn verify_shape(&self, rest: &BatchShape, seqs: &[SpecSeq]) -> (BatchShape, VerifyChunks) {
        let (mut v, mut chunks) = (*rest, VerifyChunks::default());
        for s in seqs {
            match self.nodes(self.depth(s.k)) {
                // Drafting nothing (dynamic speculation): a plain decode.
                0 => v.add_decode(s.cached + 1),
                n => chunks.add(&mut v, n as u64 + 1, s.cached),
            }
        }
        (v, chunks)
    }

    /// The proposer's shape at draft step `j` (1-based), and its verify chunks. The first step
    /// is vLLM's padded drafter batch: the proposer runs over every token the target verifies
    /// (`rest`'s prefill chunks and plain decodes, each speculating sequence's verify chunk of
    /// its draft tokens + 1 after its cached context), sampling one token per sequence (a
    /// prompt's only when its chunk ends it); it keeps the proposer's own KV of every token. The
    /// later steps decode every sequence still drafting at its context plus `j` (a tree's: vLLM's
    /// drafter runs the tree's nodes down to level j - 1 over its context and samples the
    /// children of level j - 1's nodes; under adaptive verification every sequence drafts all k).
    pub fn proposal_shape(&self, rest: &BatchShape, seqs: &[SpecSeq], j: u32) -> (BatchShape, VerifyChunks) {
        if j == 1 {
            // (Its keys counted within the target's attention window, as `rest`'s are.)
            let (mut s, chunks) = self.verify_shape(rest, seqs);
            s.sampled = rest.sampled + seqs.len() as u64;
            return (s, chunks);
        }
        let mut s = self.proposer.empty_shape();
        // A tree's nodes down to level j - 1 and those of level j - 1 alone.
        let tree_step = (!self.tree.is_empty()).then(|| (self.nodes(j - 1) as u64, (self.nodes(j - 1) - self.nodes(j - 2)) as u64));
        for q in seqs.iter().filter(|q| self.adaptive || self.depth(q.k) >= j) {
            match tree_step {
                None => s.add_decode(q.cached + j as u64),
                Some((upto, level)) => {
                    s.add_prefill(upto, q.cached + 1, true);
                    s.sampled += level - 1;
                }
            }
        }
        (s, VerifyChunks::default())
    }

    /// How many sequential steps the proposer runs on the GPUs: the longest proposal (under
    /// adaptive verification all k, whatever the verify pass checks), and at least one for any
    /// batch (a model keeps its own KV of every token the target runs, so a prompt's chunk or a
    /// plain decode runs through it even when no decode of the batch speculates); none for an
    /// n-gram lookup, which runs on the CPU, or suffix matching.
    pub fn proposal_steps(&self, rest: &BatchShape, seqs: &[SpecSeq]) -> u32 {
        if !self.method.runs_a_model() {
            return 0;
        }
        let k = if self.adaptive && !seqs.is_empty() { self.k() } else { seqs.iter().map(|s| self.depth(s.k)).max().unwrap_or(0) };
        // At least one for any token (a sequence drafting nothing included: its proposer still
        // runs over it).
        k.max((!rest.is_empty() || !seqs.is_empty()) as u32)
    }

    /// The proposer's sequential steps alone (seconds and compute-bound seconds summed):
    /// what a pipeline's last stage, where the proposer runs, adds to its share of the verify pass.
    pub fn proposal_cost(&self, rest: &BatchShape, seqs: &[SpecSeq]) -> IterationCost {
        let mut c = IterationCost { seconds: self.lookup_seconds(rest, seqs), ..Default::default() };
        for j in 1..=self.proposal_steps(rest, seqs) {
            let p = self.draft_step(rest, seqs, j);
            c.seconds += p.seconds;
            c.compute_bound_seconds += p.compute_bound_seconds;
        }
        c
    }

    /// Draft step `j` (1-based): the proposer's iteration over [`Speculator::proposal_shape`]
    /// and the head's own linear layers over its tokens (those of every step, and on the first
    /// step those run once per proposal), at 16-bit roofline rates.
    pub fn draft_step(&self, rest: &BatchShape, seqs: &[SpecSeq], j: u32) -> IterationCost {
        let (shape, chunks) = self.proposal_shape(rest, seqs, j);
        let mut c = self.proposer.iteration_verify(&shape, &chunks);
        let once: &[(f64, f64)] = if j == 1 { &self.per_proposal } else { &[] };
        let cm = &self.proposer;
        let tokens = shape.tokens() as f64;
        for &(k, n) in self.per_step.iter().chain(once) {
            let (flops, bytes) = cm.gemm_16bit(tokens, k, n);
            let (t, cb) = cm.gemm_roofline(flops, bytes, cm.flops_16bit, cm.bw);
            let t = t * cm.eff.time_scale.unwrap_or(1.0);
            c.seconds += t;
            if cb {
                c.compute_bound_seconds += t;
            }
        }
        c
    }

    /// One speculative step on `target`: the proposer's sequential steps
    /// ([`Speculator::proposal_steps`]), then the verify pass. Its seconds are their sum; the weight stall is the verify pass's.
    pub fn step(&self, target: &CostModel, rest: &BatchShape, seqs: &[SpecSeq]) -> IterationCost {
        self.step_parts(target, rest, seqs).0
    }

    /// [`Speculator::step`] and, apart, the proposer's seconds (what an expert runtime, which
    /// times the verify pass itself, adds to it).
    /// On a synchronous pipeline the proposer runs on the last stage's GPUs alone: the other
    /// stages wait it out (`bubble_seconds`: pp - 1 of the pp stages' GPUs idle).
    pub fn step_parts(&self, target: &CostModel, rest: &BatchShape, seqs: &[SpecSeq]) -> (IterationCost, f64) {
        let (shape, chunks) = self.verify_shape(rest, seqs);
        let mut c = target.iteration_verify(&shape, &chunks);
        // An n-gram lookup runs on the CPU after sampling, the GPUs idle.
        let mut proposer = self.lookup_seconds(rest, seqs);
        c.seconds += proposer;
        let idle_stages = (target.pp() - 1) as f64 / target.pp() as f64;
        for j in 1..=self.proposal_steps(rest, seqs) {
            let p = self.draft_step(rest, seqs, j);
            c.seconds += p.seconds;
            c.compute_bound_seconds += p.compute_bound_seconds;
            c.bubble_seconds += p.seconds * idle_stages;
            proposer += p.seconds;
        }
        (c, proposer)
    }
}

/// The EAGLE-3 head for `target`: `given` (its checkpoint's shape: the same hidden size as the
/// target's) or, by default, one dense decoder layer of the target's attention and dense MLP
/// width (`intermediate_size`, also for a MoE target: the published heads are dense), with a
/// draft vocabulary of `draft_vocab` rows (default: the given head's, else [`EAGLE3_DRAFT_VOCAB`]).
fn eagle3_head(target: &ModelSpec, given: Option<&ModelSpec>, draft_vocab: Option<u32>) -> Result<ModelSpec> {
    let base = match given {
        Some(head) if head.hidden_size != target.hidden_size => {
            return Err(Error::config("speculative.draft_model", format!("{}'s hidden size ({}) differs from {}'s ({}): an EAGLE-3 head reads the target's hidden states", head.name, head.hidden_size, target.name, target.hidden_size)));
        }
        Some(head) => head.clone(),
        None => ModelSpec {
            num_layers: 1,
            num_experts: 0,
            experts_per_token: 0,
            moe_intermediate_size: 0,
            num_shared_experts: 0,
            shared_expert_intermediate_size: 0,
            first_dense_layers: 0,
            moe_layer_interval: 0,
            mtp_layers: 0,
            name: format!("{} eagle3 head", target.name),
            ..target.clone()
        },
    };
    let vocab = draft_vocab.unwrap_or(if given.is_some() { base.vocab_size } else { EAGLE3_DRAFT_VOCAB.min(target.vocab_size) });
    if vocab > target.vocab_size {
        return Err(Error::config("speculative.draft_vocab_size", format!("{vocab} exceeds {}'s vocabulary ({} tokens): the draft vocabulary is a part of the target's", target.name, target.vocab_size)));
    }
    Ok(ModelSpec { vocab_size: vocab, tie_word_embeddings: false, ..base })
}

/// The outputs per token of `model`'s query/key/value projection on one GPU at tensor-parallel
/// degree `tp` (MLA: the query latent, or the queries, and the replicated KV latent).
fn qkv_width_per_gpu(model: &ModelSpec, tp: u32) -> u64 {
    match &model.mla {
        Some(m) => m.q_lora_rank.map_or((model.num_heads as u64).div_ceil(tp as u64) * m.qk_head_dim() as u64, |r| r as u64) + m.cache_width() as u64,
        None => (model.num_heads as u64).div_ceil(tp as u64) * model.head_dim as u64 + model.kv_width_per_gpu(tp),
    }
}

/// A draft model's cost-model error, its path moved under `speculative.draft_model`.
fn in_draft(name: &str, e: Error) -> Error {
    match e {
        Error::Config { path, message } => Error::config("speculative.draft_model", format!("{name}: {path}: {message}")),
        other => other,
    }
}

#[cfg(test)]
#[path = "speculative_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "speculative_tree_tests.rs"]
mod tree_tests;
