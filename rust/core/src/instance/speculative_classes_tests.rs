//! Unit tests of acceptance classes on an instance: each request draws with its class's rates,
//! the counters by class, and adaptive verification verifying by class.

use super::*;
use crate::cost::{AcceptanceClass, RequestClasses};

/// An EAGLE head drafting 3, half the requests accepting every draft, half none.
fn all_or_nothing(adaptive: bool) -> SpeculativeConfig {
    let class = |share, a| AcceptanceClass { name: None, share, acceptance_rate: AcceptanceRate::Constant(a), num_speculative_tokens: None };
    SpeculativeConfig {
        method: SpecMethod::Eagle,
        draft_model: None,
        num_speculative_tokens: 3,
        acceptance_rate: None,
        acceptance_classes: Some(vec![class(0.5, 1.0), class(0.5, 0.0)]),
        draft_vocab_size: None,
        proposal_rate: None,
        num_speculative_tokens_per_batch_size: None,
        speculative_token_tree: None,
        enable_adaptive_verification: adaptive, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None
    }
}

/// Runs 32 requests of 100 + 61 tokens arriving together: the requests, the end and the counters.
fn go(adaptive: bool) -> (Vec<Request>, Nanos, SpecStats) {
    let mut inst = instance_with(Some(all_or_nothing(adaptive)), 5);
    let mut reqs: Vec<Request> = (0..32).map(|_| Request::new(0, 100, 61)).collect();
    let (_, end, _) = run(&mut inst, &mut reqs);
    assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == r.output), "every request exactly its output");
    (reqs, end, inst.speculation().unwrap().stats.clone())
}

#[test]
fn each_request_accepts_at_its_class_rates() {
    let classes = RequestClasses::new(5, [0.5, 0.5]);
    let class: Vec<usize> = (0..32).map(|r| classes.class_of(r)).collect();
    let n1 = class.iter().filter(|&&c| c == 1).count() as u64;
    assert!((8..=24).contains(&n1), "{class:?}");
    let (reqs, end, s) = go(false);
    // Class 0 accepts all three drafts a step (15 steps of four tokens after the prompt's),
    // class 1 none (60 steps of one).
    assert_eq!(s.accepted_per_class[0], s.draft_tokens_per_class[0]);
    assert_eq!(s.accepted_per_class[1], 0);
    assert_eq!(s.accepted_per_class[0], (32 - n1) * 45, "60 tokens after the first: 15 steps of 3 accepted + 1");
    assert_eq!(s.draft_tokens_per_class.iter().sum::<u64>(), s.draft_tokens);
    assert_eq!(s.accepted_per_class.iter().sum::<u64>(), s.accepted_tokens);
    let done = |c: usize| reqs.iter().zip(&class).filter(|&(_, &k)| k == c).map(|(r, _)| r.completion).max().unwrap();
    assert!(done(0) < done(1), "the accepting class finishes first");
    assert_eq!(done(1), end);
    // The same seed, the same run.
    let (again, end_again, s_again) = go(false);
    assert_eq!((end_again, s_again), (end, s.clone()));
    assert!(reqs.iter().zip(&again).all(|(a, b)| a.completion == b.completion));

    // Adaptive verification: class 1's drafts are never verified (they would only cost), class
    // 0's all three; the same tokens, in less time.
    let (_, a_end, a) = go(true);
    assert_eq!(a.draft_tokens_per_class[1], 0, "{a:?}");
    assert_eq!(a.accepted_per_class[0], s.accepted_per_class[0]);
    assert_eq!(a.draft_tokens_per_class[0], s.draft_tokens_per_class[0]);
    assert!(a_end < end, "adaptive {a_end} ns, all verified {end} ns");
}

#[test]
fn a_class_with_shorter_drafts_proposes_no_more_than_its_own_k() {
    // Both classes accept everything; the second drafts at most one token a step: its requests
    // emit two tokens a step (30 steps for 60 tokens), the first's four (15 steps).
    let mut cfg = all_or_nothing(false);
    let classes = cfg.acceptance_classes.as_mut().unwrap();
    classes[1].acceptance_rate = AcceptanceRate::Constant(1.0);
    classes[1].num_speculative_tokens = Some(1);
    for adaptive in [false, true] {
        let mut inst = instance_with(Some(SpeculativeConfig { enable_adaptive_verification: adaptive, ..cfg.clone() }), 5);
        let mut reqs: Vec<Request> = (0..32).map(|_| Request::new(0, 100, 61)).collect();
        run(&mut inst, &mut reqs);
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
        let s = &inst.speculation().unwrap().stats;
        let n1 = (0..32).filter(|&r| RequestClasses::new(5, [0.5, 0.5]).class_of(r) == 1).count() as u64;
        assert_eq!((s.draft_tokens_per_class[1], s.accepted_per_class[1]), (n1 * 30, n1 * 30), "adaptive {adaptive}");
        assert_eq!((s.draft_tokens_per_class[0], s.accepted_per_class[0]), ((32 - n1) * 45, (32 - n1) * 45), "adaptive {adaptive}");
    }
}
