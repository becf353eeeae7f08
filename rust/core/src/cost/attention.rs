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

    /// Causal prefill attention of the chunks (grouped-query attention). With the engine's
    /// `verify_query_tile`, a speculative verify chunk's queries cost that tile's rows over all
    /// its keys per query head (never fewer than its own causal pairs), and the chunk's longest
    /// (sequence, query head) block, on one SM, bounds the kernel's time from below.
    fn gqa_prefill(&mut self, q: f64, kv: f64) {
        let cm = self.cm;
        let mut pairs = self.pairs;
        let mut floor = 0.0;
        if let Some(tile) = cm.eff.verify_query_tile.filter(|&t| t > 0 && self.verify_chunks.tokens > 0) {
            let (v, micro) = (self.verify_chunks, 1.0 / self.m);
            let rows = tile as f64;
            // Never fewer than the chunks' own causal pairs (a tile smaller than a chunk).
            pairs += ((rows * v.kv_tokens as f64).max(v.pairs) - v.pairs) * micro;
            let sms = cm.gpu.sm_count as f64;
            if sms > 0.0 {
                floor = 4.0 * rows * v.max_kv_tokens as f64 * cm.model.head_dim as f64 / (cm.flops_attn / sms);
            }
        }
        let work = (4.0 * q * pairs, (2.0 * self.pt * q + 2.0 * kv * self.pkv * cm.kv_ratio()) * cm.b);
        self.emit(Op::PrefillAttention, &[Kernel { floor, ..Kernel::all(work) }], cm.flops_attn, true);
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
#[path = "attention_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "verify_attention_tests.rs"]
mod verify_tests;
