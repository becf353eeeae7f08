//! Attention: the Q/K/V and output projections and the attention kernels of prefill chunks and
//! decodes, for grouped-query (GQA) and multi-head latent (MLA) attention, and the decode-attention
//! tail.

use super::iteration::IterationPass;
use super::roofline::Kernel;
use super::{BatchShape, CostModel, Op, OpCost};

/// Attention shapes on one GPU after tensor-parallel sharding of the query heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Attention {
    /// Grouped-query attention: query width (heads x head_dim / tp) and the width of K (or V) of
    /// the GPU's KV heads.
    Gqa { q: f64, kv: f64 },
    /// Multi-head latent attention: `heads` query heads on the GPU, per-head sizes, the KV latent
    /// width `lora` and the query latent width, if any.
    Mla { heads: f64, nope: f64, rope: f64, v: f64, lora: f64, q_lora: Option<f64> },
}

/// Elements per token that the elementwise operator touches besides the hidden state, set by the
/// attention kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttentionWidths {
    /// RoPE'd queries and keys.
    pub(super) rope: f64,
    /// The latent norm (MLA; 0 for GQA).
    pub(super) latent: f64,
    /// The KV-cache write.
    pub(super) cache: f64,
}

impl CostModel {
    /// The least time of one layer's decode attention over `seqs` sequences whose longest context
    /// is `max_context` tokens (GQA): FlashAttention runs one thread block per (sequence, KV head)
    /// and splits a sequence's keys over several blocks only while those blocks fill less than
    /// 80% of the GPU's resident-block slots (two per SM), so beyond that the kernel waits for the
    /// longest sequence's block, which reads its `2 * head_dim * max_context` cached elements at
    /// `attention_cta` of one SM's share of the HBM bandwidth. 0 without `attention_cta` or
    /// `sm_count`, or with MLA (its kernels split differently).
    fn decode_attention_tail(&self, seqs: f64, max_context: f64) -> f64 {
        let (Some(f), Attention::Gqa { kv, .. }) = (self.eff.attention_cta, self.attn) else { return 0.0 };
        let sms = self.gpu.sm_count as f64;
        let head = self.model.head_dim as f64;
        if sms == 0.0 || seqs * (kv / head) < 0.8 * 2.0 * sms {
            return 0.0;
        }
        2.0 * head * max_context * self.kvb / (self.gpu.memory_bandwidth / sms * f) * self.slow_memory
    }
}

impl CostModel {
    /// The bandwidth decode attention reaches over `seqs` sequences while FlashAttention still
    /// splits each sequence's keys over several thread blocks (the batch's (sequence, KV head)
    /// blocks fill less than 80% of the GPU's two resident blocks per SM): `attention_memory_split`
    /// of peak. None when unset, without `sm_count`, with MLA, or once the batch fills the GPU.
    fn decode_split_bandwidth(&self, seqs: f64) -> Option<f64> {
        let (Some(f), Attention::Gqa { kv, .. }) = (self.eff.attention_memory_split, self.attn) else { return None };
        let sms = self.gpu.sm_count as f64;
        let head = self.model.head_dim as f64;
        (sms > 0.0 && seqs * (kv / head) < 0.8 * 2.0 * sms).then_some(self.gpu.memory_bandwidth * f)
    }
}

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the Q/K/V projection, prefill and decode attention and the output projection.
    pub(super) fn attention(&mut self) -> AttentionWidths {
        match self.cm.attn {
            Attention::Gqa { q, kv } => self.gqa(q, kv),
            Attention::Mla { heads, nope, rope, v, lora, q_lora } => self.mla(heads, nope, rope, v, lora, q_lora),
        }
    }

    /// Grouped-query attention with query width `q` and K (or V) width `kv` on one GPU.
    fn gqa(&mut self, q: f64, kv: f64) -> AttentionWidths {
        let (cm, shape) = (self.cm, self.shape);
        let (h, mt) = (cm.h, self.mt);
        self.emit(Op::QkvProj, &[Kernel::all(cm.gemm(mt, h, q + 2.0 * kv))], cm.flops_gemm, true);
        if shape.prefill_tokens > 0 {
            self.gqa_prefill(q, kv);
        }
        if shape.decode_seqs > 0 {
            self.gqa_decode(q, kv);
        }
        self.emit(Op::OProj, &[Kernel::all(cm.gemm(mt, q, h))], cm.flops_gemm, true);
        AttentionWidths { rope: q + kv, latent: 0.0, cache: 2.0 * kv }
    }

    /// Causal prefill attention of the chunks (grouped-query attention).
    fn gqa_prefill(&mut self, q: f64, kv: f64) {
        let cm = self.cm;
        let work = (4.0 * q * self.pairs, (2.0 * self.pt * q + 2.0 * kv * self.pkv * cm.kv_ratio()) * cm.b);
        self.emit(Op::PrefillAttention, &[Kernel::all(work)], cm.flops_attn, true);
    }

    /// Prefill attention alone, as [`Self::attention`] charges it, for grouped-query attention
    /// (what the prefill memo recomputes: `prefill_memo.rs`); nothing for MLA.
    pub(super) fn prefill_attention_alone(&mut self) {
        if let Attention::Gqa { q, kv } = self.cm.attn {
            self.gqa_prefill(q, kv);
        }
    }

    /// Multi-head latent attention: `heads` query heads on the GPU, per-head sizes, the KV latent
    /// width `lora` and the query latent width, if any.
    fn mla(&mut self, heads: f64, nope: f64, rope: f64, v: f64, lora: f64, q_lora: Option<f64>) -> AttentionWidths {
        let (cm, shape) = (self.cm, self.shape);
        let (h, b, mt) = (cm.h, cm.b, self.mt);
        // Speculative verify chunks and one-token chunks run as decodes (absorbed form: vLLM's
        // MLA backends run every query of at most their decode threshold's tokens as a decode,
        // one token on all of them, up to 1 + k on the Hopper ones, FlashMLA and
        // FlashAttention-MLA), not as prefills that would expand their whole context.
        let (vt, vpairs, vkv) = self.absorbed_chunks();
        let (pt, pairs, pkv) = (self.pt - vt, (self.pairs - vpairs).max(0.0), self.pkv - vkv);
        let (ds, prefills) = (self.ds + vt, shape.prefill_tokens > self.verify_chunks.tokens + shape.single_token_chunks);
        let qk = nope + rope;
        let none = Kernel::default();
        // Queries (through the query latent, if any) and the replicated KV down-projection on
        // every token; prefill chunks expand their context's latents to per-head K and V
        // (kv_b_proj); decodes absorb kv_b_proj's key half into their queries instead.
        let (q_a, q_b) = match q_lora {
            Some(r) => (Kernel::all(cm.gemm(mt, h, r)), Kernel::all(cm.gemm(mt, r, heads * qk))),
            None => (Kernel::all(cm.gemm(mt, h, heads * qk)), none),
        };
        let kv_a = Kernel::all(cm.gemm(mt, h, lora + rope));
        let expand = if prefills && pkv > 0.0 { Kernel::all(cm.gemm(pkv, lora, heads * (nope + v))) } else { none };
        let absorb_k = if ds > 0.0 { Kernel::all(cm.heads_gemm(heads, ds, nope, lora)) } else { none };
        self.emit(Op::QkvProj, &[q_a, q_b, kv_a, expand, absorb_k], cm.flops_gemm, true);
        if prefills {
            // Expanded form: multi-head attention with qk-sized keys and v-sized values.
            let work = (2.0 * heads * (qk + v) * pairs, (pt + pkv) * heads * (qk + v) * b);
            self.emit(Op::PrefillAttention, &[Kernel::all(work)], cm.flops_attn, true);
        }
        if ds > 0.0 {
            self.mla_decode(heads, rope, lora);
        }
        // Decodes project their latent outputs to values (kv_b_proj's value half), then o_proj.
        let absorb_v = if ds > 0.0 { Kernel::all(cm.heads_gemm(heads, ds, lora, v)) } else { none };
        self.emit(Op::OProj, &[absorb_v, Kernel::all(cm.gemm(mt, heads * v, h))], cm.flops_gemm, true);
        AttentionWidths { rope: heads * rope + rope, latent: lora, cache: lora + rope }
    }
}

impl CostModel {
    /// The one kernel of GQA decode attention (query width `q`, K or V width `kv`) over `ds`
    /// decodes of one micro-batch reading `dkv` cached keys, in `shape`.
    #[inline(always)]
    fn gqa_decode_kernel(&self, shape: &BatchShape, q: f64, kv: f64, ds: f64, dkv: f64) -> Kernel {
        // Beside prefill chunks, decodes go through the variable-length kernel's query tiles.
        let rows = if shape.prefill_tokens > 0 { self.eff.mixed_query_tile } else { self.eff.decode_query_rows };
        let rows = rows.unwrap_or(1).max(1) as f64;
        let work = (4.0 * q * dkv * rows, (2.0 * ds * q + 2.0 * kv * dkv * self.kv_ratio()) * self.b);
        let floor = self.decode_attention_tail(ds, shape.decode_max_context as f64);
        let bw = self.decode_split_bandwidth(ds);
        let pim_flops = Some(4.0 * q * dkv);
        Kernel { floor, bw, pim_flops, ..Kernel::all(work) }
    }

    /// Decode attention of the decode-only `shape` run as one micro-batch, with grouped-query
    /// attention and no PIM, and the pass's per-layer time and work multipliers: what
    /// [`IterationPass::decode_attention`] charges, the same operations on the same values in
    /// the same order (bit-identical; `emit` with one kernel spelled out), without setting up a
    /// pass. None for other batches and models (the caller takes the pass). A held pipelined
    /// batch's stage costs take it at every pass (`decode_memo.rs`).
    pub(super) fn gqa_decode_attention_alone(&self, shape: &BatchShape) -> Option<(OpCost, f64, f64)> {
        let Attention::Gqa { q, kv } = self.attn else { return None };
        if self.microbatches != 1 || self.pim.is_some() || shape.prefill_tokens > 0 || shape.decode_seqs == 0 {
            return None;
        }
        // `IterationPass::new` with one micro-batch: m = 1, micro = 1.
        let m = 1.0;
        let slots = m + self.pp as f64 - 1.0;
        let (work_n, time_n) = (self.stage_layers * m, self.stage_layers * slots);
        let (ds, dkv) = (shape.decode_seqs as f64 * m, shape.decode_kv_tokens as f64 * m);
        let k = self.gqa_decode_kernel(shape, q, kv, ds, dkv);
        // `emit` of that one kernel (share 1, no PIM) on every layer.
        let (flops, bytes) = (0.0 + k.share * k.flops, 0.0 + k.share * k.bytes);
        let (t, cb) = self.roofline(k.flops, k.bytes, self.flops_attn, k.bw.unwrap_or(self.bw_attn));
        let (t, cb) = if k.floor > t { (k.floor, false) } else { (t, cb) };
        let secs = 0.0 + k.share * t;
        let cb_secs = 0.0 + if cb { k.share * t } else { 0.0 };
        let cb = 2.0 * cb_secs >= secs;
        let c = OpCost { op: Op::DecodeAttention, flops: flops * work_n, bytes: bytes * work_n, seconds: secs * time_n, compute_bound: cb, on_pim: false, bubble_seconds: secs * (time_n - work_n) };
        Some((self.scaled(c), time_n, work_n))
    }
}

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges decode attention alone (the batch has decodes): what a decode-only iteration's
    /// cost depends on beyond its sequence count (see `decode_memo.rs`).
    pub(super) fn decode_attention(&mut self) {
        match self.cm.attn {
            Attention::Gqa { q, kv } => self.gqa_decode(q, kv),
            Attention::Mla { heads, rope, lora, .. } => self.mla_decode(heads, rope, lora),
        }
    }

    /// GQA decode attention over the batch's cached keys, with query width `q` and K (or V) width `kv`.
    fn gqa_decode(&mut self, q: f64, kv: f64) {
        let k = self.cm.gqa_decode_kernel(self.shape, q, kv, self.ds, self.dkv);
        self.emit(Op::DecodeAttention, &[k], self.cm.flops_attn, true);
    }

    /// MLA decode attention (absorbed form) with `heads` query heads, the RoPE key width `rope`
    /// and the KV latent width `lora`, over the decodes, the speculative verify chunks and the
    /// one-token chunks.
    fn mla_decode(&mut self, heads: f64, rope: f64, lora: f64) {
        let cm = self.cm;
        let (vt, vpairs, vkv) = self.absorbed_chunks();
        // Queries, query-key pairs, and keys read once per sequence (a verify chunk's queries
        // share their sequence's cache read).
        let (b, ds, pairs, keys) = (cm.b, self.ds + vt, self.dkv + vpairs, self.dkv + vkv);
        // Absorbed form: every head attends over the cached latent + RoPE key (scores) and
        // the latent (values); reads the cache, the absorbed queries, writes latent outputs.
        let flops = 2.0 * heads * (lora + rope) * pairs + 2.0 * heads * lora * pairs;
        let bytes = (keys * (lora + rope) * cm.kv_ratio() + ds * heads * (lora + rope) + ds * heads * lora) * b;
        self.emit(Op::DecodeAttention, &[Kernel::all((flops, bytes))], cm.flops_attn, true);
    }
}

#[cfg(test)]
mod tests {
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
}
