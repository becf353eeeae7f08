//! Unit tests of speculative decoding's cost: the expected accepted length, the settings'
//! checks, the verify pass's batch effect and the proposers' memory.

use super::*;
use crate::cost::fixtures::*;
use crate::cost::speculative_config::{AcceptanceRate, MAX_SPECULATIVE_TOKENS};
use crate::cost::Op;
use crate::model::fixtures::{llama2_70b, llama2_7b, llama3_8b, mixtral_8x7b};

pub(super) fn cfg(method: SpecMethod, draft: Option<ModelSpec>, k: u32, a: AcceptanceRate) -> SpeculativeConfig {
    SpeculativeConfig { method, draft_model: draft, num_speculative_tokens: k, acceptance_rate: Some(a), acceptance_classes: None, draft_vocab_size: None, proposal_rate: None, num_speculative_tokens_per_batch_size: None, speculative_token_tree: None, enable_adaptive_verification: false, adaptive_estimate: Default::default(), adaptive_profile_context: None, draft_lengths: None }
}

/// A chain proposer's verify shape (the same for every k: each sequence's own).
fn chain_verify(rest: &BatchShape, seqs: &[SpecSeq]) -> (BatchShape, VerifyChunks) {
    Speculator::build(&cfg(SpecMethod::Eagle, None, 4, AcceptanceRate::Constant(0.5)), &target()).unwrap().verify_shape(rest, seqs)
}

/// Llama-2-70B on 4 H100s at peak rates.
pub(super) fn target() -> InstanceSpec {
    InstanceSpec::new(llama2_70b(), h100(), ideal(), 4)
}

/// Decode speedup of `batch` sequences at context 1024 with a Llama-2-7B draft at rate 0.8,
/// k = 4: (one plain decode step x tokens per speculative step) / one speculative step.
fn draft_speedup(batch: u32) -> f64 {
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    let sp = Speculator::build(&cfg(SpecMethod::Draft, Some(llama2_7b()), 4, AcceptanceRate::Constant(0.8)), &spec).unwrap();
    let mut plain = cm.empty_shape();
    let seqs: Vec<SpecSeq> = (0..batch).map(|_| SpecSeq { cached: 1023, k: 4 }).collect();
    (0..batch).for_each(|_| plain.add_decode(1024));
    let step = sp.step(&cm, &cm.empty_shape(), &seqs).seconds;
    cm.iteration_seconds(&plain) * expected_tokens_per_step(sp.class_rates(0)) / step
}

#[test]
fn the_expected_tokens_per_step_are_one_plus_the_accepted_prefix() {
    // (1 - a^(k+1)) / (1 - a) for a = 0.8, k = 4: 1 + 0.8 + 0.64 + 0.512 + 0.4096 = 3.3616.
    assert!(close(expected_tokens_per_step(&[0.8; 4]), 3.3616));
    assert!(close(expected_tokens_per_step(&[0.8; 4]), (1.0 - 0.8f64.powi(5)) / 0.2));
    assert_eq!(expected_tokens_per_step(&[0.0; 3]), 1.0);
    assert_eq!(expected_tokens_per_step(&[1.0, 1.0, 0.0, 1.0]), 3.0, "nothing after a certain rejection");
    assert!(close(expected_tokens_per_step(&[0.9, 0.5]), 1.0 + 0.9 + 0.45));
}

#[test]
fn bad_settings_name_their_field() {
    let path = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, .. }) => path,
        other => panic!("{other:?}"),
    };
    let eagle = |k, a| cfg(SpecMethod::Eagle, None, k, a);
    assert_eq!(path(eagle(0, AcceptanceRate::Constant(0.5))), "speculative.num_speculative_tokens");
    assert_eq!(path(eagle(MAX_SPECULATIVE_TOKENS + 1, AcceptanceRate::Constant(0.5))), "speculative.num_speculative_tokens");
    assert_eq!(path(eagle(3, AcceptanceRate::PerPosition(vec![0.9, 0.8, 1.5]))), "speculative.acceptance_rate.2");
    assert_eq!(path(eagle(3, AcceptanceRate::Constant(-0.1))), "speculative.acceptance_rate.0");
    assert_eq!(path(eagle(3, AcceptanceRate::PerPosition(vec![0.9, 0.8]))), "speculative.acceptance_rate");
    assert_eq!(path(cfg(SpecMethod::Draft, None, 3, AcceptanceRate::Constant(0.5))), "speculative.draft_model");
    assert_eq!(path(cfg(SpecMethod::Mtp, Some(llama2_7b()), 3, AcceptanceRate::Constant(0.5))), "speculative.draft_model");
    assert_eq!(eagle(2, AcceptanceRate::PerPosition(vec![0.9, 0.7])).class_rates().unwrap()[0].1, vec![0.9, 0.7]);
    // A draft with another tokenizer: Llama-3-8B (128256 tokens) for Llama-2-70B (32000).
    match Speculator::build(&cfg(SpecMethod::Draft, Some(llama3_8b()), 3, AcceptanceRate::Constant(0.5)), &target()) {
        Err(Error::Config { path, message }) => assert!(path == "speculative.draft_model" && message.contains("128256") && message.contains("32000"), "{message}"),
        other => panic!("{other:?}"),
    }
    // A draft tp cannot shard: 4-way tp of a 30-head draft.
    let odd = ModelSpec { num_heads: 30, num_kv_heads: 30, ..llama2_7b() };
    match Speculator::build(&cfg(SpecMethod::Draft, Some(odd), 3, AcceptanceRate::Constant(0.5)), &target()) {
        Err(Error::Config { path, message }) => assert!(path == "speculative.draft_model" && message.contains("parallelism.tp"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_verify_pass_is_a_k_plus_one_token_chunk_after_the_context() {
    let mut rest = BatchShape::default();
    rest.add_prefill(100, 0, true);
    let (v, _) = chain_verify(&rest, &[SpecSeq { cached: 500, k: 3 }, SpecSeq { cached: 10, k: 1 }]);
    assert_eq!((v.prefill_tokens, v.prefill_seqs, v.decode_seqs), (100 + 4 + 2, 3, 0));
    // Pairs: 100 * 50.5 for the prompt, 4 * (500 + 2.5) and 2 * (10 + 1.5) for the verify chunks.
    assert!(close(v.prefill_pairs, 5050.0 + 2010.0 + 23.0));
    assert_eq!(v.sampled, 1 + 4 + 2, "the prompt's last token and every verified position");
}

#[test]
fn at_batch_one_the_verify_pass_costs_about_one_decode() {
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    let mut one = cm.empty_shape();
    one.add_decode(1024);
    let (verify, _) = chain_verify(&cm.empty_shape(), &[SpecSeq { cached: 1023, k: 4 }]);
    let ratio = cm.iteration_seconds(&verify) / cm.iteration_seconds(&one);
    assert!((1.0..1.05).contains(&ratio), "verify / decode = {ratio}");
}

#[test]
fn speculation_pays_at_batch_one_and_turns_into_a_slowdown_at_large_batches() {
    let s: Vec<f64> = [1, 16, 64, 256].iter().map(|&b| draft_speedup(b)).collect();
    // Batch 1: 3.36 tokens per step for one 70B decode plus four 7B decodes (~1.3x a decode).
    assert!(s[0] > 2.0 && s[0] < 3.0, "{s:?}");
    assert!(s.windows(2).all(|w| w[1] < w[0]), "the speedup shrinks as the batch grows: {s:?}");
    assert!(s[3] < 1.0, "at batch 256 the compute-bound verify pass makes it a slowdown: {s:?}");
}

#[test]
fn a_zero_acceptance_rate_costs_more_than_plain_decoding() {
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    let sp = Speculator::build(&cfg(SpecMethod::Eagle, None, 2, AcceptanceRate::Constant(0.0)), &spec).unwrap();
    let mut one = cm.empty_shape();
    one.add_decode(100);
    let step = sp.step(&cm, &cm.empty_shape(), &[SpecSeq { cached: 99, k: 2 }]).seconds;
    // One token per step either way, and the step does more.
    assert_eq!(expected_tokens_per_step(sp.class_rates(0)), 1.0);
    assert!(step > cm.iteration_seconds(&one) * 1.01, "{step}");
}

#[test]
fn an_eagle_head_is_one_target_layer_and_its_input_projection() {
    let spec = target();
    let sp = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let cm = CostModel::build(&spec).unwrap();
    // Llama-2-70B layer per GPU (tp 4): attention 8192 x (8192 + 2 x 1024) + 8192 x 8192, MLP 3 x 8192 x 28672,
    // two norms of 8192; the projection 2 x 8192 x 8192; all bf16, split 4 ways.
    let layer = (8192 * (8192 + 2048) + 8192 * 8192 + 3 * 8192 * 28672 + 2 * 8192) / 4;
    // The projection is a plain linear layer in vLLM: whole on every GPU.
    let fc = 2 * 8192 * 8192;
    assert_eq!(sp.weight_bytes_per_gpu, 2 * (layer + fc) as u64);
    assert_eq!(sp.kv_bytes_per_token_per_gpu * 80, cm.kv_bytes_per_token_per_gpu(), "one layer's KV of 80");
    // A draft model brings all its weights and KV.
    let d = Speculator::build(&cfg(SpecMethod::Draft, Some(llama2_7b()), 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    assert_eq!(d.kv_bytes_per_token_per_gpu, 2 * 32 * 8 * 128 * 2, "32 heads over 4 GPUs, 32 layers");
    assert!(d.weight_bytes_per_gpu > 6_700_000_000 / 4 * 2 / 2 && d.weight_bytes_per_gpu < 7_000_000_000 / 4 * 2, "{}", d.weight_bytes_per_gpu);
}

#[test]
fn mtp_runs_the_models_own_modules_and_refuses_a_model_without() {
    // Llama-2-70B has no multi-token-prediction layers: mtp is refused, naming the method.
    match Speculator::build(&cfg(SpecMethod::Mtp, None, 2, AcceptanceRate::Constant(0.7)), &target()) {
        Err(Error::Config { path, message }) => assert!(path == "speculative.method" && message.contains("llama-2-70b has none"), "{path}: {message}"),
        other => panic!("{other:?}"),
    }
    // With modules in the checkpoint every one is held, with its KV, each one target layer and
    // its 2h x h projection (as an EAGLE head's, above); a draft step runs one of them.
    let layer = (8192 * (8192 + 2048) + 8192 * 8192 + 3 * 8192 * 28672 + 2 * 8192) / 4;
    let fc = 2 * 8192 * 8192;
    let cm = CostModel::build(&target()).unwrap();
    for modules in [1u32, 2] {
        let spec = InstanceSpec::new(ModelSpec { mtp_layers: modules, ..llama2_70b() }, h100(), ideal(), 4);
        let sp = Speculator::build(&cfg(SpecMethod::Mtp, None, 4, AcceptanceRate::Constant(0.7)), &spec).unwrap();
        assert_eq!(sp.weight_bytes_per_gpu, modules as u64 * 2 * (layer + fc) as u64);
        assert_eq!(sp.kv_bytes_per_token_per_gpu * 80, modules as u64 * cm.kv_bytes_per_token_per_gpu());
        assert_eq!(sp.proposer().model().num_layers, 1, "one module per draft step");
        // A prefill pool sends every module's KV of the prompt.
        assert_eq!(sp.proposer_kv_bytes_per_token_whole_model(), modules as u64 * 2 * 8 * 128 * 2);
        // An EAGLE head on the same model is one module whatever the checkpoint ships.
        let eagle = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
        assert_eq!(eagle.weight_bytes_per_gpu, 2 * (layer + fc) as u64);
    }
    // Two modules run in turn: k = 1, 2 or 4 is fine, k = 3 is not (vLLM refuses it too).
    let two = InstanceSpec::new(ModelSpec { mtp_layers: 2, ..llama2_70b() }, h100(), ideal(), 4);
    for k in [1, 2, 4] {
        assert!(Speculator::build(&cfg(SpecMethod::Mtp, None, k, AcceptanceRate::Constant(0.7)), &two).is_ok());
    }
    match Speculator::build(&cfg(SpecMethod::Mtp, None, 3, AcceptanceRate::Constant(0.7)), &two) {
        Err(Error::Config { path, message }) => assert!(path == "speculative.num_speculative_tokens" && message.contains("not a multiple"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_proposer_drafts_only_while_a_sequence_has_positions_left() {
    let spec = target();
    let sp = Speculator::build(&cfg(SpecMethod::Eagle, None, 4, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let mut rest = BatchShape::default();
    rest.add_prefill(64, 0, true);
    rest.add_decode(300);
    let seqs = [SpecSeq { cached: 99, k: 4 }, SpecSeq { cached: 9, k: 2 }];
    // The first pass runs every token the target verifies (vLLM's padded drafter batch): the
    // prompt's 64, the plain decode, the 4 + 1 and 2 + 1 verify chunks; one sample per sequence.
    let (first, chunks) = sp.proposal_shape(&rest, &seqs, 1);
    assert_eq!((first.prefill_tokens, first.prefill_seqs, first.decode_seqs, first.decode_kv_tokens, first.sampled), (64 + 5 + 3, 3, 1, 300, 2 + 2));
    let (verify, verify_chunks) = sp.verify_shape(&rest, &seqs);
    assert_eq!((first, chunks), (BatchShape { sampled: 4, ..verify }, verify_chunks), "the verify pass's shape, sampled once a sequence");
    let (third, _) = sp.proposal_shape(&rest, &seqs, 3);
    assert_eq!((third.prefill_tokens, third.decode_seqs, third.decode_kv_tokens), (0, 1, 102));
}

#[test]
fn the_verify_pass_of_a_moe_model_routes_every_draft_token_through_the_experts() {
    // Mixtral-8x7B (8 experts of 3 x 4096 x 14336, top-2) on one H100 at batch 1, an MTP head
    // proposing 3: the verify pass routes 4 tokens, 8 token-expert pairs per layer (4x a
    // decode's expert FLOPs) over 8 (1 - (6/8)^4) = 5.47 distinct experts (a decode reads 2).
    // (A Mixtral-shaped model whose checkpoint ships one MTP module.)
    let spec = InstanceSpec::new(ModelSpec { mtp_layers: 1, ..mixtral_8x7b() }, h100(), ideal(), 1);
    let cm = CostModel::build(&spec).unwrap();
    let expert = 3.0 * 4096.0 * 14336.0;
    let per_pair = 2.0 * 4096.0 + 3.0 * 14336.0;
    let mut plain = cm.empty_shape();
    plain.add_decode(1024);
    let (verify, _) = chain_verify(&cm.empty_shape(), &[SpecSeq { cached: 1023, k: 3 }]);
    let (d, v) = (op(&cm.breakdown(&plain), Op::MoeExperts), op(&cm.breakdown(&verify), Op::MoeExperts));
    assert!(close(d.flops, 32.0 * 2.0 * 2.0 * expert) && close(d.bytes, 32.0 * (2.0 * expert + 2.0 * per_pair) * 2.0));
    let touched = 8.0 * (1.0 - 0.75f64.powi(4));
    assert!(close(v.flops, 32.0 * 2.0 * 8.0 * expert), "{}", v.flops);
    assert!(close(v.bytes, 32.0 * (touched * expert + 8.0 * per_pair) * 2.0), "{}", v.bytes);
    // Both read-bound: the verify pass's experts take 5.47 / 2 = 2.7x a decode's.
    assert!(v.seconds > 2.7 * d.seconds && v.seconds < 2.8 * d.seconds, "{} vs {}", v.seconds, d.seconds);
    // The MTP head is one MoE layer: its first pass routes the 4 verified tokens (8 pairs), each
    // later draft step the decode's one token through 2 of its experts.
    let sp = Speculator::build(&cfg(SpecMethod::Mtp, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let seqs = [SpecSeq { cached: 1023, k: 3 }];
    let head = |j| op(&sp.proposer().breakdown(&sp.proposal_shape(&cm.empty_shape(), &seqs, j).0), Op::MoeExperts);
    let (first, second) = (head(1), head(2));
    assert!(close(first.flops, 2.0 * 8.0 * expert) && close(first.bytes, (touched * expert + 8.0 * per_pair) * 2.0));
    assert!(close(second.flops, 2.0 * 2.0 * expert) && close(second.bytes, (2.0 * expert + 2.0 * per_pair) * 2.0));
}

/// The seconds of a 16-bit `tokens x k` by `k x n` GEMM read from an H100's HBM at peak (the
/// weights and the activations in and out): what a batch-1 head's linear layer takes.
fn h100_linear(tokens: f64, k: f64, n: f64) -> f64 {
    (k * n + tokens * k + tokens * n) * 2.0 / 3.35e12
}

#[test]
fn eagle_and_mtp_heads_run_their_input_projection_at_every_draft_step() {
    // Llama-3-8B on one H100: each draft step of an EAGLE head adds its 2h x h projection over
    // the step's tokens (the first pass's 3 + 1 verified ones, then one) to the one-layer
    // model's iteration (batch 1: weight-read bound).
    let spec = InstanceSpec::new(llama3_8b(), h100(), ideal(), 1);
    let sp = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let seqs = [SpecSeq { cached: 999, k: 3 }];
    let rest = BatchShape::default();
    let own = |sp: &Speculator, j| {
        let (shape, chunks) = sp.proposal_shape(&rest, &seqs, j);
        sp.proposer().iteration_verify(&shape, &chunks).seconds
    };
    for (j, tokens) in [(1, 4.0), (2, 1.0), (3, 1.0)] {
        let fc = h100_linear(tokens, 2.0 * 4096.0, 4096.0);
        assert!(close(sp.draft_step(&rest, &seqs, j).seconds - own(&sp, j), fc), "step {j}");
    }
    // A draft model has no such layer: its step is its own iteration.
    let d = Speculator::build(&cfg(SpecMethod::Draft, Some(ModelSpec { num_layers: 2, ..llama3_8b() }), 2, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    assert_eq!(d.draft_step(&rest, &seqs, 1).seconds, own(&d, 1));
}

#[test]
fn an_eagle3_head_is_one_dense_layer_with_a_32k_lm_head_and_fused_inputs() {
    // Llama-3-8B on one H100 with the default EAGLE-3 head: one dense Llama layer whose Q/K/V
    // projection reads 2h inputs (h x 6144 more weights), a 3h x h fusion of the target's hidden
    // states, and its own LM head of 32,000 rows (the embedding is the target's).
    let spec = InstanceSpec::new(llama3_8b(), h100(), ideal(), 1);
    let sp = Speculator::build(&cfg(SpecMethod::Eagle3, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let layer = 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096;
    let (qkv_extra, fc, lm_head) = (4096 * 6144, 3 * 4096 * 4096, 32000 * 4096);
    assert_eq!(sp.weight_bytes_per_gpu, 2 * (layer + qkv_extra + fc + lm_head) as u64);
    assert_eq!(sp.kv_bytes_per_token_per_gpu, 2 * 8 * 128 * 2, "one layer's K and V");
    assert_eq!(sp.proposer().model().vocab_size, 32000);
    // Each draft step adds the Q/K/V's second input half; the first also runs the fusion.
    let seqs = [SpecSeq { cached: 999, k: 3 }];
    let rest = BatchShape::default();
    let own = |j| {
        let (shape, chunks) = sp.proposal_shape(&rest, &seqs, j);
        sp.proposer().iteration_verify(&shape, &chunks).seconds
    };
    let extra = h100_linear(1.0, 4096.0, 6144.0);
    assert!(close(sp.draft_step(&rest, &seqs, 2).seconds - own(2), extra));
    // The first pass runs both over the 4 verified tokens.
    let first = h100_linear(4.0, 4096.0, 6144.0) + h100_linear(4.0, 3.0 * 4096.0, 4096.0);
    assert!(close(sp.draft_step(&rest, &seqs, 1).seconds - own(1), first));
    // At batch 1 a step reads its weights: against an EAGLE head's step, an EAGLE-3 step reads
    // 96,256 fewer LM head rows (1.05 GB - 0.26 GB) and their fp32 logits, its Q/K/V's second
    // half instead of EAGLE's 2h x h projection: 0.466 against 0.225 ms.
    let eagle = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let (e3, e1) = (sp.draft_step(&rest, &seqs, 2).seconds, eagle.draft_step(&rest, &seqs, 2).seconds);
    let rows = 128256.0 - 32000.0;
    let saved = (rows * 4096.0 + rows) * 2.0 / 3.35e12 + rows * 4.0 / 3.35e12 + h100_linear(1.0, 2.0 * 4096.0, 4096.0) - extra;
    assert!(close(e1 - e3, saved), "EAGLE {e1} vs EAGLE-3 {e3}: {} vs {saved}", e1 - e3);
    assert!(e3 < 0.5 * e1);
}

#[test]
fn an_eagle3_head_on_a_moe_target_is_dense_and_a_given_head_keeps_its_own_shape() {
    // Mixtral-8x7B: the default head is a dense layer of the model's 14336-wide MLP, no experts.
    let spec = InstanceSpec::new(mixtral_8x7b(), h100(), ideal(), 1);
    let sp = Speculator::build(&cfg(SpecMethod::Eagle3, None, 2, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let head = sp.proposer();
    assert!(!head.model().is_moe() && head.model().intermediate_size == 14336);
    let mut one = head.empty_shape();
    one.add_decode(100);
    let ops = head.breakdown(&one);
    assert!(ops.iter().all(|c| c.op != Op::MoeExperts) && ops.iter().any(|c| c.op == Op::MlpGateUp));
    // Mixtral's own vocabulary is 32,000: the default head's LM head cannot be larger.
    assert_eq!(head.model().vocab_size, 32000);
    // A given head (its checkpoint's config): its MLP width and heads, and its vocabulary unless
    // draft_vocab_size says otherwise.
    let given = ModelSpec { name: "my-head".into(), num_layers: 1, intermediate_size: 20000, vocab_size: 16000, num_experts: 0, experts_per_token: 0, moe_intermediate_size: 0, ..mixtral_8x7b() };
    let mut c = cfg(SpecMethod::Eagle3, Some(given.clone()), 2, AcceptanceRate::Constant(0.7));
    let sp = Speculator::build(&c, &spec).unwrap();
    assert_eq!((sp.proposer().model().intermediate_size, sp.proposer().model().vocab_size), (20000, 16000));
    c.draft_vocab_size = Some(8000);
    assert_eq!(Speculator::build(&c, &spec).unwrap().proposer().model().vocab_size, 8000);
    // Refused: another hidden size, a draft vocabulary larger than the target's, the field on
    // another method.
    let fails = |c: &SpeculativeConfig| match Speculator::build(c, &spec) {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let (path, message) = fails(&cfg(SpecMethod::Eagle3, Some(ModelSpec { hidden_size: 2048, ..given }), 2, AcceptanceRate::Constant(0.7)));
    assert!(path == "speculative.draft_model" && message.contains("hidden size (2048)"), "{message}");
    let (path, message) = fails(&SpeculativeConfig { draft_vocab_size: Some(40000), ..cfg(SpecMethod::Eagle3, None, 2, AcceptanceRate::Constant(0.7)) });
    assert!(path == "speculative.draft_vocab_size" && message.contains("32000 tokens"), "{message}");
    let (path, _) = fails(&SpeculativeConfig { draft_vocab_size: Some(1000), ..cfg(SpecMethod::Eagle, None, 2, AcceptanceRate::Constant(0.7)) });
    assert_eq!(path, "speculative.draft_vocab_size");
}

#[test]
fn an_ngram_lookup_runs_no_model_and_its_rate_is_its_own() {
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    let c = SpeculativeConfig { proposal_rate: Some(0.4), ..cfg(SpecMethod::Ngram, None, 3, AcceptanceRate::Constant(0.7)) };
    let sp = Speculator::build(&c, &spec).unwrap();
    assert_eq!((sp.weight_bytes_per_gpu, sp.kv_bytes_per_token_per_gpu, sp.proposer_kv_bytes_per_token_whole_model()), (0, 0, 0));
    assert_eq!(sp.proposal_rate(), 0.4);
    // A step is its verify pass alone; a prompt beside no speculating decode is a plain iteration.
    let seqs = [SpecSeq { cached: 999, k: 3 }];
    let (v, chunks) = chain_verify(&cm.empty_shape(), &seqs);
    assert_eq!(sp.step(&cm, &cm.empty_shape(), &seqs).seconds, cm.iteration_verify(&v, &chunks).seconds);
    let mut prompt = cm.empty_shape();
    prompt.add_prefill(500, 0, true);
    assert!(sp.runs_plain(&prompt, &[]) && !sp.runs_plain(&prompt, &seqs));
    let eagle = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    assert!(!eagle.runs_plain(&prompt, &[]), "a head keeps its own KV of the prompt");
    // Its settings: a rate outside [0, 1], the rate on another method, a model.
    let path = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, .. }) => path,
        other => panic!("{other:?}"),
    };
    assert_eq!(path(SpeculativeConfig { proposal_rate: Some(1.5), ..c.clone() }), "speculative.proposal_rate");
    assert_eq!(path(SpeculativeConfig { proposal_rate: Some(0.5), ..cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)) }), "speculative.proposal_rate");
    assert_eq!(path(SpeculativeConfig { draft_model: Some(llama2_7b()), ..c }), "speculative.draft_model");
}

#[test]
fn an_ngram_lookup_charges_the_engines_cpu_time_over_every_decodes_context() {
    // The engine's lookup: 10 us + 1 us a sequence + 10 ns a pair + 1 ns a context token.
    let lookup = crate::calibration::NgramLookupCost { base: 1e-5, per_seq: 1e-6, per_seq_squared: 1e-8, per_context_token: 1e-9 };
    let spec = InstanceSpec::new(llama2_70b(), h100(), crate::calibration::Efficiency { ngram_lookup: Some(lookup), ..ideal() }, 4);
    let cm = CostModel::build(&spec).unwrap();
    let sp = Speculator::build(&cfg(SpecMethod::Ngram, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    // Two plain decodes (no match: contexts 100 and 200) and one drafting after 299 cached tokens:
    // three sequences, 600 context tokens.
    let mut rest = cm.empty_shape();
    rest.add_decode(100);
    rest.add_decode(200);
    let seqs = [SpecSeq { cached: 299, k: 3 }];
    let want = 1e-5 + 3.0 * 1e-6 + 9.0 * 1e-8 + 600.0 * 1e-9;
    assert!(close(sp.lookup_seconds(&rest, &seqs), want));
    let (v, chunks) = sp.verify_shape(&rest, &seqs);
    assert!(close(sp.step(&cm, &rest, &seqs).seconds, cm.iteration_verify(&v, &chunks).seconds + want));
    assert!(close(sp.proposal_cost(&rest, &seqs).seconds, want), "on a pipeline's last stage");
    // A step whose decodes all missed still pays the lookup; a prompt alone looks nothing up.
    assert!(!sp.runs_plain(&rest, &[]) && close(sp.step(&cm, &rest, &[]).seconds, cm.iteration_seconds(&rest) + 1e-5 + 2e-6 + 4e-8 + 300e-9));
    let mut prompt = cm.empty_shape();
    prompt.add_prefill(500, 0, true);
    assert!(sp.runs_plain(&prompt, &[]));
    // Other proposers never pay it.
    let eagle = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    assert_eq!(eagle.lookup_seconds(&rest, &seqs), 0.0);
}

#[test]
fn a_batch_size_table_picks_k_after_each_step_and_names_a_bad_entry() {
    let spec = target();
    let table = |t: Vec<[u32; 3]>| SpeculativeConfig { num_speculative_tokens_per_batch_size: Some(t), ..cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)) };
    let sp = Speculator::build(&table(vec![[1, 4, 3], [5, 8, 1], [9, 64, 0]]), &spec).unwrap();
    let ks: Vec<u32> = [0, 1, 4, 5, 8, 9, 64, 65].iter().map(|&n| sp.k_after(n)).collect();
    assert_eq!(ks, [3, 3, 3, 1, 1, 0, 0, 0], "past the last range its k carries forward (vLLM's schedule)");
    // Entries in any order; a gap takes the k of the range before it, as vLLM's dense schedule
    // does ([(1, 16, 3), (32, 128, 2)]: 17-31 draft 3).
    let gaps = Speculator::build(&table(vec![[32, 128, 2], [1, 16, 3]]), &spec).unwrap();
    assert_eq!([1, 16, 17, 31, 32, 128, 500].map(|n| gaps.k_after(n)), [3, 3, 3, 3, 2, 2, 2]);
    let fails = |t: Vec<[u32; 3]>| match table(t).class_rates() {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let (path, message) = fails(vec![[1, 4, 3], [4, 8, 1]]);
    assert!(path == "speculative.num_speculative_tokens_per_batch_size.1" && message.contains("overlaps entry 0"), "{message}");
    let (path, message) = fails(vec![[1, 4, 4]]);
    assert!(path == "speculative.num_speculative_tokens_per_batch_size.0" && message.contains("exceeds num_speculative_tokens = 3"), "{message}");
    assert!(fails(vec![[0, 4, 1]]).1.contains("1 <= start <= end"));
    assert!(fails(vec![[5, 4, 1]]).1.contains("1 <= start <= end"));
    let (path, message) = fails(vec![[2, 8, 1], [9, 64, 0]]);
    assert!(path == "speculative.num_speculative_tokens_per_batch_size" && message.contains("the first range starts at 2; it must start at 1"), "{message}");
    assert!(fails(vec![]).1.contains("at least one"));
}

#[test]
fn a_decode_drafting_nothing_is_verified_plainly_and_its_proposer_runs_one_step() {
    let spec = target();
    let cm = CostModel::build(&spec).unwrap();
    let sp = Speculator::build(&cfg(SpecMethod::Eagle, None, 3, AcceptanceRate::Constant(0.7)), &spec).unwrap();
    let syncing = [SpecSeq { cached: 999, k: 0 }, SpecSeq { cached: 499, k: 0 }];
    let (v, chunks) = chain_verify(&cm.empty_shape(), &syncing);
    let mut plain = cm.empty_shape();
    plain.add_decode(1000);
    plain.add_decode(500);
    assert_eq!(v, plain, "the target decodes them as plain decodes");
    assert_eq!(cm.iteration_verify(&v, &chunks).seconds, cm.iteration(&plain).seconds);
    // The proposer's one step over them: its first pass over the two plain decodes.
    assert_eq!(sp.proposal_steps(&cm.empty_shape(), &syncing), 1);
    assert_eq!(sp.proposal_shape(&cm.empty_shape(), &syncing, 1), (plain, VerifyChunks::default()));
    let step = sp.step(&cm, &cm.empty_shape(), &syncing).seconds;
    assert_eq!(step, cm.iteration(&plain).seconds + sp.draft_step(&cm.empty_shape(), &syncing, 1).seconds);
    assert!(!sp.runs_plain(&cm.empty_shape(), &syncing));
    // The same as two decodes granted nothing: the proposer runs over every token the target
    // runs, so theirs too.
    assert_eq!(sp.step(&cm, &plain, &[]).seconds, step);
    assert!(!sp.runs_plain(&plain, &[]));
}

#[test]
fn suffix_decoding_runs_no_model_drafts_up_to_32_and_is_charged_no_lookup() {
    // An engine with an n-gram lookup cost: suffix matching runs on the GPUs, not that lookup.
    let lookup = NgramLookupCost { base: 1e-3, per_seq: 1e-4, per_seq_squared: 0.0, per_context_token: 1e-6 };
    let spec = InstanceSpec::new(llama2_70b(), h100(), crate::calibration::Efficiency { ngram_lookup: Some(lookup), ..ideal() }, 4);
    let cm = CostModel::build(&spec).unwrap();
    let sp = Speculator::build(&cfg(SpecMethod::Suffix, None, 32, AcceptanceRate::Constant(0.9)), &spec).unwrap();
    assert_eq!((sp.weight_bytes_per_gpu, sp.kv_bytes_per_token_per_gpu, sp.proposer_kv_bytes_per_token_whole_model()), (0, 0, 0));
    assert_eq!((sp.k(), sp.proposal_rate(), sp.runs_a_model()), (32, 1.0, false));
    // A step of 32 drafts is its verify pass of 33 tokens alone, to the bit.
    let seqs = [SpecSeq { cached: 999, k: 32 }, SpecSeq { cached: 4000, k: 7 }];
    let (v, chunks) = chain_verify(&cm.empty_shape(), &seqs);
    assert_eq!(sp.proposal_steps(&cm.empty_shape(), &seqs), 0);
    assert_eq!(sp.lookup_seconds(&cm.empty_shape(), &seqs), 0.0);
    assert_eq!(sp.step(&cm, &cm.empty_shape(), &seqs).seconds, cm.iteration_verify(&v, &chunks).seconds);
    // 33 is refused (32 for suffix, 16 for the others); no model, no match rate, no tree.
    let refused = |c: SpeculativeConfig| match c.class_rates() {
        Err(Error::Config { path, message }) => (path, message),
        other => panic!("{other:?}"),
    };
    let (path, message) = refused(cfg(SpecMethod::Suffix, None, 33, AcceptanceRate::Constant(0.9)));
    assert_eq!(path, "speculative.num_speculative_tokens");
    assert!(message.contains("between 1 and 32 for method suffix"), "{message}");
    assert!(refused(cfg(SpecMethod::Eagle, None, 17, AcceptanceRate::Constant(0.9))).1.contains("between 1 and 16"));
    assert_eq!(refused(cfg(SpecMethod::Suffix, Some(llama2_7b()), 4, AcceptanceRate::Constant(0.9))).0, "speculative.draft_model");
    assert_eq!(refused(SpeculativeConfig { proposal_rate: Some(0.5), ..cfg(SpecMethod::Suffix, None, 4, AcceptanceRate::Constant(0.9)) }).0, "speculative.proposal_rate");
    let tree = SpeculativeConfig { speculative_token_tree: Some(vec![vec![0], vec![1]]), ..cfg(SpecMethod::Suffix, None, 2, AcceptanceRate::Constant(0.9)) };
    assert_eq!(refused(tree).0, "speculative.speculative_token_tree");
    // Adaptive verification applies to it.
    assert!(SpeculativeConfig { enable_adaptive_verification: true, ..cfg(SpecMethod::Suffix, None, 8, AcceptanceRate::Constant(0.9)) }.class_rates().is_ok());
}
