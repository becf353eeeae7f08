//! Unit tests of speculative decoding on an instance: accepted lengths against the formula,
//! determinism, every request emitting exactly its output, the KV lookahead.

use super::*;
use crate::calibration::Efficiency;
use crate::cost::{expected_tokens_per_step, AcceptanceRate, SpecMethod};
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use crate::instance::InstanceSetup;
use crate::memory::MemoryConfig;
use crate::model::fixtures::llama3_8b;
use crate::request::Status;
use crate::scheduler::SchedulerConfig;
use crate::time::Nanos;

fn gpu() -> GpuSpec {
    GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 }
}

/// Llama-3-8B on one H100 with an EAGLE head proposing `k` at `rates` (None: no speculation).
fn instance(k: u32, rates: Option<AcceptanceRate>, seed: u64) -> Instance {
    let cfg = rates.map(|a| SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: k, acceptance_rate: Some(a), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None });
    instance_with(cfg, seed)
}

/// Llama-3-8B on one GPU under vLLM's scheduler, speculating with `cfg` if given.
fn instance_with(cfg: Option<SpeculativeConfig>, seed: u64) -> Instance {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap().with_speculation(cfg.as_ref(), &spec, seed, "instance0.speculative").unwrap()
}

/// Runs `reqs` (all arriving at 0) to the end; returns the decode iterations, the end time and
/// the number of inter-token gaps reported.
fn run(inst: &mut Instance, reqs: &mut [Request]) -> (u64, Nanos, u64) {
    for (i, r) in reqs.iter_mut().enumerate() {
        inst.enqueue(i as u32, r);
    }
    let (mut now, mut decodes, mut gaps) = (0, 0, 0);
    while let Some(s) = inst.start_iteration(now, reqs) {
        decodes += (inst.batch().shape.decode_seqs > 0) as u64;
        now += s.compute_ns;
        inst.finish_iteration(now, reqs, |_, _, n| gaps += n);
        assert!(reqs.iter().all(|r| r.generated <= r.output), "never beyond the output length");
    }
    (decodes, now, gaps)
}

#[test]
fn the_mean_accepted_length_matches_the_formula() {
    for (rates, k) in [(AcceptanceRate::Constant(0.8), 4), (AcceptanceRate::Constant(0.5), 3), (AcceptanceRate::PerPosition(vec![0.9, 0.7, 0.5]), 3)] {
        let mut inst = instance(k, Some(rates.clone()), 7);
        let mut reqs = vec![Request::new(0, 100, 4000)];
        let (decodes, _, gaps) = run(&mut inst, &mut reqs);
        let expected = expected_tokens_per_step(inst.speculation().unwrap().speculator().class_rates(0));
        let s = &inst.speculation().unwrap().stats;
        let mean = 1.0 + s.accepted_tokens as f64 / s.drafts as f64;
        assert!((mean - expected).abs() < 0.05 * expected, "{rates:?}: mean {mean}, expected {expected}");
        // Every step but the prefill's emits accepted + 1 tokens in one chunk: one gap each.
        assert_eq!(gaps, decodes);
        assert!(((3999.0 / decodes as f64) - expected).abs() < 0.05 * expected, "{rates:?}: {decodes} steps");
        // Position i's acceptance given the earlier ones: its configured rate.
        let want = inst.speculation().unwrap().speculator().class_rates(0).to_vec();
        for (i, a) in want.iter().enumerate() {
            let got = s.accepted_per_position[i] as f64 / s.draft_tokens_per_position[i] as f64;
            let given = if i == 0 { 1.0 } else { s.accepted_per_position[i - 1] as f64 / s.draft_tokens_per_position[i - 1] as f64 };
            assert!((got / given - a).abs() < 0.05, "position {i}: {got} / {given} vs {a}");
        }
        assert_eq!(inst.stats.decode_tokens, 3999, "decoded tokens count the accepted ones");
    }
}

#[test]
fn every_request_emits_exactly_its_output_and_frees_its_kv() {
    let outputs = [1, 2, 3, 4, 5, 7, 50, 333];
    let mut inst = instance(4, Some(AcceptanceRate::Constant(0.9)), 3);
    let mut reqs: Vec<Request> = outputs.iter().map(|&o| Request::new(0, 200, o)).collect();
    run(&mut inst, &mut reqs);
    for (r, &o) in reqs.iter().zip(&outputs) {
        assert_eq!((r.status, r.generated, r.blocks), (Status::Finished, o, 0));
    }
    assert_eq!(inst.kv_usage().0, 0);
    let s = &inst.speculation().unwrap().stats;
    assert_eq!(s.draft_tokens, s.draft_tokens_per_position.iter().sum::<u64>());
    assert_eq!(s.lookahead_denied, 0);
}

#[test]
fn speculation_is_deterministic_by_seed_and_faster_at_batch_one() {
    let go = |seed, rates: Option<AcceptanceRate>| {
        let mut inst = instance(4, rates, seed);
        let mut reqs = vec![Request::new(0, 500, 300)];
        let (_, end, _) = run(&mut inst, &mut reqs);
        (end, inst.speculation().map(|s| s.stats.clone()))
    };
    let a = go(1, Some(AcceptanceRate::Constant(0.8)));
    assert_eq!(a, go(1, Some(AcceptanceRate::Constant(0.8))));
    assert_ne!(a.1, go(2, Some(AcceptanceRate::Constant(0.8))).1, "another seed draws other acceptances");
    let (plain, _) = go(1, None);
    assert!((plain as f64 / a.0 as f64) > 1.5, "plain {plain} ns vs speculative {} ns", a.0);
    // Nothing accepted: one token per step at a higher price.
    let (zero, _) = go(1, Some(AcceptanceRate::Constant(0.0)));
    assert!(zero > plain, "a = 0: {zero} ns vs plain {plain} ns");
}

#[test]
fn the_proposer_takes_its_memory_out_of_the_kv_cache() {
    let plain = instance(4, None, 1);
    let eagle = instance(4, Some(AcceptanceRate::Constant(0.5)), 1);
    let (p, e) = (plain.plan(), eagle.plan());
    let sp = eagle.speculation().unwrap().speculator();
    assert_eq!(e.weight_bytes, p.weight_bytes + sp.weight_bytes_per_gpu);
    assert_eq!(e.kv_bytes_per_token, p.kv_bytes_per_token * 33 / 32, "one more layer's KV");
    assert_eq!(e.num_blocks as u64, e.kv_bytes / (e.kv_bytes_per_token * 16));
    assert!(e.num_blocks < p.num_blocks);
}

#[test]
fn a_proposer_that_does_not_fit_is_a_capacity_error_naming_it() {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    // A 70B-shaped draft (Llama-2-70B's layers, Llama-3's vocabulary) on one 80 GB GPU.
    let big = crate::model::ModelSpec { vocab_size: 128256, ..crate::model::fixtures::llama2_70b() };
    let cfg = SpeculativeConfig { method: SpecMethod::Draft, draft_model: Some(big), num_speculative_tokens: 2, acceptance_rate: Some(AcceptanceRate::Constant(0.5)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    let inst = Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap();
    match inst.with_speculation(Some(&cfg), &spec, 1, "s") {
        Err(Error::Capacity { what, needed_bytes, available_bytes }) => {
            assert!(what.contains("speculative draft model llama-2-70b") && needed_bytes > available_bytes && available_bytes == 72_000_000_000, "{what}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a 70B draft beside an 8B target fits 72 GB"),
    }
}

/// Mixtral-8x7B on two H100s (tp 2) with its experts run by the expert runtime (all in HBM,
/// uniform routing), speculating with an MTP head of k = 3 at `rate` (None: no speculation); the
/// checkpoint is taken to ship one MTP module.
fn moe_instance(rate: Option<f64>) -> Instance {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let model = crate::model::ModelSpec { mtp_layers: 1, ..crate::model::fixtures::mixtral_8x7b() };
    let spec = InstanceSpec::new(model, gpu(), Efficiency::default(), 2);
    let experts = crate::moe::ExpertConfig::resident();
    let setup = crate::instance::ExpertSetup { config: &experts, trace: None, seed: 5, stream: "instance0.experts".into(), caches: None };
    let cfg = rate.map(|a| SpeculativeConfig { method: SpecMethod::Mtp, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::Constant(a)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None });
    Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: Some(setup) }).unwrap().with_speculation(cfg.as_ref(), &spec, 5, "instance0.speculative").unwrap()
}

#[test]
fn a_moe_verify_pass_routes_the_draft_tokens_through_the_expert_runtime() {
    // One request of 100 + 9 tokens. Plain: 100 prompt tokens, then 8 decodes of 1 token each
    // through the experts. Nothing accepted (a = 0): each of the 8 steps verifies
    // min(3, 8 - generated) + 1 tokens: 4, 4, 4, 4, 4, 3, 2, 1 = 26.
    let tokens = |rate| {
        let mut inst = moe_instance(rate);
        let mut reqs = vec![Request::new(0, 100, 9)];
        let (decodes, end, _) = run(&mut inst, &mut reqs);
        assert_eq!((reqs[0].status, reqs[0].generated), (Status::Finished, 9));
        let x = &inst.experts().unwrap().stats;
        (x.tokens, decodes, end, x.activated)
    };
    let (plain, plain_steps, plain_end, plain_activated) = tokens(None);
    assert_eq!((plain, plain_steps), (108, 8));
    let (zero, zero_steps, zero_end, zero_activated) = tokens(Some(0.0));
    assert_eq!((zero, zero_steps), (100 + 26, 8));
    // More tokens touch more experts per layer, and the k draft steps of the MoE head come on top.
    assert!(zero_activated > plain_activated && zero_end > plain_end, "{zero_activated} vs {plain_activated}, {zero_end} vs {plain_end}");
    // All accepted: 4 tokens per step, as many routed as emitted: 100 + 8 in 2 steps (4 + 4).
    let (all, all_steps, all_end, _) = tokens(Some(1.0));
    assert_eq!((all, all_steps), (108, 2));
    assert!(all_end < plain_end, "{all_end} vs {plain_end}");
}

/// Llama-3-8B on two pipeline stages of one H100 each, batches in flight asynchronously, with an
/// EAGLE head of k = 3 at `rate`.
fn pipelined_instance(rate: f64, seed: u64) -> Instance {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1) };
    let cfg = SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::Constant(rate)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None })
        .unwrap()
        .with_speculation(Some(&cfg), &spec, seed, "instance0.speculative")
        .unwrap()
        .with_pipelining(crate::instance::PipelineMode::Async)
}

/// Runs `reqs` (all arriving at 0) through a pipelined instance to the end, as the simulator's
/// events do; returns the end time and the inter-token gaps (one per decode step of a request).
fn run_pipelined(inst: &mut Instance, reqs: &mut [Request]) -> (Nanos, u64) {
    use std::cmp::Reverse;
    for (i, r) in reqs.iter_mut().enumerate() {
        inst.enqueue(i as u32, r);
    }
    inst.woken();
    // (time, 0: a batch done | 1: stage 1 free); batches are done in the order they entered.
    let mut events = std::collections::BinaryHeap::new();
    let (mut now, mut gaps) = (0, 0);
    loop {
        if let Some(t) = inst.start_batch(now, reqs).unwrap() {
            events.push(Reverse((t.stage1_free, 1)));
            events.push(Reverse((t.done, 0)));
        }
        let Some(Reverse((t, kind))) = events.pop() else { return (now, gaps) };
        now = t;
        if kind == 1 {
            inst.stage1_freed();
        } else {
            inst.finish_batch(now, reqs, |_, _, n| gaps += n);
            assert!(reqs.iter().all(|r| r.generated <= r.output), "never beyond the output length");
        }
    }
}

#[test]
fn a_prompt_runs_through_the_proposer_even_when_no_decode_speculates() {
    // A lone 1000-token prompt: the target's prefill, then the proposer's pass over the same
    // chunk (it keeps its own KV of the prompt), hand-summed from the two cost models.
    let mut inst = instance(3, Some(AcceptanceRate::Constant(0.8)), 1);
    let mut reqs = vec![Request::new(0, 1000, 5)];
    inst.enqueue(0, &mut reqs[0]);
    let s = inst.start_iteration(0, &mut reqs).unwrap();
    let mut prompt = inst.cost().empty_shape();
    prompt.add_prefill(1000, 0, true);
    let target = inst.cost().iteration(&prompt).seconds;
    let sp = inst.speculation().unwrap().speculator();
    let mut head = sp.proposer().empty_shape();
    head.add_prefill(1000, 0, true);
    // The head's layer, embedding and LM head over the chunk, and its 2h x h input projection.
    let proposer = sp.draft_step(&prompt, &[], 1).seconds;
    assert!(proposer > sp.proposer().iteration(&head).seconds);
    assert_eq!(s.compute_ns, crate::time::secs_to_ns(target + proposer));
    // A plain pool charges the target's prefill alone.
    let mut plain = instance(3, None, 1);
    let mut reqs = vec![Request::new(0, 1000, 5)];
    plain.enqueue(0, &mut reqs[0]);
    assert_eq!(plain.start_iteration(0, &mut reqs).unwrap().compute_ns, crate::time::secs_to_ns(target));
}

#[test]
fn on_a_synchronous_pipeline_the_other_stages_idle_while_the_proposer_runs() {
    // pp 2, synchronous: a lone prompt's verify pass drains the pipeline, then the EAGLE head runs
    // on the last stage's GPU while the first stage's waits at idle power.
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec { pp: 2, ..InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1) };
    let cfg = SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::Constant(0.8)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    let mut inst = Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap().with_speculation(Some(&cfg), &spec, 1, "instance0.speculative").unwrap();
    let mut reqs = vec![Request::new(0, 100, 5)];
    inst.enqueue(0, &mut reqs[0]);
    let s = inst.start_iteration(0, &mut reqs).unwrap();
    let mut prompt = inst.cost().empty_shape();
    prompt.add_prefill(100, 0, true);
    let verify = inst.cost().iteration(&prompt);
    let sp = inst.speculation().unwrap().speculator();
    let mut head = sp.proposer().empty_shape();
    head.add_prefill(100, 0, true);
    let proposer = sp.draft_step(&prompt, &[], 1);
    assert!(proposer.seconds > sp.proposer().iteration(&head).seconds, "with the input projection");
    let seconds = verify.seconds + proposer.seconds;
    assert_eq!(s.compute_ns, crate::time::secs_to_ns(seconds));
    let bubble = verify.bubble_seconds + 0.5 * proposer.seconds;
    let power = inst.cost().power();
    let watts = power.busy_watts((verify.compute_bound_seconds + proposer.compute_bound_seconds) / seconds);
    let expected = 2.0 * (watts * (seconds - bubble) + power.idle * bubble);
    let got = inst.stats.busy_energy_joules;
    assert!((got - expected).abs() < 1e-9 * expected, "{got} vs {expected}");
}

#[test]
fn a_pipelined_prompt_runs_through_the_proposer_on_the_last_stage() {
    let mut inst = pipelined_instance(1.0, 1);
    let mut reqs = vec![Request::new(0, 100, 9)];
    inst.enqueue(0, &mut reqs[0]);
    inst.woken();
    let a = inst.start_batch(0, &mut reqs).unwrap().unwrap();
    let mut prompt = inst.cost().empty_shape();
    prompt.add_prefill(100, 0, true);
    let stages = inst.cost().stage_costs(&prompt).seconds;
    let proposer = inst.speculation().unwrap().speculator().proposal_cost(&prompt, &[]).seconds;
    assert!(proposer > 0.0);
    let (s1, s2) = (crate::time::secs_to_ns(stages[0]), crate::time::secs_to_ns(stages[1] + proposer));
    assert_eq!((a.stage1_free, a.done), (s1, s1 + s2));
}

#[test]
fn a_pipelined_verify_pass_goes_through_the_stages_and_the_proposer_runs_on_the_last() {
    let mut inst = pipelined_instance(1.0, 1);
    let mut reqs = vec![Request::new(0, 100, 9)];
    inst.enqueue(0, &mut reqs[0]);
    inst.woken();
    let a = inst.start_batch(0, &mut reqs).unwrap().unwrap();
    inst.stage1_freed();
    inst.finish_batch(a.done, &mut reqs, |_, _, _| {});
    // The decode proposes 3 (all accepted): stage 1 runs its half of the verify pass of 4 query
    // tokens after 100 cached, stage 2 its half, the LM head and the head's 3 draft steps.
    let b = inst.start_batch(a.done, &mut reqs).unwrap().unwrap();
    let sp = inst.speculation().unwrap().speculator();
    let seqs = [SpecSeq { cached: 100, k: 3 }];
    let rest = inst.cost().empty_shape();
    let verify = { let (shape, chunks) = sp.verify_shape(&rest, &seqs); inst.cost().stage_costs_verify(&shape, &chunks).seconds };
    let proposer = sp.proposal_cost(&rest, &seqs).seconds;
    assert!(proposer > 0.0);
    let (s1, s2) = (crate::time::secs_to_ns(verify[0]), crate::time::secs_to_ns(verify[1] + proposer));
    assert_eq!((b.stage1_free, b.done), (a.done + s1, a.done + s1 + s2));
    inst.stage1_freed();
    inst.finish_batch(b.done, &mut reqs, |_, _, _| {});
    assert_eq!(reqs[0].generated, 5, "the first token, 3 accepted and the target's own");
}

#[test]
fn pipelined_batches_in_flight_apply_their_own_accepted_tokens() {
    // Batches of different requests in flight at once, each drawing its own acceptances: every
    // request still emits exactly its output, and runs repeat by seed.
    let outputs = [1, 2, 3, 5, 9, 40, 77, 200];
    let go = |seed| {
        let mut inst = pipelined_instance(0.7, seed);
        let mut reqs: Vec<Request> = outputs.iter().map(|&o| Request::new(0, 150, o)).collect();
        let (end, steps) = run_pipelined(&mut inst, &mut reqs);
        for (r, &o) in reqs.iter().zip(&outputs) {
            assert_eq!((r.status, r.generated, r.blocks), (Status::Finished, o, 0));
        }
        assert_eq!(inst.kv_usage().0, 0);
        (end, steps, inst.speculation().unwrap().stats.clone())
    };
    let (end, steps, stats) = go(3);
    assert!(stats.drafts > 0 && stats.accepted_tokens > 0 && stats.accepted_tokens < stats.draft_tokens, "{stats:?}");
    // Each decode step emits 1 + the tokens its own batch accepted: 336 output tokens after the first.
    assert_eq!(steps + stats.accepted_tokens, outputs.iter().map(|&o| o as u64 - 1).sum::<u64>());
    assert_eq!((end, steps, stats), go(3));
}

/// Llama-3-8B on one H100 with n-gram lookup proposing `k` at rate `a` when it finds a match
/// (with probability `matched`).
fn ngram_instance(k: u32, a: f64, matched: f64, seed: u64) -> Instance {
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    let cfg = SpeculativeConfig { method: SpecMethod::Ngram, draft_model: None, num_speculative_tokens: k, acceptance_rate: Some(AcceptanceRate::Constant(a)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: Some(matched), num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap().with_speculation(Some(&cfg), &spec, seed, "instance0.speculative").unwrap()
}

#[test]
fn an_ngram_lookup_drafts_only_when_it_matches_and_costs_only_the_verify_pass() {
    // Half the steps find a match and propose 3 tokens at 0.8 each; the others decode plainly.
    let mut inst = ngram_instance(3, 0.8, 0.5, 5);
    let mut reqs = vec![Request::new(0, 100, 4000)];
    let (decodes, _, gaps) = run(&mut inst, &mut reqs);
    let s = inst.speculation().unwrap().stats.clone();
    assert!((s.drafts as f64 / decodes as f64 - 0.5).abs() < 0.03, "{} of {decodes} steps drafted", s.drafts);
    let per_draft = 1.0 + s.accepted_tokens as f64 / s.drafts as f64;
    let expected = expected_tokens_per_step(&[0.8; 3]);
    assert!((per_draft - expected).abs() < 0.05 * expected, "{per_draft} vs {expected}");
    // Every step emits its accepted tokens plus one: the output's 3999 decode tokens exactly.
    assert_eq!(decodes + s.accepted_tokens, 3999);
    assert_eq!(gaps, decodes);
    // No model: no weights and no KV beside the target's.
    let (plain, ngram) = (instance(3, None, 1), ngram_instance(3, 0.8, 0.5, 1));
    assert_eq!((ngram.plan().weight_bytes, ngram.plan().kv_bytes_per_token), (plain.plan().weight_bytes, plain.plan().kv_bytes_per_token));
    // Never matching, it is plain decoding step for step; always matching with nothing accepted,
    // every step is a verify pass of 4 tokens and nothing more, so it is slower than plain but
    // less so than an EAGLE head's (which also drafts on the GPU).
    let end = |mut inst: Instance| {
        let mut reqs = vec![Request::new(0, 500, 300)];
        run(&mut inst, &mut reqs).1
    };
    let plain_end = end(instance(3, None, 1));
    assert_eq!(end(ngram_instance(3, 0.8, 0.0, 1)), plain_end);
    let (ngram_zero, eagle_zero) = (end(ngram_instance(3, 0.0, 1.0, 1)), end(instance(3, Some(AcceptanceRate::Constant(0.0)), 1)));
    assert!(plain_end < ngram_zero && ngram_zero < eagle_zero, "plain {plain_end}, ngram {ngram_zero}, eagle {eagle_zero}");
}

#[test]
fn dynamic_speculation_drafts_k_by_the_previous_batch_size() {
    // Eight requests at once: a batch of 8 proposes nothing under [[1, 4, 3], [5, 64, 0]]; the
    // last four, alone, propose 3 again.
    let memory = MemoryConfig::default();
    let sched = SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 };
    let spec = InstanceSpec::new(llama3_8b(), gpu(), Efficiency::default(), 1);
    let build = |table: Option<Vec<[u32; 3]>>| {
        let cfg = SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::Constant(1.0)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: table, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
        Instance::new(InstanceSetup { pool: 0, spec: spec.clone(), memory: &memory, scheduler: &sched, experts: None }).unwrap().with_speculation(Some(&cfg), &spec, 3, "instance0.speculative").unwrap()
    };
    let requests = || (0..8).map(|i| Request::new(0, 100, if i < 4 { 20 } else { 60 })).collect::<Vec<_>>();
    let (mut dynamic, mut always) = (build(Some(vec![[1, 4, 3], [5, 64, 0]])), build(None));
    let (mut a, mut b) = (requests(), requests());
    let (dyn_steps, _, _) = run(&mut dynamic, &mut a);
    let (all_steps, _, _) = run(&mut always, &mut b);
    assert!(a.iter().chain(&b).all(|r| r.status == Status::Finished && r.generated == r.output));
    let s = &dynamic.speculation().unwrap().stats;
    // The four short requests decode 19 tokens plainly in 19 steps of 8; the step after them
    // (the four long ones alone) still follows a batch of 8 and drafts nothing; from then on they
    // draft 3 and accept all: 4 tokens a step.
    assert_eq!(s.drafts % 4, 0);
    assert_eq!(s.accepted_tokens, s.draft_tokens, "every draft accepted");
    assert!(dyn_steps > all_steps, "{dyn_steps} steps with k = 0 at batch 8, {all_steps} always drafting");
    let plain_steps = 19 + 1;
    let long_left: u64 = 59 - plain_steps;
    assert_eq!(dyn_steps, plain_steps + long_left.div_ceil(4), "20 plain steps, then 4 tokens a step");
}

#[test]
fn a_tree_emits_its_depth_plus_one_and_shallower_levels_near_the_end() {
    // An EAGLE head drafting two candidates per node over two levels (6 nodes), every level
    // accepted, 301 output tokens: the prefill samples the first; then each step drafts the 6
    // nodes and accepts both levels (3 tokens) while 6 fit the output left but one: 98 steps
    // to 295. Left 6: 5 nodes hold level 1 only (2 tokens), twice to 299; left 2: 1 node holds
    // no level, a plain decode, twice. 102 decode steps.
    let tree = vec![vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0], vec![1, 1]];
    let cfg = SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 6, acceptance_rate: Some(AcceptanceRate::Constant(1.0)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: Some(tree), enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    let mut inst = instance_with(Some(cfg), 3);
    let mut reqs = vec![Request::new(0, 100, 301)];
    let (decodes, _, gaps) = run(&mut inst, &mut reqs);
    assert_eq!((reqs[0].generated, decodes, gaps), (301, 102, 102));
    let s = &inst.speculation().unwrap().stats;
    assert_eq!((s.drafts, s.draft_tokens, s.accepted_tokens), (100, 98 * 6 + 2 * 2, 98 * 2 + 2));
    // One position per level: level 1 drafted by all 100, level 2 by the 98 full trees.
    assert_eq!((s.draft_tokens_per_position.clone(), s.accepted_per_position.clone()), (vec![100, 98], vec![100, 98]));
}

#[test]
fn adaptive_verification_leaves_out_the_positions_that_do_not_pay() {
    // An EAGLE head drafting 3 at [1, 1, 0], eight requests of 100 + 61 tokens: every step
    // verifies two drafts (the third only costs) and emits three tokens, as verifying all three
    // does; the same steps, each cheaper. At [1, 1, 1] and one request all three pay: the very
    // same run as without adaptive verification.
    let cfg = |a: Vec<f64>, adaptive| SpeculativeConfig { method: SpecMethod::Eagle, draft_model: None, num_speculative_tokens: 3, acceptance_rate: Some(AcceptanceRate::PerPosition(a)), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: adaptive, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None };
    let go = |c: SpeculativeConfig, n: usize| {
        let mut inst = instance_with(Some(c), 3);
        let mut reqs: Vec<Request> = (0..n).map(|_| Request::new(0, 100, 61)).collect();
        let (steps, end, _) = run(&mut inst, &mut reqs);
        assert!(reqs.iter().all(|r| r.status == Status::Finished && r.generated == r.output));
        let s = inst.speculation().unwrap().stats.clone();
        (steps, end, s.draft_tokens_per_position, s.accepted_per_position)
    };
    let (a_steps, a_end, a_drafted, a_accepted) = go(cfg(vec![1.0, 1.0, 0.0], true), 8);
    let (f_steps, f_end, f_drafted, f_accepted) = go(cfg(vec![1.0, 1.0, 0.0], false), 8);
    assert_eq!((a_steps, f_steps), (20, 20), "60 tokens after the first, three a step");
    assert_eq!(a_drafted, vec![160, 160, 0], "the third position never verified");
    assert_eq!(f_drafted[..2], a_drafted[..2]);
    assert_eq!((a_accepted, f_accepted), (vec![160, 160, 0], f_drafted[..2].iter().copied().chain([0]).collect::<Vec<u64>>()));
    assert!(a_end < f_end, "adaptive {a_end} ns, all verified {f_end} ns");
    assert_eq!(go(cfg(vec![1.0; 3], true), 1), go(cfg(vec![1.0; 3], false), 1));
}

#[path = "speculative_classes_tests.rs"]
mod classes;

#[path = "speculative_history_tests.rs"]
mod history;

#[path = "speculative_lengths_tests.rs"]
mod lengths;
