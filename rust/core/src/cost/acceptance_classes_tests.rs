//! Unit tests of acceptance classes: requests drawn into classes by their shares, the settings'
//! checks, the expected tokens over the classes, and adaptive verification's plans by class.

use super::*;
use crate::cost::fixtures::*;
use crate::cost::speculative::SpecSeq;
use crate::cost::speculative_config::{AcceptanceClass, AcceptanceRate, SpecMethod, SpeculativeConfig};
use crate::cost::{CostModel, InstanceSpec};
use crate::error::Error;
use crate::model::fixtures::llama2_70b;
use crate::scheduler::DraftGrant;
use crate::time::secs_to_ns;

fn class(share: f64, a: AcceptanceRate) -> AcceptanceClass {
    AcceptanceClass { name: None, share, acceptance_rate: a, num_speculative_tokens: None }
}

/// An EAGLE head proposing 4 tokens with `classes`, verifying adaptively or not.
fn eagle(classes: Vec<AcceptanceClass>, adaptive: bool) -> SpeculativeConfig {
    SpeculativeConfig {
        method: SpecMethod::Eagle,
        draft_model: None,
        num_speculative_tokens: 4,
        acceptance_rate: None,
        acceptance_classes: Some(classes),
        draft_vocab_size: None,
        proposal_rate: None,
        num_speculative_tokens_per_batch_size: None,
        speculative_token_tree: None,
        enable_adaptive_verification: adaptive, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None
    }
}

/// Llama-2-70B on 4 H100s at peak rates and the speculator of `cfg`.
fn built(cfg: &SpeculativeConfig) -> (CostModel, Speculator) {
    let spec = InstanceSpec::new(llama2_70b(), h100(), ideal(), 4);
    (CostModel::build(&spec).unwrap(), Speculator::build(cfg, &spec).unwrap())
}

#[test]
fn requests_fall_into_classes_by_their_shares_the_same_way_every_time() {
    let classes = RequestClasses::new(7, [0.3, 0.5, 0.2]);
    let n = 100_000u32;
    let mut count = [0u32; 3];
    (0..n).for_each(|r| count[classes.class_of(r)] += 1);
    for (c, want) in [0.3, 0.5, 0.2].into_iter().enumerate() {
        assert!((count[c] as f64 / n as f64 - want).abs() < 0.005, "class {c}: {count:?}");
    }
    // A request's class depends on the seed and its index alone.
    let again = RequestClasses::new(7, [0.3, 0.5, 0.2]);
    assert!((0..1000).all(|r| classes.class_of(r) == again.class_of(r)));
    let other = RequestClasses::new(8, [0.3, 0.5, 0.2]);
    assert!((0..1000).any(|r| classes.class_of(r) != other.class_of(r)));
    // One class: no draw.
    assert!((0..1000).all(|r| RequestClasses::new(7, [1.0]).class_of(r) == 0));
}

#[test]
fn a_request_the_workload_names_is_in_that_class_the_others_are_drawn() {
    let drawn = RequestClasses::new(7, [0.3, 0.5, 0.2]);
    // Every even request named: class 2 (the rarest); odd ones left to the draw.
    let given: Arc<[u8]> = (0..1000).map(|r| if r % 2 == 0 { 2 } else { DRAWN_CLASS }).collect();
    let named = drawn.clone().with_given(given).unwrap();
    assert!((0..1000).step_by(2).all(|r| named.class_of(r) == 2));
    assert!((1..1000).step_by(2).all(|r| named.class_of(r) == drawn.class_of(r)));
    // Past the given entries (none there): drawn.
    assert_eq!(named.class_of(5000), drawn.class_of(5000));
    // A class the pool does not have is refused, naming the first such request.
    match drawn.with_given(Arc::from(vec![0u8, 1, 3, 7])) {
        Err(Error::Config { path, message }) => assert_eq!((path.as_str(), message.contains("request 2 is given class 3")), ("workload.acceptance_class", true), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_classes_are_checked_naming_the_field() {
    let path = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let good = eagle(vec![class(0.25, AcceptanceRate::Constant(0.9)), class(0.75, AcceptanceRate::PerPosition(vec![0.6, 0.5, 0.4, 0.3]))], false);
    assert_eq!(good.class_rates().unwrap(), vec![(0.25, vec![0.9; 4]), (0.75, vec![0.6, 0.5, 0.4, 0.3])]);
    let both = SpeculativeConfig { acceptance_rate: Some(AcceptanceRate::Constant(0.8)), ..good.clone() };
    assert_eq!(path(both).0, "speculative.acceptance_classes");
    let neither = SpeculativeConfig { acceptance_classes: None, ..good.clone() };
    assert_eq!(path(neither).0, "speculative.acceptance_rate");
    assert_eq!(path(eagle(vec![], false)).0, "speculative.acceptance_classes");
    assert_eq!(path(eagle(vec![class(1.0, AcceptanceRate::Constant(0.9)), class(0.0, AcceptanceRate::Constant(0.5))], false)).0, "speculative.acceptance_classes.1.share");
    let (p, m) = path(eagle(vec![class(0.5, AcceptanceRate::Constant(0.9)), class(0.4, AcceptanceRate::Constant(0.5))], false));
    assert_eq!(p, "speculative.acceptance_classes");
    assert!(m.contains("sum to 1"), "{m}");
    assert_eq!(path(eagle(vec![class(1.0, AcceptanceRate::PerPosition(vec![0.9, 0.8, 1.2, 0.5]))], false)).0, "speculative.acceptance_classes.0.acceptance_rate.2");
    assert_eq!(path(eagle(vec![class(1.0, AcceptanceRate::PerPosition(vec![0.9, 0.8]))], false)).0, "speculative.acceptance_classes.0.acceptance_rate");
    // A class's own k: 1 to the pool's, not with a tree.
    let short = |kc| eagle(vec![class(0.5, AcceptanceRate::Constant(0.9)), AcceptanceClass { num_speculative_tokens: Some(kc), ..class(0.5, AcceptanceRate::Constant(0.5)) }], false);
    assert_eq!(short(2).class_draft_tokens(), vec![4, 2]);
    assert!(short(4).class_rates().is_ok());
    assert_eq!(path(short(0)).0, "speculative.acceptance_classes.1.num_speculative_tokens");
    assert_eq!(path(short(5)).0, "speculative.acceptance_classes.1.num_speculative_tokens");
}

#[test]
fn a_step_emits_the_classes_tokens_weighted_by_their_shares() {
    let cfg = eagle(vec![class(0.25, AcceptanceRate::Constant(1.0)), class(0.75, AcceptanceRate::Constant(0.5))], false);
    let (_, sp) = built(&cfg);
    assert_eq!(sp.num_classes(), 2);
    // Two positions: 0.25 x (1 + 1 + 1) + 0.75 x (1 + 0.5 + 0.25) = 0.75 + 1.3125.
    assert_eq!(sp.expected_tokens(2), 2.0625);
    assert_eq!(sp.expected_tokens(0), 1.0);
    // Eight decodes apportioned by share: two of the first class, six of the second.
    assert_eq!(sp.apportioned_classes(8), vec![0, 0, 1, 1, 1, 1, 1, 1]);
}

#[test]
fn adaptive_candidates_cut_the_slots_ranked_by_survival() {
    // Survival: class 0 at 0.9 per position: 0.9, 0.81, 0.729, 0.6561; class 1 at 0.5: 0.5,
    // 0.25, 0.125, 0.0625. Ranked: 0's four slots, then 1's.
    let cfg = eagle(vec![class(0.5, AcceptanceRate::Constant(0.9)), class(0.5, AcceptanceRate::Constant(0.5))], true);
    let (_, sp) = built(&cfg);
    let both = [(1023, 0), (1023, 1)];
    let plans = sp.candidate_plans(&both);
    let want: Vec<Vec<u32>> = vec![vec![0, 0], vec![1, 0], vec![2, 0], vec![3, 0], vec![4, 0], vec![4, 1], vec![4, 2], vec![4, 3], vec![4, 4]];
    assert_eq!(plans, want);
    // Only class 1 in the step: its own slots are the candidates; class 0's slots rank above
    // every cut-off, so it gets all four.
    assert_eq!(sp.candidate_plans(&[(1023, 1)]), vec![vec![0, 0], vec![4, 1], vec![4, 2], vec![4, 3], vec![4, 4]]);
    // Interleaved survival: 0.9 vs 0.95 then 0.5: slots 0.95 (1,1), 0.9 (0,1), 0.81 (0,2), 0.475 (1,2)...
    let cfg = eagle(vec![class(0.5, AcceptanceRate::Constant(0.9)), class(0.5, AcceptanceRate::PerPosition(vec![0.95, 0.5, 0.5, 0.5]))], true);
    let (_, sp) = built(&cfg);
    assert_eq!(&sp.candidate_plans(&both)[..4], &[vec![0, 0], vec![0, 1], vec![1, 1], vec![2, 1]]);
}

#[test]
fn a_class_with_shorter_drafts_has_no_slot_past_its_k() {
    // The second class drafts at most two: its slots 3 and 4 are never candidates.
    let short = AcceptanceClass { num_speculative_tokens: Some(2), ..class(0.5, AcceptanceRate::Constant(1.0)) };
    let (cm, sp) = built(&eagle(vec![class(0.5, AcceptanceRate::Constant(0.5)), short], true));
    assert!(sp.caps_by_class() && sp.class_k(1) == 2);
    // With no decode, every class its own whole k.
    assert_eq!(sp.adaptive_plan(&cm, &[]), vec![4, 2]);
    let plans = sp.candidate_plans(&[(1023, 0), (1023, 1)]);
    assert_eq!(plans, vec![vec![0, 0], vec![0, 1], vec![0, 2], vec![1, 2], vec![2, 2], vec![3, 2], vec![4, 2]]);
}

#[test]
fn with_classes_adaptive_verification_verifies_more_of_the_class_that_accepts_more() {
    // 256 decodes, a third accepting 0.9, the rest 0.4: the chosen plan is the best candidate
    // by tokens per nanosecond (a brute-force scan), and verifies more of the first class's drafts.
    let cfg = eagle(vec![class(1.0 / 3.0, AcceptanceRate::Constant(0.9)), class(2.0 / 3.0, AcceptanceRate::Constant(0.4))], true);
    let (cm, sp) = built(&cfg);
    let decodes: Vec<(u64, usize)> = sp.apportioned_classes(256).into_iter().map(|c| (1023, c)).collect();
    let plan = sp.adaptive_plan(&cm, &decodes);
    let rate = |p: &[u32]| {
        let seqs: Vec<SpecSeq> = decodes.iter().map(|&(cached, c)| SpecSeq { cached, k: p[c] }).collect();
        let tokens: f64 = decodes.iter().map(|&(_, c)| crate::cost::expected_tokens_per_step(&sp.class_rates(c)[..p[c] as usize])).sum::<f64>() / 256.0;
        tokens / secs_to_ns(sp.step(&cm, &cm.empty_shape(), &seqs).seconds) as f64
    };
    let best = sp.candidate_plans(&decodes).into_iter().max_by(|a, b| rate(a).total_cmp(&rate(b))).unwrap();
    assert_eq!(plan, best);
    assert!(plan[0] > plan[1], "{plan:?}");
    assert!(plan[0] >= 2 && plan[1] <= 1, "{plan:?}");
    // Two classes with the same rates plan as one class does.
    let same = eagle(vec![class(0.5, AcceptanceRate::Constant(0.6)), class(0.5, AcceptanceRate::Constant(0.6))], true);
    let (cm, sp) = built(&same);
    let one = eagle(vec![class(1.0, AcceptanceRate::Constant(0.6))], true);
    let (_, sp1) = built(&one);
    for n in [1, 64, 256] {
        let decodes: Vec<(u64, usize)> = sp.apportioned_classes(n).into_iter().map(|c| (1023, c)).collect();
        let k = sp1.adaptive_k(&cm, &vec![1023; n]);
        assert_eq!(sp.adaptive_plan(&cm, &decodes), vec![k, k], "{n} decodes");
    }
}

#[test]
fn a_grant_by_class_caps_each_request_at_its_class() {
    let classes = Arc::new(RequestClasses::new(3, [0.5, 0.5]));
    let caps = ClassCaps { classes: Arc::clone(&classes), caps: vec![4, 1] };
    let grant = DraftGrant { k: 4, by_class: Some(caps) };
    for r in 0..200 {
        assert_eq!(grant.for_request(r), [4, 1][classes.class_of(r)]);
    }
    assert_eq!(DraftGrant::uniform(3).for_request(17), 3);
    // Never above k.
    let capped = DraftGrant { k: 2, by_class: Some(ClassCaps { classes, caps: vec![4, 1] }) };
    assert!((0..200).all(|r| capped.for_request(r) <= 2));
}
