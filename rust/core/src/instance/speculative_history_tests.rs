//! Unit tests of adaptive verification learning from history (`adaptive_estimate: history`):
//! an instance verifies every draft until it has seen a position fail often enough, then leaves
//! it out.

use super::*;
use crate::cost::AdaptiveEstimate;

#[test]
fn learning_from_history_verifies_all_at_first_then_leaves_out_the_position_that_fails() {
    // An EAGLE head drafting 3 at [1, 1, 0], eight requests of 100 + 61 tokens. Scored by the
    // rates, no step verifies the third draft; learning from history the first decode steps
    // verify all three (nothing observed yet: every position taken to survive) and see the
    // third rejected by all eight, until its estimate, (0 + 1) / (verified + 1), no longer pays
    // for its slot (12 steps of 8 decodes); the later steps verify two. Three tokens a step
    // either way: the same 20 steps, the early ones dearer.
    let cfg = |estimate| SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::PerPosition(vec![1.0, 1.0, 0.0])), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: true, adaptive_estimate: estimate, adaptive_profile_context: None, draft_lengths: None };
    let go = |estimate| {
        let mut inst = instance_with(Some(cfg(estimate)), 3);
        let mut reqs: Vec<Request> = (0..8).map(|_| Request::new(0, 100, 61)).collect();
        let (steps, end, _) = run(&mut inst, &mut reqs);
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
        let s = inst.speculation().unwrap().stats.clone();
        (steps, end, s.draft_tokens_per_position, s.accepted_per_position)
    };
    let (r_steps, r_end, r_drafted, r_accepted) = go(AdaptiveEstimate::Request);
    let (h_steps, h_end, h_drafted, h_accepted) = go(AdaptiveEstimate::History);
    assert_eq!((r_steps, h_steps), (20, 20));
    assert_eq!(r_drafted, vec![160, 160, 0]);
    assert_eq!(h_drafted, vec![160, 160, 96], "the third position verified in the first 12 decode steps only");
    assert_eq!((r_accepted, h_accepted), (vec![160, 160, 0], vec![160, 160, 0]));
    assert!(r_end < h_end, "scored by rates {r_end} ns, learned {h_end} ns");
}
