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
//! acceptance estimates learned online, and scans a grid of total query lengths profiled at
//! startup (`B * q` for q = 1..=k + 1, each decode contributing one token of its own). Here the
//! estimates are the configured rates, equal for every decode at a position (what an online
//! estimator converges to when acceptance does not depend on the request), so the best slots for
//! any budget on that grid verify the same j for every decode; and the step is priced by the
//! cost model at the decodes' actual contexts, as a profile taken at those contexts would.

use super::speculative::{expected_tokens_per_step, SpecSeq, Speculator};
use super::CostModel;
use crate::time::secs_to_ns;

impl Speculator {
    /// Whether the verify pass checks a chosen number of the draft tokens (adaptive
    /// verification) rather than all that the scheduler grants.
    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// The draft tokens each decode verifies in a step of decodes whose cached tokens are
    /// `cached` (one entry per decode), under adaptive verification: the j in 0..=k with the most
    /// expected tokens per nanosecond of the step on `target` (the smallest such j on a tie);
    /// k when there is no decode.
    pub fn adaptive_k(&self, target: &CostModel, cached: &[u64]) -> u32 {
        if cached.is_empty() {
            return self.k();
        }
        let (mut best, mut best_rate) = (0, f64::NEG_INFINITY);
        for (j, secs) in self.step_seconds_by_verified(target, cached).into_iter().enumerate() {
            let ns = secs_to_ns(secs).max(1);
            let rate = expected_tokens_per_step(&self.rates()[..j]) / ns as f64;
            if rate > best_rate {
                (best, best_rate) = (j as u32, rate);
            }
        }
        best
    }

    /// The seconds of one step of decodes at `cached` verifying j draft tokens each, for j in
    /// 0..=k, under adaptive verification: [`Speculator::step`]'s to the bit (the same sums in
    /// the same order), with the proposer's steps after the first, which run over every decode
    /// whatever it verifies, priced once for all j.
    pub(super) fn step_seconds_by_verified(&self, target: &CostModel, cached: &[u64]) -> Vec<f64> {
        let rest = target.empty_shape();
        let mut seqs: Vec<SpecSeq> = cached.iter().map(|&c| SpecSeq { cached: c, k: 0 }).collect();
        // Under adaptive verification the proposer's step count and its steps 2.. do not
        // depend on the verified k.
        let steps = self.proposal_steps(&rest, &seqs);
        let later: Vec<f64> = (2..=steps).map(|s| self.draft_step(&rest, &seqs, s).seconds).collect();
        (0..=self.k())
            .map(|j| {
                seqs.iter_mut().for_each(|s| s.k = j);
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

    /// The draft tokens a steady step of decodes at `cached` verifies: the adaptive choice, or
    /// the k a batch-size table gives after a step of as many requests (k without one).
    pub fn steady_k(&self, target: &CostModel, cached: &[u64]) -> u32 {
        if self.adaptive {
            self.adaptive_k(target, cached)
        } else {
            self.k_after(cached.len())
        }
    }
}

#[cfg(test)]
#[path = "adaptive_verification_tests.rs"]
mod tests;
