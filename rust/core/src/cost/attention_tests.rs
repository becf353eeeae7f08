//! Unit tests of attention's cost: GQA and MLA, prefill chunks and decodes, the decode
//! kernel's tail and split bandwidth, sliding windows.

use crate::cost::fixtures::*;
use crate::cost::*;
use crate::model::fixtures::*;
use crate::model::ModelSpec;

#[test]
fn spelled_out_decode_attention_is_the_pass_s_bit_for_bit() {
    // The engine's decode-attention terms (query rows, split bandwidth, the CTA tail), a time
    // scale, an FP8 cache and a power cap, one and two stages, batches below and above the
    // split: the spelled-out operator equals the pass's in every field, bit for bit.
    use crate::calibration::Efficiency;
    let engine = Efficiency { decode_query_rows: Some(5), attention_memory_split: Some(0.9), attention_cta: Some(0.25), time_scale: Some(1.3), ..ideal() };
    let kv8 = Quantization { kv_cache: KvCacheFormat::Fp8, ..Quantization::default() };
    let models = [
        CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap(),
        CostModel::new(llama3_8b(), h100(), engine.clone(), 1).unwrap(),
        CostModel::new(llama3_8b(), h100(), engine.clone(), 1).unwrap().with_quantization(kv8).unwrap().with_power_cap(Some(450.0)).unwrap(),
        CostModel::new(llama2_70b(), a100(), engine, 2).unwrap().with_pipeline(2, None).unwrap().single_microbatch(),
    ];
    for (i, cm) in models.iter().enumerate() {
        for (n, first) in [(1u64, 10u64), (7, 3000), (64, 500), (256, 2000), (1024, 100)] {
            let mut s = BatchShape::default();
            (0..n).for_each(|j| s.add_decode(first + 13 * j));
            let mut pass_op = None;
            let mut pass = crate::cost::iteration::IterationPass::new(cm, &s, |c| pass_op = Some(c));
            pass.decode_attention();
            let (tn, wn) = (pass.time_n, pass.work_n);
            let (c, time_n, work_n) = cm.gqa_decode_attention_alone(&s).expect("GQA, one micro-batch");
            let p = pass_op.unwrap();
            let bits = |c: &OpCost| (c.flops.to_bits(), c.bytes.to_bits(), c.seconds.to_bits(), c.bubble_seconds.to_bits(), c.compute_bound, c.on_pim, c.op);
            assert_eq!(bits(&c), bits(&p), "model {i}, {n} decodes");
            assert_eq!((time_n.to_bits(), work_n.to_bits()), (tn.to_bits(), wn.to_bits()));
        }
    }
    // Not for MLA, prefill chunks or several micro-batches.
    let mut s = BatchShape::default();
    s.add_decode(100);
    assert!(CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap().gqa_decode_attention_alone(&s).is_none());
    assert!(CostModel::new(llama2_70b(), a100(), ideal(), 2).unwrap().with_pipeline(2, None).unwrap().gqa_decode_attention_alone(&s).is_none());
    s.add_prefill(10, 0, true);
    assert!(CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().gqa_decode_attention_alone(&s).is_none());
}

#[test]
fn llama2_7b_a100_chunk_after_cache() {
    // A 512-token chunk after 1536 cached tokens: pairs = 512 * (1536 + 256.5).
    let cm = CostModel::new(llama2_7b(), a100(), ideal(), 1).unwrap();
    let mut s = BatchShape::default();
    s.add_prefill(512, 1536, false);
    assert_eq!(s.sampled, 0);
    let c = cm.breakdown(&s);
    assert!(c.iter().all(|x| x.op != Op::LmHead), "no token sampled, no LM head");
    let att = op(&c, Op::PrefillAttention);
    assert!(close(att.flops, 32.0 * 4.0 * 4096.0 * 512.0 * (1536.0 + 256.5)));
    let mlp = op(&c, Op::MlpGateUp);
    assert!(close(mlp.seconds, 32.0 * 2.0 * 512.0 * 4096.0 * 22016.0 / 312e12));
    assert!(mlp.compute_bound);
}

#[test]
fn decode_attention_waits_for_the_longest_sequence_once_the_batch_fills_the_gpu() {
    let mut half = ideal();
    half.attention_memory = Some(0.5);
    let plain = CostModel::new(llama3_8b(), h100(), half.clone(), 1).unwrap();
    let cm = CostModel::new(llama3_8b(), h100(), Efficiency { attention_cta: Some(0.4), ..half }, 1).unwrap();
    let attn = |cm: &CostModel, ctx: &[u64]| {
        let mut s = BatchShape::default();
        ctx.iter().for_each(|&c| s.add_decode(c));
        op(&cm.breakdown(&s), Op::DecodeAttention)
    };
    // 32 sequences x 8 KV heads = 256 blocks >= 0.8 x 2 x 132 SMs: no split, one long sequence
    // sets the time: 2 x 128 x 2500 x 2 bytes at 0.4 x 3.35 TB/s / 132, on each of 32 layers.
    let mut ctx = vec![256; 31];
    ctx.push(2500);
    let tail = 32.0 * 2.0 * 128.0 * 2500.0 * 2.0 / (3.35e12 / 132.0 * 0.4);
    let a = attn(&cm, &ctx);
    assert!(close(a.seconds, tail) && !a.compute_bound);
    assert!(attn(&plain, &ctx).seconds < 0.25 * tail, "without attention_cta, only the bytes count");
    // The same bytes at one context: 256 blocks at 0.4 of an SM's share each outrun 0.5 of the
    // bandwidth, so the kernel stays bandwidth-bound as before.
    let uniform = vec![(31 * 256 + 2500) / 32; 32];
    assert!(close(attn(&cm, &uniform).seconds, attn(&plain, &uniform).seconds));
    // 16 sequences (128 blocks): FlashAttention splits the long one's keys, no tail.
    let mut few = vec![256; 15];
    few.push(2500);
    assert!(close(attn(&cm, &few).seconds, attn(&plain, &few).seconds));
    let mut bad = ideal();
    bad.attention_cta = Some(0.0);
    assert!(CostModel::new(llama3_8b(), h100(), bad, 1).is_err());
}

#[test]
fn attention_memory_efficiency_applies_to_kv_reads_only() {
    let mut eff = ideal();
    eff.attention_memory = Some(0.5);
    let cm = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
    let mut s = BatchShape::default();
    for _ in 0..8 {
        s.add_decode(4096);
    }
    let c = cm.breakdown(&s);
    let att = op(&c, Op::DecodeAttention);
    assert!(close(att.seconds, att.bytes / (0.5 * 3.35e12)));
    let qkv = op(&c, Op::QkvProj);
    assert!(close(qkv.seconds, qkv.bytes / 3.35e12));
}

#[test]
fn deepseek_v2_lite_h100_decode_reads_the_latent_cache() {
    // 8 decodes at context 4096 on one H100: 32768 cached tokens, 16 heads, latent 512, RoPE key 64.
    let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
    let mut s = BatchShape::default();
    for _ in 0..8 {
        s.add_decode(4096);
    }
    let c = cm.breakdown(&s);
    let (ds, kv) = (8.0, 32768.0);
    // Absorbed attention reads the 576-wide cache once for all heads; besides it, the absorbed
    // queries (16 heads x 576) are read and the latent outputs (16 heads x 512) written.
    let att = op(&c, Op::DecodeAttention);
    let cache = 27.0 * kv * 576.0 * 2.0;
    let activations = 27.0 * (ds * 16.0 * 576.0 + ds * 16.0 * 512.0) * 2.0;
    assert!(close(att.bytes, cache + activations));
    assert!(close(att.flops, 27.0 * (2.0 * 16.0 * 576.0 * kv + 2.0 * 16.0 * 512.0 * kv)));
    assert!(!att.compute_bound);
    assert!(close(att.seconds, att.bytes / 3.35e12));
    // QKV: q_proj 2048 x 3072 and kv_a_proj 2048 x 576 on the 8 tokens, and W_UK absorbed into the
    // queries (16 heads x 128 x 512); no kv_b expansion without prefill. Each its own roofline.
    let qkv = op(&c, Op::QkvProj);
    let parts = [gemm(ds, 2048.0, 3072.0), gemm(ds, 2048.0, 576.0), (16.0 * gemm(ds, 128.0, 512.0).0, 16.0 * gemm(ds, 128.0, 512.0).1)];
    assert!(close(qkv.bytes, 27.0 * parts.iter().map(|p| p.1).sum::<f64>()));
    assert!(close(qkv.flops, 27.0 * parts.iter().map(|p| p.0).sum::<f64>()));
    assert!(close(qkv.seconds, qkv.bytes / 3.35e12), "all memory-bound at 8 tokens");
    // O: W_UV (16 heads x 512 x 128) then o_proj 2048 x 2048.
    let o = op(&c, Op::OProj);
    assert!(close(o.bytes, 27.0 * (16.0 * gemm(ds, 512.0, 128.0).1 + gemm(ds, 2048.0, 2048.0).1)));
    // The KV-cache write in the elementwise op is the 576-wide latent, and RoPE touches the
    // 16 x 64 query and one 64 key; layer 0 runs SiLU-mul over 10944, the MoE layers over 6 x 1408
    // routed + 2 x 1408 shared, and move their 6 token-expert pairs ((2 x 6 + 2) x 2048).
    let elem = |act: f64| ds * 2.0 * (10.0 * 2048.0 + 2.0 * (16.0 * 64.0 + 64.0) + 2.0 * 512.0 + 3.0 * act + 576.0);
    let dispatch = ds * 2.0 * 14.0 * 2048.0;
    assert!(close(op(&c, Op::Elementwise).bytes, 26.0 * (elem(8.0 * 1408.0) + dispatch) + elem(10944.0)));
}

#[test]
fn an_mla_one_token_prompt_chunk_costs_what_a_decode_of_its_context_costs() {
    // DeepSeek-V2-Lite: a prompt's last token after 8000 cached ones (a prefix-cache hit) is
    // a one-token query, which vLLM's MLA backends run in the absorbed (decode) form: the same
    // operators as a decode at context 8001, not an expansion of 8001 latents to per-head keys.
    let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
    let (mut chunk, mut decode) = (BatchShape::default(), BatchShape::default());
    chunk.add_prefill(1, 8000, true);
    decode.add_decode(8001);
    assert_eq!((chunk.single_token_chunks, chunk.single_token_keys), (1, 8001));
    let (c, d) = (cm.breakdown(&chunk), cm.breakdown(&decode));
    assert!(c.iter().all(|x| x.op != Op::PrefillAttention));
    for (a, b) in c.iter().zip(&d) {
        assert!(a.op == b.op && close(a.seconds, b.seconds) && close(a.bytes, b.bytes), "{a:?} vs {b:?}");
    }
    // Beside a longer chunk, the long one alone expands its context.
    let mut mixed = chunk;
    mixed.add_prefill(512, 0, false);
    let pre = op(&cm.breakdown(&mixed), Op::PrefillAttention);
    assert!(close(pre.flops, 27.0 * 2.0 * 16.0 * (192.0 + 128.0) * (512.0 * 513.0 / 2.0)));
    // A GQA model charges it as the prefill chunk it is.
    let gqa = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
    assert!(gqa.breakdown(&chunk).iter().any(|x| x.op == Op::PrefillAttention));
    // Within a window the chunk reads only the window's keys.
    let mut w = BatchShape::windowed(Some(4096));
    w.add_prefill(1, 8000, true);
    assert_eq!((w.single_token_chunks, w.single_token_keys, w.prefill_kv_tokens), (1, 4096, 4096));
    w.add_prefill(2, 10, true);
    assert_eq!(w.single_token_chunks, 1, "two tokens are not one");
}

#[test]
fn mla_verify_chunks_run_as_decodes_without_expanding_their_context() {
    // 8 sequences at 4095 cached tokens each verify 1 + 2 drafts on DeepSeek-V2-Lite: vLLM's MLA
    // backends run such queries in the absorbed (decode) form, so no kv_b_proj expansion of
    // the 8 x 4098 keys and no prefill attention; the 24 queries attend 8 x 3 x (4095 + 2)
    // pairs and read each sequence's 4098 cached latents once.
    let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
    let (mut v, mut chunks) = (BatchShape::default(), VerifyChunks::default());
    for _ in 0..8 {
        chunks.add(&mut v, 3, 4095);
    }
    assert_eq!((v.prefill_tokens, chunks.tokens, chunks.kv_tokens, v.sampled), (24, 24, 8 * 4098, 24));
    let breakdown = |cm: &CostModel, s: &BatchShape, chunks: &VerifyChunks| {
        let mut out = Vec::new();
        cm.for_each_op_with(s, chunks, |c| out.push(c));
        out
    };
    let c = breakdown(&cm, &v, &chunks);
    assert!(c.iter().all(|x| x.op != Op::PrefillAttention));
    let (q, pairs, keys) = (24.0, 8.0 * 3.0 * (4095.0 + 2.0), 8.0 * 4098.0);
    let att = op(&c, Op::DecodeAttention);
    assert!(close(att.flops, 27.0 * (2.0 * 16.0 * 576.0 + 2.0 * 16.0 * 512.0) * pairs));
    assert!(close(att.bytes, 27.0 * (keys * 576.0 + q * 16.0 * (576.0 + 512.0)) * 2.0));
    // QKV: the 24 tokens' projections and W_UK absorbed into their queries; no expansion.
    let qkv = op(&c, Op::QkvProj);
    let absorb = (16.0 * gemm(q, 128.0, 512.0).0, 16.0 * gemm(q, 128.0, 512.0).1);
    let parts = [gemm(q, 2048.0, 3072.0), gemm(q, 2048.0, 576.0), absorb];
    assert!(close(qkv.flops, 27.0 * parts.iter().map(|p| p.0).sum::<f64>()));
    // With a prompt chunk beside them, only the prompt expands its latents and runs the
    // expanded prefill attention; the verify chunks stay decodes.
    let mut mixed = v;
    mixed.add_prefill(512, 0, false);
    let c2 = breakdown(&cm, &mixed, &chunks);
    let pre = op(&c2, Op::PrefillAttention);
    assert!(close(pre.flops, 27.0 * 2.0 * 16.0 * (192.0 + 128.0) * (512.0 * 513.0 / 2.0)));
    assert!(close(op(&c2, Op::DecodeAttention).flops, att.flops));
    // Without the chunks listed they are the prefills they were costed as before: the
    // expansion and the expanded attention.
    assert!(close(op(&cm.breakdown(&v), Op::PrefillAttention).flops, 27.0 * 2.0 * 16.0 * (192.0 + 128.0) * pairs));
    // A GQA model charges verify chunks as the prefill chunks they are.
    let gqa = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
    let mut p = BatchShape::default();
    for _ in 0..8 {
        p.add_prefill(3, 4095, true);
        p.sampled += 2;
    }
    assert_eq!(breakdown(&gqa, &v, &chunks), gqa.breakdown(&p));
}

#[test]
fn deepseek_v2_lite_prefill_expands_the_latent() {
    // A 4096-token prompt: kv_b_proj expands the 4096 latents to 16 heads x (128 + 128) K/V,
    // then attention runs with 192-wide queries/keys and 128-wide values.
    let cm = CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap();
    let mut s = BatchShape::default();
    s.add_prefill(4096, 0, true);
    let c = cm.breakdown(&s);
    let pairs = 4096.0 * 4097.0 / 2.0;
    let att = op(&c, Op::PrefillAttention);
    assert!(close(att.flops, 27.0 * 2.0 * 16.0 * (192.0 + 128.0) * pairs));
    assert!(close(att.bytes, 27.0 * (4096.0 + 4096.0) * 16.0 * 320.0 * 2.0));
    // 1024 FLOP/B: compute-bound (a 1024-token prompt, at 256 FLOP/B, is not on an H100).
    assert!(att.compute_bound);
    let qkv = op(&c, Op::QkvProj);
    assert!(close(qkv.flops, 27.0 * 2.0 * 4096.0 * (2048.0 * 3072.0 + 2048.0 * 576.0 + 512.0 * 4096.0)));
    assert!(close(qkv.seconds, qkv.flops / 989.4e12));
    assert!(close(op(&c, Op::OProj).flops, 27.0 * 2.0 * 4096.0 * 2048.0 * 2048.0));
    assert!(c.iter().all(|x| x.op != Op::DecodeAttention));
}

#[test]
fn decode_attention_reads_faster_while_the_batch_leaves_room_to_split_keys() {
    // H100: 132 SMs, threshold 0.8 x 2 x 132 = 211.2 (sequence, KV head) blocks; Llama-3-8B has 8 KV heads.
    let split = CostModel::new(llama3_8b(), h100(), Efficiency { attention_memory_split: Some(0.9), attention_memory: Some(0.5), ..ideal() }, 1).unwrap();
    let at = |n: usize| {
        let mut s = BatchShape::default();
        for _ in 0..n {
            s.add_decode(8192);
        }
        op(&split.breakdown(&s), Op::DecodeAttention)
    };
    let (a16, a32) = (at(16), at(32));
    assert!(close(a16.seconds, a16.bytes / (0.9 * 3.35e12)), "16 x 8 = 128 blocks: split");
    assert!(close(a32.seconds, a32.bytes / (0.5 * 3.35e12)), "32 x 8 = 256 blocks: no split");
}

#[test]
fn sliding_window_decode_reads_at_most_the_window() {
    // Mistral-7B (window 4096): 8 decodes at context 10000 read 4096 keys each, exactly as 8
    // decodes at context 4096 do; Llama-3-8B's shapes without the window read all 10000.
    let cm = CostModel::new(mistral_7b(), h100(), ideal(), 1).unwrap();
    let at = |ctx: u64| {
        let mut s = cm.empty_shape();
        for _ in 0..8 {
            s.add_decode(ctx);
        }
        op(&cm.breakdown(&s), Op::DecodeAttention)
    };
    let (long, window) = (at(10_000), at(4096));
    // Per layer: queries in and outputs out (2 x 8 x 4096) and K, V of 8 KV heads x 128 over 8 x 4096 keys.
    let bytes = 32.0 * (2.0 * 8.0 * 4096.0 + 2.0 * 1024.0 * 8.0 * 4096.0) * 2.0;
    assert!(close(long.bytes, bytes) && close(window.bytes, bytes));
    assert!(close(long.flops, 32.0 * 4.0 * 4096.0 * 8.0 * 4096.0));
    assert!(at(1000).bytes < bytes, "shorter than the window: the whole context");
    let unbounded = CostModel::new(ModelSpec { sliding_window: None, ..mistral_7b() }, h100(), ideal(), 1).unwrap();
    let mut s = unbounded.empty_shape();
    for _ in 0..8 {
        s.add_decode(10_000);
    }
    assert!(close(op(&unbounded.breakdown(&s), Op::DecodeAttention).bytes, 32.0 * (2.0 * 8.0 * 4096.0 + 2.0 * 1024.0 * 80_000.0) * 2.0));
    // Prefill of 10000 tokens attends within the window: 4096 x 4097 / 2 + 5904 x 4096 pairs.
    let mut p = cm.empty_shape();
    p.add_prefill(10_000, 0, true);
    let pairs = 4096.0 * 4097.0 / 2.0 + 5904.0 * 4096.0;
    assert!(close(op(&cm.breakdown(&p), Op::PrefillAttention).flops, 32.0 * 4.0 * 4096.0 * pairs));
    assert!(CostModel::new(ModelSpec { sliding_window: Some(0), ..mistral_7b() }, h100(), ideal(), 1).is_err());
}
