//! Unit tests of draft lengths that vary step by step (`draft_lengths`): an n-gram lookup whose
//! matches hold 1 to k tokens.

use super::*;

/// `ngram_instance` proposing lengths with probabilities `lengths` when it matches.
fn varying(lengths: Vec<f64>, a: f64, matched: f64, seed: u64) -> Instance {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    let cfg = SpeculativeConfig { method: SpecMethod::Ngram, draft_model: None, num_speculative_tokens: lengths.len() as u32, acceptance_rate: Some(AcceptanceRate::Constant(a)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: Some(matched), num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: Some(lengths) };
    Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap().with_speculation(Some(&cfg), &spec, seed, "instance0.speculative").unwrap()
}

#[test]
fn a_proposal_holds_a_length_drawn_each_step_and_every_request_still_emits_its_output() {
    // Every step matches; half the proposals hold 1 token, a quarter 2, an eighth 3 and 4: 1.875
    // on average. Every draft accepted: each step emits its proposal's length plus one.
    let mut inst = varying(vec![0.5, 0.25, 0.125, 0.125], 1.0, 1.0, 5);
    let mut reqs = vec![Request::new(0, 100, 4000)];
    let (decodes, _, gaps) = run(&mut inst, &mut reqs);
    let s = inst.speculation().unwrap().stats.clone();
    let per_draft = s.draft_tokens as f64 / s.drafts as f64;
    assert!((per_draft - 1.875).abs() < 0.06, "{per_draft} draft tokens per proposal");
    assert_eq!(s.accepted_tokens, s.draft_tokens);
    // Position i is verified by the proposals of i tokens or more: 1, 0.5, 0.25, 0.125 of them.
    for (i, share) in [1.0, 0.5, 0.25, 0.125].into_iter().enumerate() {
        let got = s.draft_tokens_per_position[i] as f64 / s.drafts as f64;
        assert!((got - share).abs() < 0.04, "position {i}: {got}");
    }
    assert_eq!(decodes + s.accepted_tokens, 3999);
    assert_eq!(gaps, decodes);
    // All at k: every proposal holds its whole grant (k but near the output's end).
    let mut all = varying(vec![0.0, 0.0, 1.0], 1.0, 1.0, 3);
    let mut reqs = vec![Request::new(0, 500, 300)];
    let (steps_all, _, _) = run(&mut all, &mut reqs);
    let s = all.speculation().unwrap().stats.clone();
    assert_eq!((steps_all, s.draft_tokens), (75, 224), "299 tokens after the first, four a step");
    // Shorter proposals: more steps at the same acceptance (1 + 1.875 tokens a step: about 104).
    let mut short = varying(vec![0.5, 0.25, 0.125, 0.125], 1.0, 1.0, 3);
    let mut reqs = vec![Request::new(0, 500, 300)];
    let (steps_short, _, _) = run(&mut short, &mut reqs);
    assert!((100..=110).contains(&steps_short), "{steps_short} steps");
}
