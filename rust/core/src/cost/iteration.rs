//! One iteration assembled from its operator families, and the summaries built on it.

use super::roofline::Kernel;
use super::{BatchShape, CostModel, IterationCost, Op, OpCost, VerifyChunks};

/// One pass over the operators of an iteration: the batch as one micro-batch sees it, the
/// pipeline's multipliers, and the sink every operator's cost goes to (in execution order).
pub(super) struct IterationPass<'a, F: FnMut(OpCost)> {
    /// The cost model.
    pub(super) cm: &'a CostModel,
    /// The whole batch.
    pub(super) shape: &'a BatchShape,
    /// Tokens through the per-token operators (padded), whole batch.
    pub(super) t: f64,
    /// Micro-batches.
    pub(super) m: f64,
    /// Tokens of one micro-batch.
    pub(super) mt: f64,
    /// Stage-slots of the pipeline, `m + pp - 1`.
    pub(super) slots: f64,
    /// What a per-layer operator's work (FLOPs, bytes) on one micro-batch is multiplied by.
    pub(super) work_n: f64,
    /// What a per-layer operator's time on one micro-batch is multiplied by.
    pub(super) time_n: f64,
    /// Prefill tokens of one micro-batch.
    pub(super) pt: f64,
    /// Prefill query-key pairs of one micro-batch.
    pub(super) pairs: f64,
    /// Keys the prefill chunks of one micro-batch read.
    pub(super) pkv: f64,
    /// Decoding sequences of one micro-batch.
    pub(super) ds: f64,
    /// Keys the decodes of one micro-batch read.
    pub(super) dkv: f64,
    /// The speculative verify chunks among the prefill chunks (none unless costing a verify pass).
    pub(super) verify_chunks: VerifyChunks,
    /// Prefill attention's seconds and whether it ran on the PIM (0, false until charged).
    prefill_attention: (f64, bool),
    /// Seconds charged so far.
    emitted: f64,
    sink: F,
}

impl<'a, F: FnMut(OpCost)> IterationPass<'a, F> {
    /// A pass over `shape` handing every operator's cost to `sink`.
    pub(super) fn new(cm: &'a CostModel, shape: &'a BatchShape, sink: F) -> Self {
        let t = cm.padded_tokens(shape) as f64;
        // A batch splits into at most one micro-batch per token (a prompt may be split by tokens,
        // a decode's one token cannot): a batch of fewer tokens than `microbatches` runs as that
        // many micro-batches (a single decode passes once through every stage).
        let m = u64::from(cm.microbatches).min((shape.prefill_tokens + shape.decode_seqs).max(1)) as f64;
        // (1 / 1 without the division's latency: asynchronous pipelines and pp = 1 run one.)
        let micro = if m == 1.0 { 1.0 } else { 1.0 / m };
        let mt = t * micro;
        let stage_layers = cm.stage_layers;
        let slots = m + cm.pp as f64 - 1.0;
        // Per-layer operators on one micro-batch: work scales by layers x micro-batches, time by
        // layers x slots (for pp = 1: m = 1, slots = 1, so both are the layer count).
        let (work_n, time_n) = (stage_layers * m, stage_layers * slots);
        let pt = shape.prefill_tokens as f64 * micro;
        let pairs = shape.prefill_pairs * micro;
        let pkv = shape.prefill_kv_tokens as f64 * micro;
        let ds = shape.decode_seqs as f64 * micro;
        let dkv = shape.decode_kv_tokens as f64 * micro;
        IterationPass { cm, shape, t, m, mt, slots, work_n, time_n, pt, pairs, pkv, ds, dkv, verify_chunks: VerifyChunks::default(), prefill_attention: (0.0, false), emitted: 0.0, sink }
    }

    /// Of the prefill figures, the short chunks whose queries run as decodes where the attention
    /// kind's engines do so (MLA's absorbed form): the speculative verify chunks and the one-token
    /// chunks, their tokens, query-key pairs and keys in one micro-batch (computed on demand:
    /// only MLA charges them apart).
    pub(super) fn absorbed_chunks(&self) -> (f64, f64, f64) {
        let (v, s, micro) = (self.verify_chunks, self.shape, 1.0 / self.m);
        let keys = s.single_token_keys as f64;
        ((v.tokens + s.single_token_chunks) as f64 * micro, (v.pairs + keys) * micro, (v.kv_tokens as f64 + keys) * micro)
    }

    /// Hands one operator's cost to the sink.
    pub(super) fn push(&mut self, c: OpCost) {
        let c = self.cm.scaled(c);
        self.emitted += c.seconds;
        (self.sink)(c)
    }

    /// Charges `op` made of `kernels`: each kernel gets its own roofline; the operator's time is the
    /// kernels' times weighted by the share of the layers that run them, and it is compute-bound
    /// when most of it is. A `per_layer` operator runs on the PIM when that is faster, and is
    /// scaled to all layers and micro-batches.
    pub(super) fn emit(&mut self, op: Op, kernels: &[Kernel], peak: f64, per_layer: bool) {
        let cm = self.cm;
        let bw = match op {
            Op::PrefillAttention | Op::DecodeAttention => cm.bw_attn,
            Op::Elementwise | Op::Embedding => cm.bw_elem,
            Op::MoeExperts => cm.bw_expert,
            _ => cm.bw,
        };
        let gemm_op = matches!(op, Op::QkvProj | Op::OProj | Op::MlpGateUp | Op::MlpDown | Op::MoeRouter | Op::MoeExperts);
        let (mut flops, mut bytes, mut secs, mut cb_secs, mut pim_secs, mut pim_cb_secs, mut pim_flops) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for k in kernels {
            flops += k.share * k.flops;
            bytes += k.share * k.bytes;
            let kbw = k.bw.unwrap_or(bw);
            let (t, cb) = if op == Op::MoeExperts { cm.expert_roofline(k.flops, k.bytes, peak, kbw) } else if gemm_op { cm.gemm_roofline(k.flops, k.bytes, peak, kbw) } else { cm.roofline(k.flops, k.bytes, peak, kbw) };
            let (t, cb) = if k.floor > t { (k.floor, false) } else { (t, cb) };
            secs += k.share * t;
            cb_secs += if cb { k.share * t } else { 0.0 };
            if let Some(p) = &cm.pim {
                let kf = k.pim_flops.unwrap_or(k.flops);
                let t = k.share * p.seconds(kf, k.bytes);
                pim_secs += t;
                pim_flops += k.share * kf;
                pim_cb_secs += if kf / p.peak_flops >= k.bytes / p.internal_bandwidth { t } else { 0.0 };
            }
        }
        let mut cb = 2.0 * cb_secs >= secs;
        let mut on_pim = false;
        if cm.pim.is_some() && per_layer && pim_secs < secs {
            on_pim = true;
            cb = 2.0 * pim_cb_secs >= pim_secs;
            secs = pim_secs;
            flops = pim_flops;
        }
        if op == Op::PrefillAttention {
            self.prefill_attention = (secs, on_pim);
        }
        if op == Op::DecodeAttention && on_pim && !self.prefill_attention.1 {
            // Co-processing: decode attention on the PIM runs while the GPU does prefill attention.
            secs = (secs - self.prefill_attention.0).max(0.0);
        }
        let (wn, tn) = if per_layer { (self.work_n, self.time_n) } else { (1.0, 1.0) };
        self.push(OpCost { op, flops: flops * wn, bytes: bytes * wn, seconds: secs * tn, compute_bound: cb, on_pim, bubble_seconds: secs * (tn - wn) });
    }

    /// The embedding lookup, once on the whole batch.
    fn embedding(&mut self) {
        let cm = self.cm;
        let (t, h, b) = (self.t, cm.h, cm.b);
        self.emit(Op::Embedding, &[Kernel::all((0.0, 2.0 * t * h * b))], cm.flops_gemm, false);
    }

    /// The final norm, the LM head on the sampled tokens and the logits gather, once on the whole batch.
    fn lm_head(&mut self) {
        let cm = self.cm;
        let (t, h, b) = (self.t, cm.h, cm.b);
        let s = self.shape.sampled as f64;
        if s > 0.0 {
            // The LM head stays 16-bit under quantization, as in vLLM.
            let (fl, by) = cm.gemm_16bit(s, h, cm.vocab_shard);
            let norm_bytes = 2.0 * t * h * b;
            let logits_bytes = s * cm.vocab_shard * 4.0;
            let (secs, cb) = cm.gemm_roofline(fl, by + norm_bytes + logits_bytes, cm.flops_16bit, cm.bw);
            let gather = cm.logits_gather_seconds(s);
            self.push(OpCost { op: Op::LmHead, flops: fl, bytes: by + norm_bytes + logits_bytes, seconds: secs + gather, compute_bound: cb, on_pim: false, bubble_seconds: 0.0 });
        }
    }

    /// The engine's per-step CPU time (fixed, per sequence, per token) and per-layer overheads.
    fn overhead(&mut self) {
        let c = self.cm.overhead_cost(self.shape, self.time_n, self.work_n, self.emitted);
        self.push(c);
    }

    /// Seconds charged so far.
    pub(super) fn emitted(&self) -> f64 {
        self.emitted
    }
}

impl CostModel {
    /// The engine's per-step overheads of an iteration of `shape` (before `time_scale`), after
    /// operators of `emitted` seconds (scaled) were charged; `time_n` is the per-layer time
    /// multiplier, `work_n` the per-layer work multiplier (the per-layer overheads' bubble is
    /// their `time_n - work_n` share).
    pub(super) fn overhead_cost(&self, shape: &BatchShape, time_n: f64, work_n: f64, emitted: f64) -> OpCost {
        let eff = &self.eff;
        let seqs = (shape.prefill_seqs + shape.decode_seqs) as f64;
        let cpu = eff.iteration_overhead + eff.seq_overhead.unwrap_or(0.0) * seqs + eff.token_overhead.unwrap_or(0.0) * shape.tokens() as f64;
        let moe = eff.moe_layer_overhead.unwrap_or(0.0) * self.moe_share;
        let gpu_fixed = (eff.layer_overhead + moe) * time_n;
        // With asynchronous scheduling only the CPU time beyond the GPU's (so far, unscaled) shows.
        let unscaled = match eff.time_scale {
            Some(scale) => emitted / scale,
            None => emitted,
        };
        let cpu = if eff.cpu_overlap == Some(true) { (cpu - unscaled - gpu_fixed).max(0.0) } else { cpu };
        let overhead = cpu + gpu_fixed;
        let bubble = (eff.layer_overhead + moe) * (time_n - work_n);
        OpCost { op: Op::Overhead, flops: 0.0, bytes: 0.0, seconds: overhead, compute_bound: false, on_pim: false, bubble_seconds: bubble }
    }

    /// `c` as [`IterationPass::push`] hands it on: its seconds multiplied by `time_scale`, if set.
    pub(super) fn scaled(&self, c: OpCost) -> OpCost {
        match self.eff.time_scale {
            Some(k) => OpCost { seconds: c.seconds * k, bubble_seconds: c.bubble_seconds * k, ..c },
            None => c,
        }
    }
}

impl CostModel {
    /// Calls `f` with each operator's cost for an iteration of `shape`.
    ///
    /// With pipeline parallelism (`pp` stages, `m` micro-batches) the decoder layers run as
    /// `m + pp - 1` stage-slots, each one micro-batch (the batch / m) through the `ceil(L / pp)`
    /// layers of a stage followed by a send to the next stage; `pp - 1` of those slots are the
    /// pipeline bubble. An operator's seconds are its share of that critical path; its FLOPs and
    /// bytes are what one GPU of a stage does. Embedding and LM head run once on the whole batch.
    ///
    /// A MoE model's dense layers (the `first_dense_layers` and those between interleaved MoE
    /// layers, d of L) are charged as shares of every layer: the router and experts on (L - d) / L
    /// of them, the dense MLP on d / L (exact for pp = 1; with pipelining, every stage gets the
    /// average mix).
    pub fn for_each_op(&self, shape: &BatchShape, sink: impl FnMut(OpCost)) {
        self.for_each_op_with(shape, &VerifyChunks::default(), sink)
    }

    /// [`CostModel::for_each_op`] of a speculative verify pass: `shape` holds `verify`'s chunks
    /// among its prefill chunks (see [`VerifyChunks`]).
    pub fn for_each_op_with(&self, shape: &BatchShape, verify: &VerifyChunks, sink: impl FnMut(OpCost)) {
        let mut pass = IterationPass::new(self, shape, sink);
        pass.verify_chunks = *verify;
        pass.embedding();
        let widths = pass.attention();
        pass.experts();
        pass.mlp();
        pass.elementwise(widths);
        pass.all_reduce();
        pass.all_to_all();
        pass.pipeline_send();
        pass.lm_head();
        pass.overhead();
        pass.weight_fetch();
    }

    /// Predicted duration of one iteration, seconds.
    pub fn iteration_seconds(&self, shape: &BatchShape) -> f64 {
        self.iteration(shape).seconds
    }

    /// Predicted duration of one iteration and its compute-bound share.
    pub fn iteration(&self, shape: &BatchShape) -> IterationCost {
        self.iteration_verify(shape, &VerifyChunks::default())
    }

    /// [`CostModel::iteration`] of a speculative verify pass whose chunks `verify` lists.
    pub fn iteration_verify(&self, shape: &BatchShape, verify: &VerifyChunks) -> IterationCost {
        let mut c = IterationCost::default();
        self.for_each_op_with(shape, verify, |op| c.charge(&op));
        c
    }

    /// Splits an iteration of `shape` for the expert timeline: (seconds of one MoE layer without
    /// its routed experts, seconds outside the MoE layers: embedding, LM head, overheads, dense layers).
    pub fn moe_layer_split(&self, shape: &BatchShape) -> (f64, f64) {
        self.moe_layer_split_verify(shape, &VerifyChunks::default())
    }

    /// [`CostModel::moe_layer_split`] of a speculative verify pass whose chunks `verify` lists.
    pub fn moe_layer_split_verify(&self, shape: &BatchShape, verify: &VerifyChunks) -> (f64, f64) {
        let mut split = MoeLayerSplit::default();
        self.for_each_op_with(shape, verify, |c| split.add(&c));
        split.finish(self)
    }

    /// The per-operator breakdown of one iteration.
    pub fn breakdown(&self, shape: &BatchShape) -> Vec<OpCost> {
        let mut v = Vec::with_capacity(11);
        self.for_each_op(shape, |c| v.push(c));
        v
    }
}

/// The sums of [`CostModel::moe_layer_split`], operator by operator in execution order.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct MoeLayerSplit {
    fixed: f64,
    layered: f64,
}

impl MoeLayerSplit {
    /// Adds one operator: the routed experts to neither sum, the embedding, LM head, overheads,
    /// weight fetch and pipeline sends to the fixed part, the rest to the layers.
    #[inline]
    pub(super) fn add(&mut self, c: &OpCost) {
        match c.op {
            Op::MoeExperts => {}
            Op::Embedding | Op::LmHead | Op::Overhead | Op::WeightFetch | Op::PipelineSend => self.fixed += c.seconds,
            _ => self.layered += c.seconds,
        }
    }

    /// (seconds of one MoE layer without its routed experts, seconds outside the MoE layers).
    pub(super) fn finish(self, cost: &CostModel) -> (f64, f64) {
        let per_layer = self.layered / cost.model.num_layers as f64;
        let dense = (cost.model.num_layers - cost.model.moe_layers()) as f64;
        (per_layer, self.fixed + dense * per_layer)
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    #[test]
    fn llama3_8b_h100_decode_is_weight_bandwidth_bound() {
        // One decode at context 1: QKV GEMM 4096 x (4096 + 2*1024) = 4096 x 6144.
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_decode(1);
        let c = cm.breakdown(&s);
        let qkv = op(&c, Op::QkvProj);
        let bytes_per_layer = (4096.0 * 6144.0 + 4096.0 + 6144.0) * 2.0;
        assert!(close(qkv.bytes, 32.0 * bytes_per_layer));
        assert!(close(qkv.seconds, 32.0 * bytes_per_layer / 3.35e12));
        assert!(!qkv.compute_bound);
        // MLP gate+up: 4096 x 28672 weights.
        let gu = op(&c, Op::MlpGateUp);
        assert!(close(gu.seconds, 32.0 * (4096.0 * 28672.0 + 4096.0 + 28672.0) * 2.0 / 3.35e12));
        // LM head reads 4096 x 128256 bf16 weights and writes one row of fp32 logits.
        let lm = op(&c, Op::LmHead);
        let lm_bytes = (4096.0 * 128256.0 + 4096.0 + 128256.0) * 2.0 + 2.0 * 4096.0 * 2.0 + 128256.0 * 4.0;
        assert!(close(lm.seconds, lm_bytes / 3.35e12));
        // The whole step is close to the weights it reads over the bandwidth: 16.06 GB of weights
        // less the 1.05 GB embedding table (only one row is read) = 15.01 GB / 3.35 TB/s = 4.48 ms.
        let total = cm.iteration_seconds(&s);
        assert!(total > 4.47e-3 && total < 4.50e-3, "total {total}");
    }

    #[test]
    fn llama3_8b_h100_prefill_is_compute_bound() {
        // Prefill of 2048 tokens: QKV flops 2 * 2048 * 4096 * 6144 per layer.
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(2048, 0, true);
        let c = cm.breakdown(&s);
        let qkv = op(&c, Op::QkvProj);
        assert!(qkv.compute_bound);
        assert!(close(qkv.seconds, 32.0 * 2.0 * 2048.0 * 4096.0 * 6144.0 / 989.4e12));
        // Causal attention: 4 * 4096 * (2048 * 2049 / 2) flops per layer.
        let att = op(&c, Op::PrefillAttention);
        assert!(close(att.flops, 32.0 * 4.0 * 4096.0 * 2048.0 * 2049.0 / 2.0));
        assert!(close(att.seconds, att.flops / 989.4e12));
        // Only one token is sampled: the LM head GEMM has one row.
        let lm = op(&c, Op::LmHead);
        assert!(close(lm.flops, 2.0 * 4096.0 * 128256.0));
    }

    #[test]
    fn llama2_70b_a100_tp4_decode_batch() {
        // 64 decodes at context 1024 on 4 x A100, Llama-2-70B (8 KV heads -> 2 per GPU).
        let cm = CostModel::new(llama2_70b(), a100(), ideal(), 4).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(1024);
        }
        let c = cm.breakdown(&s);
        // Decode attention reads K and V: 2 * (2 heads * 128) * 65536 keys * 2 bytes, plus q in / o out.
        let att = op(&c, Op::DecodeAttention);
        let bytes = (2.0 * 64.0 * 2048.0 + 2.0 * 256.0 * 65536.0) * 2.0;
        assert!(close(att.bytes, 80.0 * bytes));
        assert!(close(att.seconds, 80.0 * bytes / 2.039e12));
        // MLP down: 7168 x 8192 per GPU, 64 tokens.
        let down = op(&c, Op::MlpDown);
        let by = (7168.0 * 8192.0 + 64.0 * 7168.0 + 64.0 * 8192.0) * 2.0;
        assert!(close(down.seconds, 80.0 * by / 2.039e12));
        // Two ring all-reduces of 64 x 8192 x 2 bytes per layer over 300 GB/s, 6 steps of 2 us each.
        let ar = op(&c, Op::AllReduce);
        let one = 6.0 * 2e-6 + 6.0 / 4.0 * (64.0 * 8192.0 * 2.0) / 300e9;
        assert!(close(ar.seconds, 2.0 * 80.0 * one));
    }

    #[test]
    fn engine_cpu_step_is_fixed_plus_per_sequence_plus_per_token() {
        // 2 prompts of 100 tokens and 3 decodes: 5 sequences, 203 tokens.
        let eff = Efficiency { iteration_overhead: 1e-3, seq_overhead: Some(20e-6), token_overhead: Some(1e-6), layer_overhead: 1e-6, ..ideal() };
        let cm = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(100, 0, true);
        s.add_prefill(100, 50, true);
        for _ in 0..3 {
            s.add_decode(500);
        }
        let o = op(&cm.breakdown(&s), Op::Overhead);
        assert!(close(o.seconds, 1e-3 + 5.0 * 20e-6 + 203.0 * 1e-6 + 32.0 * 1e-6), "{}", o.seconds);
        // A MoE layer's fixed cost on Mixtral's 32 MoE layers; none on a dense model.
        let moe = CostModel::new(mixtral_8x7b(), h100(), Efficiency { moe_layer_overhead: Some(50e-6), ..ideal() }, 1).unwrap();
        assert!(close(op(&moe.breakdown(&s), Op::Overhead).seconds, 32.0 * 50e-6));
        let dense = CostModel::new(llama3_8b(), h100(), Efficiency { moe_layer_overhead: Some(50e-6), ..ideal() }, 1).unwrap();
        assert_eq!(op(&dense.breakdown(&s), Op::Overhead).seconds, 0.0);
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        assert_eq!(op(&plain.breakdown(&s), Op::Overhead).seconds, 0.0);
    }

    #[test]
    fn overlapped_cpu_step_shows_only_beyond_the_gpu_time() {
        let cpu = |overlap| Efficiency { iteration_overhead: 2e-3, seq_overhead: Some(50e-6), cpu_overlap: Some(overlap), ..ideal() };
        let serial = CostModel::new(llama3_8b(), h100(), cpu(false), 1).unwrap();
        let overlapped = CostModel::new(llama3_8b(), h100(), cpu(true), 1).unwrap();
        let gpu_only = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        for n in [1u64, 8, 200] {
            let mut s = BatchShape::default();
            for _ in 0..n {
                s.add_decode(1000);
            }
            let (g, c) = (gpu_only.iteration_seconds(&s), 2e-3 + 50e-6 * n as f64);
            assert!(close(serial.iteration_seconds(&s), g + c));
            // A decode of Llama-3-8B streams 15 GB: ~4.5 ms of GPU time hides the CPU step until
            // the batch's CPU time (2 ms + 50 us per sequence) exceeds it.
            assert!(close(overlapped.iteration_seconds(&s), g.max(c)), "n={n}");
        }
        let scaled = CostModel::new(llama3_8b(), h100(), Efficiency { time_scale: Some(2.0), ..cpu(true) }, 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..200 {
            s.add_decode(1000);
        }
        let (g, c) = (gpu_only.iteration_seconds(&s), 2e-3 + 50e-6 * 200.0);
        assert!(close(scaled.iteration_seconds(&s), 2.0 * g.max(c)));
    }

    #[test]
    fn time_scale_multiplies_every_operator() {
        let base = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let scaled = CostModel::new(llama3_8b(), h100(), Efficiency { time_scale: Some(1.25), ..ideal() }, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(300, 0, true);
        s.add_decode(700);
        assert!(close(scaled.iteration_seconds(&s), 1.25 * base.iteration_seconds(&s)));
        assert!(CostModel::new(llama3_8b(), h100(), Efficiency { time_scale: Some(0.0), ..ideal() }, 1).is_err());
    }

    #[test]
    fn decodes_beside_a_prefill_pay_the_query_tile() {
        let tiled = CostModel::new(llama3_8b(), h100(), Efficiency { mixed_query_tile: Some(64), ..ideal() }, 1).unwrap();
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut mixed = BatchShape::default();
        mixed.add_prefill(256, 0, true);
        for _ in 0..8 {
            mixed.add_decode(1000);
        }
        // 8 decodes over 8000 keys: 4 * 4096 * 8000 FLOPs per layer for one query row, x 64 rows.
        let d = op(&tiled.breakdown(&mixed), Op::DecodeAttention);
        assert!(close(d.flops, 32.0 * 4.0 * 4096.0 * 8000.0 * 64.0));
        assert!(close(op(&plain.breakdown(&mixed), Op::DecodeAttention).flops, 32.0 * 4.0 * 4096.0 * 8000.0));
        // Decode-only iterations use the decode kernel: no tile, unless decode_query_rows says so.
        let mut only = BatchShape::default();
        for _ in 0..8 {
            only.add_decode(1000);
        }
        assert_eq!(tiled.iteration_seconds(&only), plain.iteration_seconds(&only));
        let rows = CostModel::new(llama3_8b(), h100(), Efficiency { decode_query_rows: Some(16), ..ideal() }, 1).unwrap();
        assert!(close(op(&rows.breakdown(&only), Op::DecodeAttention).flops, 32.0 * 4.0 * 4096.0 * 8000.0 * 16.0));
    }
}
