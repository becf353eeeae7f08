//! Adaptive verification (vLLM's `enable_adaptive_verification`): how many of its k draft tokens
//! each speculating decode's next verify pass checks.
//!
//! The proposer drafts all k tokens of every speculating sequence each step, so its cost does
//! not change. After each step the engine picks, for the next one, how many draft tokens j
//! (0..=k) each of that step's decodes verifies: the j that maximises the expected tokens per
//! second of a step of those decodes. Each decode emits 1 + a_1 + a_1 a_2 + ... + a_1...a_j
//! tokens (its own next token plus the survival probability of each verified draft slot), and
//! the step costs what the cost model charges the verify pass of j + 1 tokens per decode and
//! the proposer's k steps, at the decodes' contexts, rounded to the simulator's nanoseconds.
//! Among equal rates the smaller j wins (fewer tokens for the same throughput).
//!
//! vLLM scores every (request, position) slot by its survival probability under per-request
//! acceptance estimates (a confidence head's, DSpark), and verifies the best slots; or, for
//! proposers without such estimates, scores every decode by the accepted-prefix survival it has
//! observed and verifies one k for all (DFlash). With `adaptive_estimate: request` the estimates
//! are the rates of each decode's acceptance class (the configured ones: what a per-request
//! estimator gives when acceptance depends only on the class), and the candidates are the
//! cut-offs of the slots ranked by survival probability (then by position, earlier first): every
//! slot ranked at or above the cut-off is verified, so a decode verifies a prefix of its drafts
//! and the decodes of a class verify the same number; with one class they are j = 0..=k for
//! every decode. With `history` the estimate is the instance's observed survival by position
//! ([`crate::cost::AcceptanceHistory`]) and the candidates j = 0..=k for every decode
//! ([`Speculator::history_plan`]). The step is priced by the cost model at the decodes' actual
//! contexts, as a profile taken at those contexts would be, or, with `adaptive_profile_context`,
//! at that one context for every decode, as vLLM's table profiled at startup (its grid of total
//! query lengths `B * q` is not modelled: the candidates are priced as they are).

use std::borrow::Cow;

use super::speculative::{expected_tokens_per_step, SpecSeq, Speculator};
use super::speculative_config::AdaptiveEstimate;
use super::CostModel;
use crate::time::secs_to_ns;

impl Speculator {
    /// Whether the verify pass checks a chosen number of the draft tokens (adaptive
    /// verification) rather than all that the scheduler grants.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Whether adaptive verification scores the slots by the instance's observed acceptance
    /// ([`crate::cost::AcceptanceHistory`]) rather than by each request's class rates.
    pub fn learns_from_history(&self) -> bool {
        self.adaptive && self.estimate == AdaptiveEstimate::History
    }

    /// The draft tokens the decodes of each acceptance class verify in a step of `decodes`
    /// (cached tokens, class) when every decode's slots are scored by one estimated `survival`
    /// per position (the instance's history): the j in 0..=k (each class at most its own k)
    /// with the most expected tokens, `1 + survival[0] + ... + survival[j - 1]` per decode (each
    /// weighed by the chance a proposal reaches it when draft lengths vary), per
    /// nanosecond of the step on `target` (at the profile context, when one is set), the smallest
    /// on a tie; every class its whole k when there is no decode.
    pub fn history_plan(&self, target: &CostModel, decodes: &[(u64, usize)], survival: &[f64]) -> Vec<u32> {
        let classes = self.num_classes();
        if decodes.is_empty() {
            return (0..classes).map(|c| self.class_k(c).min(self.k())).collect();
        }
        let decodes = &*self.as_profiled(decodes);
        let mut plans: Vec<Vec<u32>> = Vec::new();
        for j in 0..=self.k() {
            let plan: Vec<u32> = (0..classes).map(|c| j.min(self.class_k(c))).collect();
            if plans.last() != Some(&plan) {
                plans.push(plan);
            }
        }
        let reaches = self.reaches();
        self.best_plan(target, decodes, plans, |_, j| survival[..j as usize].iter().zip(reaches).fold(1.0, |t, (s, r)| t + s * r))
    }

    /// `decodes` (cached tokens, class) as adaptive verification prices them: each at the
    /// profile context when one is set (vLLM's cost table, profiled at one context), else as
    /// they are.
    pub(super) fn as_profiled<'a>(&self, decodes: &'a [(u64, usize)]) -> Cow<'a, [(u64, usize)]> {
        match self.profile_context {
            Some(context) => Cow::Owned(decodes.iter().map(|&(_, c)| (context, c)).collect()),
            None => Cow::Borrowed(decodes),
        }
    }

    /// The survival of each draft position over the classes by their shares: what an
    /// instance's history of a steady mix converges to (decodes weighted by share, not by the
    /// slots each verifies).
    pub fn share_weighted_survival(&self) -> Vec<f64> {
        (0..self.positions())
            .map(|i| (0..self.num_classes()).map(|c| self.classes[c].0 * self.class_rates(c)[..=i].iter().product::<f64>()).sum())
            .collect()
    }

    /// The draft tokens each decode verifies in a step of decodes whose cached tokens are
    /// `cached` (one entry per decode), all of the first acceptance class, under adaptive
    /// verification: the j in 0..=k with the most expected tokens per nanosecond of the step on
    /// `target` (the smallest such j on a tie); k when there is no decode.
    pub fn adaptive_k(&self, target: &CostModel, cached: &[u64]) -> u32 {
        let decodes: Vec<(u64, usize)> = cached.iter().map(|&c| (c, 0)).collect();
        self.adaptive_plan(target, &decodes)[0]
    }

    /// The draft tokens the decodes of each acceptance class verify in a step of `decodes`
    /// (cached tokens, class), under adaptive verification: of the cut-offs of the slots ranked
    /// by survival probability (nothing verified first), the one with the most expected tokens
    /// per nanosecond of the step on `target` (the earliest on a tie: fewer tokens for the same
    /// throughput; the step priced at the profile context, when one is set); every class its
    /// whole k (its own, where it drafts fewer) when there is no decode. Classes without a decode
    /// in the step get what the cut-off gives their slots.
    pub fn adaptive_plan(&self, target: &CostModel, decodes: &[(u64, usize)]) -> Vec<u32> {
        if decodes.is_empty() {
            return (0..self.num_classes()).map(|c| self.class_k(c).min(self.k())).collect();
        }
        let decodes = &*self.as_profiled(decodes);
        let plans = self.candidate_plans(decodes);
        self.best_plan(target, decodes, plans, |c, j| self.expected_verified_tokens(c, j))
    }

    /// Of `plans` (the draft tokens each class verifies) for a step of `decodes`, the one with
    /// the most expected tokens per nanosecond of that step on `target`, the earliest on a tie;
    /// `tokens(c, j)` is what a decode of class c emits verifying j drafts, averaged over the
    /// decodes by class (with one class its own expectation: count / n = 1).
    fn best_plan(&self, target: &CostModel, decodes: &[(u64, usize)], plans: Vec<Vec<u32>>, tokens: impl Fn(usize, u32) -> f64) -> Vec<u32> {
        let n = decodes.len() as f64;
        let mut count = vec![0usize; self.num_classes()];
        decodes.iter().for_each(|&(_, c)| count[c] += 1);
        let (mut best, mut best_rate) = (0, f64::NEG_INFINITY);
        for (i, secs) in self.step_seconds_by_plan(target, decodes, &plans).into_iter().enumerate() {
            let ns = secs_to_ns(secs).max(1);
            let expected: f64 = (0..self.num_classes()).filter(|&c| count[c] > 0).map(|c| count[c] as f64 / n * tokens(c, plans[i][c])).sum();
            let rate = expected / ns as f64;
            if rate > best_rate {
                (best, best_rate) = (i, rate);
            }
        }
        plans.into_iter().nth(best).expect("a candidate")
    }

    /// The tokens a decode of class `c` emits on average verifying at most `j` drafts: its own
    /// and the survival of each slot verified, weighed, when draft lengths vary, by the chance
    /// the proposal reaches it.
    fn expected_verified_tokens(&self, c: usize, j: u32) -> f64 {
        let rates = &self.class_rates(c)[..j as usize];
        if !self.varies_draft_length() {
            return expected_tokens_per_step(rates);
        }
        let mut survival = 1.0;
        rates.iter().zip(self.reaches()).fold(1.0, |t, (a, r)| {
            survival *= a;
            t + survival * r
        })
    }

    /// The candidate plans (draft tokens verified by each class) for a step of `decodes`:
    /// nothing verified, then each cut-off of the slots of the classes present ranked by
    /// survival probability a_1 ... a_i (higher first), then by position i (earlier first) —
    /// verifying every slot ranked at or above it — without repeats. With one class: j = 0..=k.
    pub(super) fn candidate_plans(&self, decodes: &[(u64, usize)]) -> Vec<Vec<u32>> {
        let classes = self.num_classes();
        let k = self.k() as usize;
        let reaches = self.reaches();
        // Each class's slots: its own draft positions (k, or its shorter drafts), each scored by
        // its survival and the chance the proposal reaches it (1 unless lengths vary).
        let survival: Vec<Vec<f64>> = (0..classes)
            .map(|c| {
                self.class_rates(c)[..(self.class_k(c) as usize).min(k)]
                    .iter()
                    .scan(1.0, |p, a| {
                        *p *= a;
                        Some(*p)
                    })
                    .zip(reaches)
                    .map(|(s, r)| s * r)
                    .collect()
            })
            .collect();
        let mut present = vec![false; classes];
        decodes.iter().for_each(|&(_, c)| present[c] = true);
        let mut cuts: Vec<(f64, usize)> = (0..classes).filter(|&c| present[c]).flat_map(|c| survival[c].iter().enumerate().map(|(i, &s)| (s, i + 1))).collect();
        cuts.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        cuts.dedup();
        let mut plans = vec![vec![0u32; classes]];
        for (s, p) in cuts {
            let plan: Vec<u32> = survival.iter().map(|sv| sv.iter().enumerate().filter(|&(i, &si)| si > s || (si == s && i < p)).count() as u32).collect();
            if plans.last() != Some(&plan) {
                plans.push(plan);
            }
        }
        plans
    }

    /// The seconds of one step of `decodes` (cached tokens, class) under each of `plans` (the
    /// draft tokens each class verifies), under adaptive verification: [`Speculator::step`]'s
    /// to the bit (the same sums in the same order), with the proposer's steps after the first,
    /// which run over every decode whatever it verifies, priced once for all plans; when draft
    /// lengths vary each decode verifies at most its apportioned length.
    pub(super) fn step_seconds_by_plan(&self, target: &CostModel, decodes: &[(u64, usize)], plans: &[Vec<u32>]) -> Vec<f64> {
        let rest = target.empty_shape();
        let mut seqs: Vec<SpecSeq> = decodes.iter().map(|&(c, _)| SpecSeq { cached: c, k: 0 }).collect();
        // Under adaptive verification the proposer's step count and its steps 2.. do not
        // depend on the verified k.
        let steps = self.proposal_steps(&rest, &seqs);
        let later: Vec<f64> = (2..=steps).map(|s| self.draft_step(&rest, &seqs, s).seconds).collect();
        // Varying draft lengths: the step's lengths apportioned, once for all plans (k otherwise).
        let lengths: Vec<u32> = (0..decodes.len()).map(|d| self.apportioned_length(d, decodes.len())).collect();
        plans
            .iter()
            .map(|plan| {
                seqs.iter_mut().zip(decodes).zip(&lengths).for_each(|((s, &(_, c)), &len)| s.k = plan[c].min(len));
                let (shape, chunks) = self.verify_shape(&rest, &seqs);
                let mut secs = target.iteration_verify(&shape, &chunks).seconds;
                secs += self.lookup_seconds(&rest, &seqs);
                if steps >= 1 {
                    secs += self.draft_step(&rest, &seqs, 1).seconds;
                }
                later.iter().for_each(|t| secs += t);
                secs
            })
            .collect()
    }

    /// The draft tokens each of `decodes` (cached tokens, class) verifies in a steady step: the
    /// adaptive plan's for its class (learning from history, the plan for the classes'
    /// share-weighted survival), or the k a batch-size table gives after a step of as many
    /// requests (k without one), at most its class's.
    pub fn steady_k(&self, target: &CostModel, decodes: &[(u64, usize)]) -> Vec<u32> {
        if self.learns_from_history() {
            let plan = self.history_plan(target, decodes, &self.share_weighted_survival());
            decodes.iter().map(|&(_, c)| plan[c]).collect()
        } else if self.adaptive {
            let plan = self.adaptive_plan(target, decodes);
            decodes.iter().map(|&(_, c)| plan[c]).collect()
        } else {
            let k = self.k_after(decodes.len());
            decodes.iter().map(|&(_, c)| k.min(self.class_k(c))).collect()
        }
    }
}

#[cfg(test)]
#[path = "adaptive_verification_tests.rs"]
mod tests;
