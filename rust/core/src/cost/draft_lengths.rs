//! Draft lengths that vary step by step (`speculative.draft_lengths`): a model-free proposer
//! (n-gram lookup, suffix decoding) proposes as many tokens as its match continues, up to k, so
//! the same request drafts 1 token one step and k the next.
//!
//! `draft_lengths` gives the probability that a proposal holds exactly i tokens, i = 1..k. Each
//! step each proposing decode draws its length from the instance's seeded stream (after the
//! n-gram match draw, before the acceptance draw), capped by what the scheduler granted it (its
//! KV lookahead, its class's k, the tokens left); the verify pass checks that many and the
//! acceptance draw runs over them. Unset: every proposal holds all it was granted. Under
//! adaptive verification a slot's survival is weighed by the chance the proposal reaches it
//! ([`Speculator::reaches`]) and candidate steps are priced with the lengths apportioned.

use super::speculative::Speculator;
use super::speculative_config::{SpecMethod, SpeculativeConfig};
use crate::error::{Error, Result};

impl SpeculativeConfig {
    /// Refuses `draft_lengths` on a model proposer (which drafts all k), of a length other than
    /// k, with a probability outside [0, 1] or not summing to 1.
    pub(super) fn check_draft_lengths(&self) -> Result<()> {
        let Some(lengths) = &self.draft_lengths else { return Ok(()) };
        let field = "speculative.draft_lengths";
        if !matches!(self.method, SpecMethod::Ngram | SpecMethod::Suffix) {
            return Err(Error::config(field, format!("applies to model-free proposers (ngram, suffix), whose matches vary in length; method {} drafts all k", self.method.name())));
        }
        if lengths.len() != self.num_speculative_tokens as usize {
            return Err(Error::config(field, format!("needs one probability per length 1..k ({}), got {}", self.num_speculative_tokens, lengths.len())));
        }
        if let Some(i) = lengths.iter().position(|p| !(0.0..=1.0).contains(p)) {
            return Err(Error::config(format!("{field}.{i}"), format!("must be a probability in [0, 1], got {:?}", lengths[i])));
        }
        let total: f64 = lengths.iter().sum();
        if (total - 1.0).abs() > 1e-6 {
            return Err(Error::config(field, format!("the probabilities must sum to 1, got {total}")));
        }
        Ok(())
    }

    /// The probability that a proposal reaches past each position i = 0..k (1 at every position
    /// when `draft_lengths` is unset), from the lengths summed up to each.
    pub(super) fn reach_probabilities(&self, upto: &[f64]) -> Vec<f64> {
        let k = self.num_speculative_tokens as usize;
        (0..k).map(|i| if i == 0 || upto.is_empty() { 1.0 } else { (1.0 - upto[i - 1]).max(0.0) }).collect()
    }

    /// `draft_lengths` summed up to each length (empty when unset).
    pub(super) fn draft_lengths_upto(&self) -> Vec<f64> {
        self.draft_lengths.as_deref().unwrap_or_default().iter().scan(0.0, |sum, p| {
            *sum += p;
            Some(*sum)
        }).collect()
    }
}

impl Speculator {
    /// Whether proposals vary in length step by step (`draft_lengths`), each drawing its own.
    pub fn varies_draft_length(&self) -> bool {
        !self.draft_upto.is_empty()
    }

    /// The tokens a proposal granted `granted` holds for a uniform draw `u` in [0, 1): the first
    /// length whose cumulative probability exceeds `u` (k for a draw the rounding leaves past
    /// them), at most `granted`; `granted` when lengths do not vary.
    pub fn draft_length(&self, granted: u32, u: f64) -> u32 {
        if self.draft_upto.is_empty() {
            return granted;
        }
        let len = self.draft_upto.iter().position(|&c| u < c).unwrap_or(self.draft_upto.len() - 1) as u32 + 1;
        len.min(granted)
    }

    /// The probability that a proposal reaches past position i (holds more than i tokens), for
    /// i = 0..k: 1 at every position when lengths do not vary. Adaptive verification weighs a
    /// slot's survival by it: a slot the proposal does not reach emits nothing.
    pub fn reaches(&self) -> &[f64] {
        &self.reach
    }

    /// The length of decode `d` of `n` in a representative step, the lengths apportioned by
    /// their probabilities (decode d at the quantile (d + 1/2) / n): how adaptive verification
    /// prices a step whose lengths are not drawn yet; k when lengths do not vary.
    pub fn apportioned_length(&self, d: usize, n: usize) -> u32 {
        self.draft_length(self.k(), (d as f64 + 0.5) / n as f64)
    }

    /// The probability that a proposal holds exactly i tokens, i = 1..k (all at k when lengths do
    /// not vary): for an estimate's expectation over the lengths.
    pub fn draft_length_probabilities(&self) -> Vec<f64> {
        if self.draft_upto.is_empty() {
            let mut p = vec![0.0; self.k() as usize];
            if let Some(last) = p.last_mut() {
                *last = 1.0;
            }
            return p;
        }
        self.draft_upto.iter().scan(0.0, |prev, &c| {
            let p = c - *prev;
            *prev = c;
            Some(p)
        }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::fixtures::*;
    use crate::cost::speculative_config::AcceptanceRate;
    use crate::cost::InstanceSpec;
    use crate::model::fixtures::llama2_70b;

    /// The speculator of `cfg` on Llama-2-70B, 4 H100s at peak rates.
    fn built(cfg: &SpeculativeConfig) -> Speculator {
        Speculator::build(cfg, &InstanceSpec::new(llama2_70b(), h100(), ideal(), 4)).unwrap()
    }

    fn suffix(lengths: Option<Vec<f64>>) -> SpeculativeConfig {
        SpeculativeConfig { method: SpecMethod::Suffix, draft_model: None, num_speculative_tokens: 4, acceptance_rate: Some(AcceptanceRate::Constant(0.8)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: lengths }
    }

    #[test]
    fn the_lengths_are_checked_naming_the_field() {
        let path = |c: SpeculativeConfig| match c.check_draft_lengths() {
            Err(Error::Config { path, message }) => (path, message),
            other => panic!("{other:?}"),
        };
        assert!(suffix(Some(vec![0.5, 0.25, 0.125, 0.125])).check_draft_lengths().is_ok());
        assert!(path(suffix(Some(vec![0.5, 0.5]))).1.contains("one probability per length 1..k (4), got 2"));
        assert_eq!(path(suffix(Some(vec![0.5, 0.5, 1.5, -1.5]))).0, "speculative.draft_lengths.2");
        assert!(path(suffix(Some(vec![0.5, 0.25, 0.125, 0.0]))).1.contains("sum to 1"));
        assert!(path(SpeculativeConfig { method: SpecMethod::Eagle, ..suffix(Some(vec![0.25; 4])) }).1.contains("method eagle drafts all k"));
        assert!(SpeculativeConfig { enable_adaptive_verification: true, ..suffix(Some(vec![0.25; 4])) }.check_draft_lengths().is_ok());
    }

    #[test]
    fn a_draw_picks_its_length_by_the_cumulative_probabilities_capped_by_the_grant() {
        let cfg = suffix(Some(vec![0.5, 0.25, 0.125, 0.125]));
        assert_eq!(cfg.draft_lengths_upto(), vec![0.5, 0.75, 0.875, 1.0]);
        let sp = built(&cfg);
        assert_eq!([0.0, 0.49, 0.5, 0.74, 0.75, 0.9, 0.9999].map(|u| sp.draft_length(4, u)), [1, 1, 2, 2, 3, 4, 4]);
        // The grant caps it.
        assert_eq!(sp.draft_length(2, 0.9), 2);
        assert_eq!(sp.draft_length_probabilities(), vec![0.5, 0.25, 0.125, 0.125]);
        assert_eq!(sp.reaches(), [1.0, 0.5, 0.25, 0.125]);
        // Eight decodes of a representative step: four of 1, two of 2, one of 3 and of 4.
        assert_eq!((0..8).map(|d| sp.apportioned_length(d, 8)).collect::<Vec<_>>(), vec![1, 1, 1, 1, 2, 2, 3, 4]);
        // Unset: the grant, and every proposal at k.
        let fixed = built(&suffix(None));
        assert!(!fixed.varies_draft_length());
        assert_eq!(fixed.draft_length(3, 0.1), 3);
        assert_eq!(fixed.draft_length_probabilities(), vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!((fixed.reaches(), fixed.apportioned_length(0, 8)), (&[1.0; 4][..], 4));
    }
}
