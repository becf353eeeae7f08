//! Unit tests of adaptive verification: the verified k against a brute-force scan of the
//! step's tokens per nanosecond, the proposer's full drafts, and the settings' checks.

use super::*;
use crate::cost::fixtures::*;
use crate::cost::speculative_config::{AcceptanceRate, SpecMethod, SpeculativeConfig};
use crate::error::Error;
use crate::model::fixtures::{llama2_70b, llama2_7b};
use crate::cost::InstanceSpec;

/// Llama-2-70B on 4 H100s at peak rates, a Llama-2-7B draft proposing `k` at `a`, verifying
/// adaptively or not.
fn draft(k: u32, a: AcceptanceRate, adaptive: bool) -> (CostModel, Speculator) {
    proposer(SpecMethod::Draft, k, a, adaptive)
}

/// Llama-2-70B on 4 H100s at peak rates, `method` proposing `k` at `a`, verifying adaptively or not.
fn proposer(method: SpecMethod, k: u32, a: AcceptanceRate, adaptive: bool) -> (CostModel, Speculator) {
    let spec = InstanceSpec::new(llama2_70b(), h100(), ideal(), 4);
    let draft = (method == SpecMethod::Draft).then(llama2_7b);
    let cfg = SpeculativeConfig { method, draft_model: draft, num_speculative_tokens: k, acceptance_rate: Some(a), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: adaptive, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    (CostModel::build(&spec).unwrap(), Speculator::build(&cfg, &spec).unwrap())
}

/// `n` decodes with 1023 cached tokens, each verifying `j` draft tokens.
fn seqs(n: usize, j: u32) -> Vec<SpecSeq> {
    vec![SpecSeq { cached: 1023, k: j }; n]
}

/// Expected tokens per nanosecond of a step of `n` decodes verifying `j` drafts each.
fn rate(cm: &CostModel, sp: &Speculator, n: usize, j: u32) -> f64 {
    expected_tokens_per_step(&sp.class_rates(0)[..j as usize]) / secs_to_ns(sp.step(cm, &cm.empty_shape(), &seqs(n, j)).seconds) as f64
}

#[test]
fn the_verified_k_is_the_one_with_the_most_tokens_per_second() {
    // An EAGLE head at 0.8 (its drafting cheap beside the 70B target's verify pass).
    let (cm, sp) = proposer(SpecMethod::Eagle, 4, AcceptanceRate::Constant(0.8), true);
    let mut chosen = Vec::new();
    for n in [1, 8, 64, 256, 1024] {
        let k = sp.adaptive_k(&cm, &vec![1023; n]);
        let best = (0..=4).max_by(|&a, &b| rate(&cm, &sp, n, a).total_cmp(&rate(&cm, &sp, n, b)).then(b.cmp(&a))).unwrap();
        assert_eq!(k, best, "{n} decodes");
        assert_eq!(sp.steady_k(&cm, &vec![(1023, 0); n]), vec![k; n]);
        chosen.push(k);
    }
    // Memory-bound at small batches: all four verified; compute-bound at large ones: fewer.
    assert_eq!(chosen[0], 4, "{chosen:?}");
    assert!(chosen.windows(2).all(|w| w[0] >= w[1]), "{chosen:?}");
    assert!(chosen[4] < 4, "{chosen:?}");
    // No decode: the whole k.
    assert_eq!(sp.adaptive_k(&cm, &[]), 4);
    // A Llama-2-7B draft's four steps (no GQA: its KV reads grow with the batch) cost the same
    // whatever is verified, which makes verifying cheaper by comparison: at 0.8 all four are
    // verified at every batch size, at 0.6 two from 256 decodes on.
    let (cm, sp) = draft(4, AcceptanceRate::Constant(0.8), true);
    assert!([1, 64, 1024].iter().all(|&n| sp.adaptive_k(&cm, &vec![1023; n]) == 4));
    let (cm, sp) = draft(4, AcceptanceRate::Constant(0.6), true);
    assert_eq!([1, 64, 256, 1024].map(|n| sp.adaptive_k(&cm, &vec![1023; n])), [4, 4, 2, 2]);
}

#[test]
fn positions_that_are_never_accepted_are_never_verified() {
    // a = [1, 1, 0, 0]: slots 3 and 4 add no token, only verify cost.
    let (cm, sp) = draft(4, AcceptanceRate::PerPosition(vec![1.0, 1.0, 0.0, 0.0]), true);
    assert_eq!(sp.adaptive_k(&cm, &[1023]), 2);
    // Nothing ever accepted: verify nothing.
    let (cm, sp) = draft(4, AcceptanceRate::Constant(0.0), true);
    assert_eq!(sp.adaptive_k(&cm, &[1023; 8]), 0);
}

#[test]
fn the_proposer_drafts_all_k_whatever_the_verify_pass_checks() {
    // Verifying j of k = 4, the step costs the same verify pass as a proposer drafting j, plus
    // the draft steps j + 1..=4 over every sequence (with j = 0: all four, as a proposer of 4
    // whose first step runs over the plain decodes).
    let (cm, adaptive) = draft(4, AcceptanceRate::Constant(0.8), true);
    let (_, fixed) = draft(4, AcceptanceRate::Constant(0.8), false);
    let rest = cm.empty_shape();
    for j in 0..=4 {
        let s = seqs(16, j);
        assert_eq!(adaptive.proposal_steps(&rest, &s), 4);
        let extra: f64 = (j.max(1) + 1..=4).map(|step| fixed.draft_step(&rest, &seqs(16, 4), step).seconds).sum();
        let (a, f) = (adaptive.step(&cm, &rest, &s).seconds, fixed.step(&cm, &rest, &s).seconds);
        assert!((a - (f + extra)).abs() < 1e-12 * a, "j = {j}: {a} against {f} + {extra}");
    }
    // A batch without a decode (a prompt's chunk) runs the proposer once, as before.
    let mut prompt = cm.empty_shape();
    prompt.add_prefill(512, 0, true);
    assert_eq!(adaptive.proposal_steps(&prompt, &[]), 1);
}

#[test]
fn adaptive_verification_refuses_what_it_cannot_trim() {
    let path = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let base = SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::Constant(0.7)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: true, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    assert!(base.class_rates().is_ok());
    let (p, m) = path(SpeculativeConfig { num_speculative_tokens_per_batch_size: Some(vec![[1, 8, 3]]), ..base.clone() });
    assert_eq!(p, "speculative.enable_adaptive_verification");
    assert!(m.contains("num_speculative_tokens_per_batch_size"), "{m}");
    let (p, m) = path(SpeculativeConfig { method: SpecMethod::Ngram, ..base.clone() });
    assert_eq!(p, "speculative.enable_adaptive_verification");
    assert!(m.contains("ngram"), "{m}");
    let tree = SpeculativeConfig { speculative_token_tree: Some(vec![vec![0], vec![1], vec![0, 0], vec![1, 0]]), num_speculative_tokens: 4, ..base.clone() };
    assert_eq!(path(tree).0, "speculative.enable_adaptive_verification");
}

#[test]
fn the_candidates_are_priced_as_a_step_is_to_the_bit() {
    // The later draft steps priced once for all j give each candidate exactly `step`'s seconds.
    for (method, n) in [(SpecMethod::Draft, 1), (SpecMethod::Eagle, 64), (SpecMethod::Eagle3, 300), (SpecMethod::Suffix, 16)] {
        let (cm, sp) = proposer(method, 4, AcceptanceRate::Constant(0.7), true);
        let cached: Vec<u64> = (0..n).map(|i| 500 + 37 * i as u64).collect();
        let decodes: Vec<(u64, usize)> = cached.iter().map(|&c| (c, 0)).collect();
        let by_j = sp.step_seconds_by_plan(&cm, &decodes, &sp.candidate_plans(&decodes));
        assert_eq!(by_j.len(), 5);
        for (j, secs) in by_j.into_iter().enumerate() {
            let seqs: Vec<SpecSeq> = cached.iter().map(|&c| SpecSeq { cached: c, k: j as u32 }).collect();
            assert_eq!(secs, sp.step(&cm, &cm.empty_shape(), &seqs).seconds, "{method:?}, {n} decodes, j = {j}");
        }
    }
}

#[test]
fn scored_by_a_history_that_matches_the_rates_the_plan_is_the_rates_plan() {
    // One class at 0.8: its survival 0.8, 0.64, 0.512, 0.41 as the history's estimate gives the
    // same j as scoring by the rates, at every batch size; a history that has seen nothing (every
    // position survives) verifies more, never fewer; one that has seen every first draft fail
    // verifies none.
    let (cm, sp) = proposer(SpecMethod::Eagle, 4, AcceptanceRate::Constant(0.8), true);
    let survival: Vec<f64> = (1..=4).map(|i| 0.8f64.powi(i)).collect();
    for n in [1, 8, 64, 256, 1024] {
        let decodes = vec![(1023u64, 0usize); n];
        let by_rates = sp.adaptive_plan(&cm, &decodes);
        assert_eq!(sp.history_plan(&cm, &decodes, &survival), by_rates, "n = {n}");
        assert!(sp.history_plan(&cm, &decodes, &[1.0; 4])[0] >= by_rates[0], "n = {n}");
        assert_eq!(sp.history_plan(&cm, &decodes, &[0.0; 4]), vec![0], "n = {n}");
    }
    // No decode: the whole k.
    assert_eq!(sp.history_plan(&cm, &[], &[0.0; 4]), vec![4]);
}
