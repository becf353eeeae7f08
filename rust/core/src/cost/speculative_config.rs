//! A pool's speculative decoding settings as the core reads them (vLLM's
//! `--speculative-config`): the proposer, k, the acceptance rates, dynamic k by batch size, and
//! their checks. What a step costs is in `speculative.rs`.

use crate::error::{Error, Result};
use crate::model::ModelSpec;
use serde::{Deserialize, Serialize};

/// The largest `num_speculative_tokens` accepted (vLLM's EAGLE trees and n-gram proposers rarely
/// exceed 8; beyond 16 the acceptance of the last positions is negligible).
pub const MAX_SPECULATIVE_TOKENS: u32 = 16;

/// The largest `num_speculative_tokens` of suffix decoding (vLLM's default for `suffix`: its
/// drafts cost no model step, only verify tokens).
pub const MAX_SUFFIX_TOKENS: u32 = 32;

/// The most nodes a speculative token tree may hold (its `num_speculative_tokens`): vLLM's
/// published EAGLE trees verify up to a few dozen tokens; past 64 the verify pass of every
/// decode is a long prefill chunk.
pub const MAX_TREE_NODES: u32 = 64;

/// The most acceptance classes a pool may give (a request's class fits a byte in results).
pub const MAX_ACCEPTANCE_CLASSES: usize = 16;

/// What adaptive verification scores the draft slots by (`speculative.adaptive_estimate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdaptiveEstimate {
    /// Each request's own rates, its acceptance class's (what a confidence head estimates per
    /// request, as vLLM's DSpark proposers): each class verifies its own number of drafts.
    #[default]
    Request,
    /// The instance's observed survival of each draft position over its recent steps
    /// ([`crate::cost::AcceptanceHistory`], as vLLM's DFlash proposers): one number for every decode.
    History,
}

/// How draft tokens are proposed (vLLM's `speculative_config.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecMethod {
    /// A separate, smaller model sharing the target's tokenizer.
    Draft,
    /// An EAGLE head: one decoder layer over the target's hidden states, the target's LM head.
    Eagle,
    /// An EAGLE-3 head: one dense decoder layer over the target's fused hidden states (three of
    /// its layers'), its own LM head over a smaller draft vocabulary.
    Eagle3,
    /// Multi-token prediction layers shipped with the model (DeepSeek-V3, Qwen3-Next, MiMo).
    Mtp,
    /// N-gram (prompt lookup) matching on the CPU: no model runs on the GPUs, and a step drafts
    /// only when the sequence's last tokens recur earlier in its context.
    Ngram,
    /// Suffix decoding (vLLM's `suffix` on its Model Runner V2): each sequence's longest suffix
    /// match against its own prompt and output and a corpus of finished responses, looked up on
    /// the GPUs (a negligible kernel, not charged); no model, and always k draft tokens (slots
    /// without a match are filled and rarely accepted: the per-position rates say how rarely).
    Suffix,
}

impl SpecMethod {
    /// The method's name as a scenario writes it.
    pub fn name(self) -> &'static str {
        match self {
            SpecMethod::Draft => "draft",
            SpecMethod::Eagle => "eagle",
            SpecMethod::Eagle3 => "eagle3",
            SpecMethod::Mtp => "mtp",
            SpecMethod::Ngram => "ngram",
            SpecMethod::Suffix => "suffix",
        }
    }

    /// Whether the method runs a model on the GPUs (every method but `ngram` and `suffix`,
    /// which look drafts up in the sequence's tokens).
    pub fn runs_a_model(self) -> bool {
        !matches!(self, SpecMethod::Ngram | SpecMethod::Suffix)
    }

    /// The most draft tokens a chain of this method proposes per step.
    pub fn max_chain(self) -> u32 {
        if self == SpecMethod::Suffix {
            MAX_SUFFIX_TOKENS
        } else {
            MAX_SPECULATIVE_TOKENS
        }
    }
}

/// The probability that a draft token is accepted given that every one before it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AcceptanceRate {
    /// The same rate at every position.
    Constant(f64),
    /// One rate per draft position, `num_speculative_tokens` of them.
    PerPosition(Vec<f64>),
}

/// A class of requests with acceptance rates of their own (`acceptance_classes`): the share of
/// requests in it and its rates. Which class a request belongs to is drawn once per request from
/// the run's seed ([`crate::cost::RequestClasses`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptanceClass {
    /// A label for reports (`code`, `chat`); optional.
    #[serde(default)]
    pub name: Option<String>,
    /// The fraction of requests in the class, in (0, 1]; the classes' shares sum to 1.
    pub share: f64,
    /// The class's acceptance rates, as `acceptance_rate` gives them.
    pub acceptance_rate: AcceptanceRate,
    /// The most draft tokens a request of the class proposes a step (1 to the pool's
    /// `num_speculative_tokens`, which it is unless given; not with a token tree): the shorter
    /// drafts of requests whose suffix or n-gram matches are short.
    #[serde(default)]
    pub num_speculative_tokens: Option<u32>,
}

/// A pool's speculative decoding settings (vLLM's `--speculative-config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeculativeConfig {
    /// Proposer kind.
    pub method: SpecMethod,
    /// The draft model (method `draft`), or the EAGLE-3 head's own shape (method `eagle3`,
    /// optional: its checkpoint's layers and draft vocabulary).
    #[serde(default)]
    pub draft_model: Option<ModelSpec>,
    /// Draft tokens proposed per step, k.
    pub num_speculative_tokens: u32,
    /// Acceptance probability of each draft position given the earlier ones were accepted, the
    /// same for every request; or, instead, `acceptance_classes`.
    #[serde(default)]
    pub acceptance_rate: Option<AcceptanceRate>,
    /// Acceptance that differs by request: classes of requests, each with its share and rates
    /// (instead of `acceptance_rate`).
    #[serde(default)]
    pub acceptance_classes: Option<Vec<AcceptanceClass>>,
    /// The rows of an EAGLE-3 head's own LM head (method `eagle3` only): its draft vocabulary,
    /// [`EAGLE3_DRAFT_VOCAB`] unless given (or the head model's vocabulary, when one is given).
    #[serde(default)]
    pub draft_vocab_size: Option<u32>,
    /// The probability that a decode finds an n-gram match in a step and so proposes its draft
    /// tokens (method `ngram` only; 1 unless given): a step without a match is a plain decode.
    #[serde(default)]
    pub proposal_rate: Option<f64>,
    /// Dynamic speculative decoding (vLLM's `num_speculative_tokens_per_batch_size`): entries
    /// `[start, end, k]`, k draft tokens while the requests the instance scheduled in its
    /// previous step number from start to end; `num_speculative_tokens` outside every range.
    #[serde(default)]
    pub num_speculative_tokens_per_batch_size: Option<Vec<[u32; 3]>>,
    /// Tree speculation (vLLM's `speculative_token_tree`): the draft tree's nodes as paths of
    /// child ranks from the root (`[0]`, `[1]`, `[0, 0]`, ...), level by level, every node of a
    /// level with the same number of children (the proposer keeps the top c of each node's
    /// candidates). `num_speculative_tokens` counts its nodes; `acceptance_rate` is per level.
    #[serde(default)]
    pub speculative_token_tree: Option<Vec<Vec<u32>>>,
    /// Adaptive verification (vLLM's `enable_adaptive_verification`): the proposer still drafts
    /// `num_speculative_tokens` every step, and the verify pass checks only the first j of them,
    /// j chosen after each step for the next to maximise the expected tokens per second of that
    /// step's decodes (`docs/speculative-decoding.md`). Chains of model proposers only.
    #[serde(default)]
    pub enable_adaptive_verification: bool,
    /// What adaptive verification scores the draft slots by: each request's class rates
    /// (`request`, the default) or the instance's observed acceptance (`history`).
    #[serde(default)]
    pub adaptive_estimate: AdaptiveEstimate,
    /// The context, in tokens, at which adaptive verification prices its candidate steps (vLLM
    /// profiles its cost table at one context, `VLLM_ADAPTIVE_VERIFICATION_PROFILE_CONTEXT_LEN`,
    /// 8,192 by default); None: at each decode's own context.
    #[serde(default)]
    pub adaptive_profile_context: Option<u32>,
    /// Draft lengths that vary step by step (model-free proposers: `ngram`, `suffix`): the
    /// probability that a proposal holds exactly i tokens, i = 1..k (`cost/draft_lengths.rs`);
    /// None: every proposal holds all it was granted.
    #[serde(default)]
    pub draft_lengths: Option<Vec<f64>>,
}

/// The longest context adaptive verification may price its steps at, tokens (the workload's
/// token limit, past every model's context).
pub const MAX_PROFILE_CONTEXT: u32 = 1_000_000_000;

/// The draft vocabulary of published EAGLE-3 heads (`draft_vocab_size` in their config.json: the
/// heads trained for Llama 3.1, Qwen3, DeepSeek-V3, Kimi-K2 and gpt-oss keep 32,000 tokens).
pub const EAGLE3_DRAFT_VOCAB: u32 = 32_000;

impl SpeculativeConfig {
    /// The acceptance rate of each of the k positions (a tree's levels) for each class of
    /// requests, with the class's share: one class of share 1 for `acceptance_rate`. Fails (naming
    /// the field) on k out of range, neither or both of `acceptance_rate` and
    /// `acceptance_classes`, a rate outside [0, 1], a per-position list of the wrong length, shares
    /// outside (0, 1] or not summing to 1, a bad batch-size table entry, or a draft model given to
    /// (or missing from) the wrong method.
    pub fn class_rates(&self) -> Result<Vec<(f64, Vec<f64>)>> {
        let k = self.num_speculative_tokens;
        let levels = match &self.speculative_token_tree {
            None if !(1..=self.method.max_chain()).contains(&k) => {
                return Err(Error::config("speculative.num_speculative_tokens", format!("must be between 1 and {} for method {}, got {k}", self.method.max_chain(), self.method.name())));
            }
            None => k,
            Some(_) => self.tree_levels()?.len() as u32,
        };
        let classes = match (&self.acceptance_rate, &self.acceptance_classes) {
            (Some(a), None) => vec![(1.0, self.rates_of(a, levels, "speculative.acceptance_rate")?)],
            (None, Some(classes)) => self.checked_classes(classes, levels)?,
            (Some(_), Some(_)) => return Err(Error::config("speculative.acceptance_classes", "give acceptance_rate (every request alike) or acceptance_classes (rates by class of request), not both")),
            (None, None) => return Err(Error::config("speculative.acceptance_rate", "missing: give acceptance_rate, or acceptance_classes")),
        };
        match self.draft_vocab_size {
            Some(_) if self.method != SpecMethod::Eagle3 => {
                return Err(Error::config("speculative.draft_vocab_size", format!("applies to method eagle3 only (an EAGLE-3 head's own LM head), not {}", self.method.name())));
            }
            Some(0) => return Err(Error::config("speculative.draft_vocab_size", "must be at least 1")),
            _ => {}
        }
        match self.proposal_rate {
            Some(_) if self.method != SpecMethod::Ngram => {
                return Err(Error::config("speculative.proposal_rate", format!("applies to method ngram only (how often its lookup finds a match), not {}", self.method.name())));
            }
            Some(p) if !(0.0..=1.0).contains(&p) => return Err(Error::config("speculative.proposal_rate", format!("must be a probability in [0, 1], got {p:?}"))),
            _ => {}
        }
        self.check_batch_size_table(k)?;
        self.check_adaptive_verification()?;
        self.check_draft_lengths()?;
        match (self.method, &self.draft_model) {
            (SpecMethod::Draft, None) => Err(Error::config("speculative.draft_model", "method draft needs a draft model")),
            (SpecMethod::Eagle | SpecMethod::Mtp | SpecMethod::Ngram | SpecMethod::Suffix, Some(_)) => {
                Err(Error::config("speculative.draft_model", "only methods draft and eagle3 take a model (eagle and mtp heads are layers of the target's shape; ngram and suffix run no model)"))
            }
            _ => Ok(classes),
        }
    }

    /// The rates `a` gives `levels` positions, checked (`field` names it in an error).
    fn rates_of(&self, a: &AcceptanceRate, levels: u32, field: &str) -> Result<Vec<f64>> {
        let rates = match a {
            AcceptanceRate::Constant(a) => vec![*a; levels as usize],
            AcceptanceRate::PerPosition(v) if v.len() == levels as usize => v.clone(),
            AcceptanceRate::PerPosition(v) if self.speculative_token_tree.is_some() => {
                return Err(Error::config(field, format!("a per-level list needs one rate per level of speculative_token_tree ({levels}), got {}", v.len())));
            }
            AcceptanceRate::PerPosition(v) => {
                return Err(Error::config(field, format!("a per-position list needs num_speculative_tokens = {levels} rates, got {}", v.len())));
            }
        };
        if let Some((i, a)) = rates.iter().enumerate().find(|(_, a)| !(0.0..=1.0).contains(*a)) {
            return Err(Error::config(format!("{field}.{i}"), format!("must be a probability in [0, 1], got {a:?}")));
        }
        Ok(rates)
    }

    /// The classes' shares and rates, checked: at least one class, shares in (0, 1] summing to 1
    /// (within 1e-6), each class's rates as [`SpeculativeConfig::rates_of`] checks them.
    fn checked_classes(&self, classes: &[AcceptanceClass], levels: u32) -> Result<Vec<(f64, Vec<f64>)>> {
        if classes.is_empty() || classes.len() > MAX_ACCEPTANCE_CLASSES {
            return Err(Error::config("speculative.acceptance_classes", format!("needs 1 to {MAX_ACCEPTANCE_CLASSES} classes ({{share, acceptance_rate}}), got {}", classes.len())));
        }
        let mut out = Vec::with_capacity(classes.len());
        for (c, class) in classes.iter().enumerate() {
            if !(class.share > 0.0 && class.share <= 1.0) {
                return Err(Error::config(format!("speculative.acceptance_classes.{c}.share"), format!("must be in (0, 1], got {:?}", class.share)));
            }
            match class.num_speculative_tokens {
                Some(_) if self.speculative_token_tree.is_some() => {
                    return Err(Error::config(format!("speculative.acceptance_classes.{c}.num_speculative_tokens"), "applies to a chain of draft tokens, not a speculative_token_tree"));
                }
                Some(kc) if kc == 0 || kc > self.num_speculative_tokens => {
                    return Err(Error::config(format!("speculative.acceptance_classes.{c}.num_speculative_tokens"), format!("must be 1 to the pool's num_speculative_tokens ({}), got {kc}", self.num_speculative_tokens)));
                }
                _ => {}
            }
            out.push((class.share, self.rates_of(&class.acceptance_rate, levels, &format!("speculative.acceptance_classes.{c}.acceptance_rate"))?));
        }
        let total: f64 = out.iter().map(|(s, _)| s).sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(Error::config("speculative.acceptance_classes", format!("the shares must sum to 1, got {total}")));
        }
        Ok(out)
    }

    /// The most draft tokens a request of each class proposes a step: its class's
    /// `num_speculative_tokens`, or the pool's (one entry for `acceptance_rate`).
    pub fn class_draft_tokens(&self) -> Vec<u32> {
        match &self.acceptance_classes {
            Some(classes) => classes.iter().map(|c| c.num_speculative_tokens.unwrap_or(self.num_speculative_tokens)).collect(),
            None => vec![self.num_speculative_tokens],
        }
    }

    /// The token tree's nodes up to each level, cumulative (`[2, 6]`: two first-level
    /// candidates, four second-level ones), its nodes in any order (vLLM sorts them breadth
    /// first); fails (naming the node) on an empty path, a node whose parent is missing, a
    /// repeated node, a level whose nodes do not all have the same number of children ranked
    /// from 0, a method that cannot draft a tree, a batch-size table beside it, or a node count
    /// other than `num_speculative_tokens`.
    pub fn tree_levels(&self) -> Result<Vec<u32>> {
        let Some(tree) = &self.speculative_token_tree else { return Ok(Vec::new()) };
        let field = |i: usize| format!("speculative.speculative_token_tree.{i}");
        if !matches!(self.method, SpecMethod::Draft | SpecMethod::Eagle | SpecMethod::Eagle3) {
            return Err(Error::config("speculative.speculative_token_tree", format!("applies to methods draft, eagle and eagle3 (a model drafting the tree level by level), not {}", self.method.name())));
        }
        if self.num_speculative_tokens_per_batch_size.is_some() {
            return Err(Error::config("speculative.speculative_token_tree", "cannot be combined with num_speculative_tokens_per_batch_size (a tree's levels are fixed)"));
        }
        if tree.is_empty() || tree.len() as u32 > MAX_TREE_NODES {
            return Err(Error::config("speculative.speculative_token_tree", format!("needs 1 to {MAX_TREE_NODES} nodes, got {}", tree.len())));
        }
        if tree.len() as u32 != self.num_speculative_tokens {
            return Err(Error::config("speculative.num_speculative_tokens", format!("must be the number of nodes of speculative_token_tree ({}), got {}", tree.len(), self.num_speculative_tokens)));
        }
        let mut width = vec![0u32; tree.iter().map(Vec::len).max().unwrap_or(0)];
        for (i, node) in tree.iter().enumerate() {
            if node.is_empty() {
                return Err(Error::config(field(i), "[]: a node is a non-empty path of child ranks from the root"));
            }
            if tree[..i].contains(node) {
                return Err(Error::config(field(i), format!("{node:?} is listed twice")));
            }
            if node.len() > 1 && !tree.iter().any(|p| p[..] == node[..node.len() - 1]) {
                return Err(Error::config(field(i), format!("{node:?}: its parent {:?} is not in the tree", &node[..node.len() - 1])));
            }
            width[node.len() - 1] += 1;
        }
        // Every node of a level has the same children, ranked 0..c (vLLM's top c per level).
        for (l, &w) in width.iter().enumerate() {
            let parents = if l == 0 { 1 } else { width[l - 1] };
            if let Some((i, node)) = tree.iter().enumerate().find(|(_, n)| n.len() == l + 1 && (w % parents != 0 || n[l] >= w / parents)) {
                return Err(Error::config(field(i), format!("{node:?}: every node of level {l} needs the same number of children, ranked from 0 ({w} nodes under {parents} parents)")));
            }
        }
        Ok(width.iter().scan(0, |upto, &w| {
            *upto += w;
            Some(*upto)
        }).collect())
    }

    /// Refuses adaptive verification beside a batch-size table (both set the verified k), a token
    /// tree (vLLM trims chains) or an n-gram proposer (vLLM's adaptive verification scores the
    /// drafts of model proposers and suffix decoding only); `adaptive_estimate: history` or an
    /// `adaptive_profile_context` without adaptive verification; a profile context out of range.
    fn check_adaptive_verification(&self) -> Result<()> {
        if !self.enable_adaptive_verification {
            if self.adaptive_estimate == AdaptiveEstimate::History {
                return Err(Error::config("speculative.adaptive_estimate", "applies to adaptive verification: set enable_adaptive_verification: true"));
            }
            if self.adaptive_profile_context.is_some() {
                return Err(Error::config("speculative.adaptive_profile_context", "applies to adaptive verification: set enable_adaptive_verification: true"));
            }
            return Ok(());
        }
        if let Some(c) = self.adaptive_profile_context {
            if !(1..=MAX_PROFILE_CONTEXT).contains(&c) {
                return Err(Error::config("speculative.adaptive_profile_context", format!("must be 1 to {MAX_PROFILE_CONTEXT} tokens, got {c}")));
            }
        }
        let field = "speculative.enable_adaptive_verification";
        if self.num_speculative_tokens_per_batch_size.is_some() {
            return Err(Error::config(field, "cannot be combined with num_speculative_tokens_per_batch_size (both choose how many draft tokens a step verifies)"));
        }
        if self.speculative_token_tree.is_some() {
            return Err(Error::config(field, "applies to a chain of draft tokens, not a speculative_token_tree"));
        }
        if self.method == SpecMethod::Ngram {
            return Err(Error::config(field, "applies to model proposers (draft, eagle, eagle3, mtp) and suffix, not ngram (vLLM scores the drafts of models and suffix decoding only)"));
        }
        Ok(())
    }

    /// Refuses a batch-size table whose entry has start 0, start past end, k past `k`, or a
    /// range overlapping an earlier one (naming the entry), and a table without a range from 1
    /// (vLLM's rule: every batch size has a k; gaps and sizes past the last range take the k of
    /// the range before them).
    fn check_batch_size_table(&self, k: u32) -> Result<()> {
        let table = self.num_speculative_tokens_per_batch_size.as_deref().unwrap_or_default();
        if table.is_empty() && self.num_speculative_tokens_per_batch_size.is_some() {
            return Err(Error::config("speculative.num_speculative_tokens_per_batch_size", "needs at least one [start, end, k] entry"));
        }
        for (i, &[start, end, ki]) in table.iter().enumerate() {
            let field = || format!("speculative.num_speculative_tokens_per_batch_size.{i}");
            if start == 0 || start > end {
                return Err(Error::config(field(), format!("[start, end, k] needs 1 <= start <= end, got [{start}, {end}, {ki}]")));
            }
            if ki > k {
                return Err(Error::config(field(), format!("k = {ki} exceeds num_speculative_tokens = {k} (the most draft tokens a step proposes)")));
            }
            if let Some(j) = table[..i].iter().position(|&[s, e, _]| start <= e && s <= end) {
                return Err(Error::config(field(), format!("[{start}, {end}] overlaps entry {j} [{}, {}]", table[j][0], table[j][1])));
            }
        }
        match table.iter().map(|&[start, _, _]| start).min() {
            Some(first) if first != 1 => Err(Error::config(
                "speculative.num_speculative_tokens_per_batch_size",
                format!("the first range starts at {first}; it must start at 1 (vLLM's rule: every batch size has a k, sizes between ranges and past the last taking the k of the range before them)"),
            )),
            _ => Ok(()),
        }
    }
}
