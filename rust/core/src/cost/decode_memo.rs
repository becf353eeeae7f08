//! A memo of decode-only iterations' operator costs, one per cost model (the instances of a pool
//! share theirs: its entries depend on the model and the batch's counts alone).
//!
//! In an iteration with no prefill chunk, every operator but decode attention depends on the
//! batch's sequence count alone (the GEMMs, norms, collectives, LM head and per-step overheads
//! see `decode_seqs` tokens and `sampled` samples); decode attention also depends on the cached
//! keys the decodes read, which grow every iteration. Consecutive decode iterations mostly have
//! the same sequence count, so the operators' costs are kept per count and only decode attention
//! is recomputed; the iteration's sums are then taken over the same operators in the same order,
//! so the result is bit-identical to [`CostModel::iteration`].
//!
//! With an overlapped CPU step (`cpu_overlap`) the per-step overhead shows only beyond the time
//! charged before it, so it is recomputed too, from the running sum (the same additions in the
//! same order as the full pass's). Not memoised here: batches with prefill chunks (prefill-only
//! ones have their own memo, `prefill_memo.rs`; mixed ones are computed in full), and cost models
//! with offloaded weights (their fetch stalls only beyond the time before it).

use super::iteration::{IterationPass, MoeLayerSplit};
use super::{BatchShape, CostModel, IterationCost, Op, OpCost};

/// Direct-mapped slots, by sequence count: batch sizes within a range of this many share none.
const SLOTS: usize = 256;

/// One decode-only iteration's operators, in execution order, and the counts they were costed for.
#[derive(Debug, Clone, Default)]
struct Entry {
    decode_seqs: u64,
    sampled: u64,
    ops: Vec<OpCost>,
    /// The pipeline stages' sums of these operators around decode attention, once a pipelined
    /// batch of this count was held (`pipeline.rs`): None until then, `Some(None)` when these
    /// operators admit no plan.
    stage_plan: Option<Option<Box<super::pipeline::HeldStageSums>>>,
}

/// The operator costs of recent decode-only iterations of one cost model (its instances), by
/// sequence count, and of prefill-only ones, by token count (`prefill_memo.rs`).
#[derive(Debug, Clone, Default)]
pub struct OpsMemo {
    slots: Vec<Entry>,
    pub(super) prefill: super::prefill_memo::PrefillOpsMemo,
}

/// A memo hit ([`CostModel::decode_memo_hit`]): decode attention's cost for the batch, the held
/// operators in execution order, the entry's stage sums (built by the caller on first use), and
/// the per-layer time and work multipliers.
pub(super) struct MemoHit<'m> {
    pub(super) attention: OpCost,
    pub(super) ops: &'m [OpCost],
    pub(super) stage_plan: &'m mut Option<Option<Box<super::pipeline::HeldStageSums>>>,
    pub(super) time_n: f64,
    pub(super) work_n: f64,
}

impl CostModel {
    /// Whether a decode-only iteration's operators other than decode attention and the per-step
    /// overhead depend on its sequence and sample counts alone: not when an offloaded weight
    /// fetch charges only what outlasts the operators before it.
    pub(super) fn decode_ops_memoizable(&self) -> bool {
        self.offload.is_none()
    }

    /// [`CostModel::iteration`] of `shape`, with the operators of decode-only iterations other
    /// than decode attention taken from `memo` when it holds them for this sequence count (and
    /// stored there otherwise). Bit-identical to `iteration(shape)`.
    pub fn iteration_memo(&self, shape: &BatchShape, memo: &mut OpsMemo) -> IterationCost {
        if !self.memo_applies(shape) {
            if self.prefill_memo_applies(shape) {
                let mut c = IterationCost::default();
                self.prefill_memo_ops(shape, &mut memo.prefill, |op| c.charge(op));
                return c;
            }
            return self.iteration(shape);
        }
        if memo.slots.is_empty() {
            memo.slots.resize_with(SLOTS, Entry::default);
        }
        let e = &mut memo.slots[(shape.decode_seqs % SLOTS as u64) as usize];
        let mut c = IterationCost::default();
        if e.ops.is_empty() || e.decode_seqs != shape.decode_seqs || e.sampled != shape.sampled {
            e.ops.clear();
            e.stage_plan = None;
            self.for_each_op(shape, |op| e.ops.push(op));
            (e.decode_seqs, e.sampled) = (shape.decode_seqs, shape.sampled);
            for op in &e.ops {
                c.charge(op);
            }
            return c;
        }
        let mut attention = None;
        let mut pass = IterationPass::new(self, shape, |op| attention = Some(op));
        pass.decode_attention();
        let (time_n, work_n) = (pass.time_n, pass.work_n);
        let overlap = self.eff.cpu_overlap == Some(true);
        for op in &e.ops {
            match (op.op, &attention) {
                (Op::DecodeAttention, Some(a)) => c.charge(a),
                // The full pass's running sum before the overhead is `c.seconds` here, bit for bit.
                (Op::Overhead, _) if overlap => c.charge(&self.scaled(self.overhead_cost(shape, time_n, work_n, c.seconds))),
                _ => c.charge(op),
            }
        }
        c
    }

    /// [`CostModel::moe_layer_split`] of `shape`, with its operators taken as
    /// [`Self::iteration_memo`] takes them (right after it, on the same shape, the memo holds
    /// them). Bit-identical to `moe_layer_split(shape)`.
    pub fn moe_layer_split_memo(&self, shape: &BatchShape, memo: &mut OpsMemo) -> (f64, f64) {
        if !self.memo_applies(shape) {
            return self.moe_layer_split(shape);
        }
        let mut split = MoeLayerSplit::default();
        self.memo_ops(shape, memo, |op| split.add(op));
        split.finish(self)
    }

    /// [`CostModel::for_each_op`] of `shape` through `memo`: the same operators with the same
    /// costs in the same order, those of decode-only iterations other than decode attention (and
    /// an overlapped per-step overhead) taken from `memo` when it holds them for this sequence
    /// count (and stored there otherwise).
    pub fn for_each_op_memo(&self, shape: &BatchShape, memo: &mut OpsMemo, mut sink: impl FnMut(&OpCost)) {
        if !self.memo_applies(shape) {
            if self.prefill_memo_applies(shape) {
                return self.prefill_memo_ops(shape, &mut memo.prefill, sink);
            }
            return self.for_each_op(shape, |op| sink(&op));
        }
        self.memo_ops(shape, memo, sink)
    }

    /// On a memo hit for the decode-only `shape` (this sequence and sample count held): decode
    /// attention's cost for `shape`, the held operators in execution order, and the per-layer
    /// time and work multipliers (for an overlapped CPU step, recomputed by the caller with
    /// [`Self::overlapped_overhead`]). The caller substitutes them as [`Self::for_each_op_memo`]
    /// does. None on a miss (the caller then takes [`Self::for_each_op_memo`]).
    pub(super) fn decode_memo_hit<'m>(&self, shape: &BatchShape, memo: &'m mut OpsMemo) -> Option<MemoHit<'m>> {
        if !self.memo_applies(shape) {
            return None;
        }
        let e = memo.slots.get_mut((shape.decode_seqs % SLOTS as u64) as usize)?;
        if e.ops.is_empty() || e.decode_seqs != shape.decode_seqs || e.sampled != shape.sampled {
            return None;
        }
        let (attention, time_n, work_n) = match self.gqa_decode_attention_alone(shape) {
            Some(spelled_out) => spelled_out,
            None => {
                let mut attention = None;
                let mut pass = IterationPass::new(self, shape, |op| attention = Some(op));
                pass.decode_attention();
                let (time_n, work_n) = (pass.time_n, pass.work_n);
                (attention?, time_n, work_n)
            }
        };
        Some(MemoHit { attention, ops: &e.ops, stage_plan: &mut e.stage_plan, time_n, work_n })
    }

    /// The per-step overhead of the decode-only `shape` with an overlapped CPU step, after
    /// operators of `before` seconds: what the memo's walk charges in its place (`Some` only with
    /// `cpu_overlap`).
    pub(super) fn overlapped_overhead(&self, shape: &BatchShape, time_n: f64, work_n: f64, before: f64) -> Option<OpCost> {
        (self.eff.cpu_overlap == Some(true)).then(|| self.scaled(self.overhead_cost(shape, time_n, work_n, before)))
    }

    /// Whether `shape`'s operators can come from the memo: a decode-only batch, on a cost model
    /// whose decode operators are memoizable.
    fn memo_applies(&self, shape: &BatchShape) -> bool {
        shape.prefill_tokens == 0 && shape.prefill_seqs == 0 && shape.decode_seqs > 0 && self.decode_ops_memoizable()
    }

    /// Calls `f` on each operator of the decode-only `shape` in execution order, as
    /// [`CostModel::for_each_op`] costs them: from `memo` when it holds this sequence count's
    /// (decode attention and, with an overlapped CPU step, the overhead recomputed), else costed
    /// in full and stored there. ([`Self::iteration_memo`] spells the same walk out with its sums
    /// inline: it runs for every decode iteration.)
    fn memo_ops(&self, shape: &BatchShape, memo: &mut OpsMemo, f: impl FnMut(&OpCost)) {
        if memo.slots.is_empty() {
            memo.slots.resize_with(SLOTS, Entry::default);
        }
        let e = &mut memo.slots[(shape.decode_seqs % SLOTS as u64) as usize];
        if e.ops.is_empty() || e.decode_seqs != shape.decode_seqs || e.sampled != shape.sampled {
            e.ops.clear();
            e.stage_plan = None;
            self.for_each_op(shape, |op| e.ops.push(op));
            (e.decode_seqs, e.sampled) = (shape.decode_seqs, shape.sampled);
            e.ops.iter().for_each(f);
            return;
        }
        self.replay(shape, &e.ops, Op::DecodeAttention, f);
    }

    /// Calls `f` on each of the held operators `ops` of `shape` in order, with `attention`
    /// (decode or prefill attention) recomputed for `shape` in place of the held one and, with an
    /// overlapped CPU step, the overhead recomputed from the running sum before it.
    pub(super) fn replay(&self, shape: &BatchShape, ops: &[OpCost], attention: Op, mut f: impl FnMut(&OpCost)) {
        let mut recomputed = None;
        let mut pass = IterationPass::new(self, shape, |op| recomputed = Some(op));
        match attention {
            Op::PrefillAttention => pass.prefill_attention_alone(),
            Op::DecodeAttention => pass.decode_attention(),
            other => unreachable!("{other:?} is not an attention operator"),
        }
        let (time_n, work_n) = (pass.time_n, pass.work_n);
        let recomputed = recomputed.as_ref();
        let overlap = self.eff.cpu_overlap == Some(true);
        // The running sum the full pass charges the overhead against (kept only when needed).
        let mut c = IterationCost::default();
        for op in ops {
            let overhead;
            let op = match recomputed {
                Some(r) if r.op == op.op => r,
                // The full pass's running sum before the overhead is `c.seconds` here, bit for bit.
                _ if overlap && op.op == Op::Overhead => {
                    overhead = self.scaled(self.overhead_cost(shape, time_n, work_n, c.seconds));
                    &overhead
                }
                _ => op,
            };
            if overlap {
                c.charge(op);
            }
            f(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OpsMemo;
    use crate::calibration::Efficiency;
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    /// Decode-only shapes of `n` sequences at contexts starting from `first`, as a decode stretch
    /// produces them (contexts growing by one per iteration).
    fn decodes(n: u64, first: u64) -> BatchShape {
        let mut s = BatchShape::default();
        for i in 0..n {
            s.add_decode(first + 37 * i);
        }
        s
    }

    #[test]
    fn memoised_cost_is_bit_identical_to_the_full_pass() {
        let tuned = Efficiency { iteration_overhead: 1e-3, seq_overhead: Some(20e-6), attention_cta: Some(0.5), gemm_ridge_exponent: Some(4.0), time_scale: Some(1.3), ..ideal() };
        // The default engine's decode-attention terms: query rows, split bandwidth, an overlapped CPU step.
        let engine = Efficiency { decode_query_rows: Some(5), attention_memory_split: Some(0.9), attention_cta: Some(0.25), cpu_overlap: Some(true), iteration_overhead: 5.4e-4, ..ideal() };
        for (cm, name) in [
            (CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap(), "llama3-8b"),
            (CostModel::new(llama3_8b(), h100(), tuned.clone(), 1).unwrap(), "llama3-8b tuned"),
            (CostModel::new(llama3_8b(), h100(), engine.clone(), 1).unwrap(), "llama3-8b, the engine's attention terms"),
            (CostModel::new(llama2_70b(), a100(), engine, 2).unwrap().with_pipeline(2, None).unwrap().single_microbatch(), "llama2-70b tp2 x pp2 async, the engine's attention terms"),
            (CostModel::new(llama2_70b(), a100(), ideal(), 4).unwrap(), "llama2-70b tp4"),
            (CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap(), "deepseek-v2-lite (MLA)"),
            (CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap(), "mixtral (MoE)"),
            (CostModel::new(llama2_70b(), a100(), tuned, 2).unwrap().with_pipeline(2, Some(4)).unwrap(), "llama2-70b tp2 x pp2 sync, 4 micro-batches"),
        ] {
            let mut memo = OpsMemo::default();
            let mut hits = 0;
            for step in 0..40u64 {
                // Sequence counts repeat (hits) and collide in a slot (1 and 257): both must match.
                for n in [1u64, 7, 257, 200] {
                    let s = decodes(n, 100 + step);
                    let full = cm.iteration(&s);
                    let memo_cost = cm.iteration_memo(&s, &mut memo);
                    assert_eq!(memo_cost.seconds.to_bits(), full.seconds.to_bits(), "{name}: n={n} step={step}");
                    // Every field, the bubble and the weight stall included.
                    assert_eq!(memo_cost, full, "{name}: n={n} step={step}");
                    hits += (step > 0 && n != 1 && n != 257) as u32;
                }
            }
            assert_eq!(hits, 78, "{name}");
            // A prefill batch is costed in full and leaves the memo alone.
            let mut p = decodes(7, 500);
            p.add_prefill(300, 0, true);
            assert_eq!(cm.iteration_memo(&p, &mut memo), cm.iteration(&p), "{name}");
        }
    }

    #[test]
    fn memoised_stage_costs_are_bit_identical_to_the_full_split() {
        // Llama-2-70B, Mixtral-8x7B (the most operators between decode attention and the
        // overhead) and DeepSeek-V2-Lite (MLA) as TP2 x PP2, run as one micro-batch (asynchronous
        // pipelining), with and without an overlapped CPU step and a time scale: the held
        // batches' sums from the entry's plan equal the full split's, bit for bit.
        let models = [llama2_70b(), crate::model::fixtures::mixtral_8x7b(), crate::model::fixtures::deepseek_v2_lite()];
        for (model, overlap) in models.iter().flat_map(|m| [(m, None), (m, Some(true))]) {
            let eff = Efficiency { iteration_overhead: 2e-3, layer_overhead: 5e-6, seq_overhead: Some(10e-6), cpu_overlap: overlap, time_scale: overlap.map(|_| 1.3), ..ideal() };
            let cm = CostModel::new(model.clone(), a100(), eff, 2).unwrap().with_pipeline(2, None).unwrap().single_microbatch();
            let mut memo = OpsMemo::default();
            for step in 0..30u64 {
                for n in [1u64, 18, 19, 274] {
                    let s = decodes(n, 200 + 50 * step);
                    let (full, m) = (cm.stage_costs(&s), cm.stage_costs_memo(&s, &mut memo));
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&m.seconds), bits(&full.seconds), "n={n} step={step} overlap={overlap:?}");
                    assert_eq!((m.average.seconds.to_bits(), m.average.compute_bound_seconds.to_bits()), (full.average.seconds.to_bits(), full.average.compute_bound_seconds.to_bits()));
                }
            }
            // Every count held again got its plan (none fell back to summing every operator):
            // 1 and 19 (18 and 274 share a slot and evict each other).
            let plans: Vec<_> = memo.slots.iter().filter_map(|e| e.stage_plan.as_ref().map(|p| (e.decode_seqs, p.is_some()))).collect();
            assert_eq!(plans, vec![(1, true), (19, true)], "{}", model.name);
            let mut p = decodes(18, 500);
            p.add_prefill(300, 0, true);
            assert_eq!(cm.stage_costs_memo(&p, &mut memo), cm.stage_costs(&p));
        }
    }

    #[test]
    fn the_decode_attention_term_follows_the_contexts() {
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut memo = OpsMemo::default();
        let short = cm.iteration_memo(&decodes(64, 100), &mut memo).seconds;
        let long = cm.iteration_memo(&decodes(64, 4000), &mut memo).seconds;
        // 64 x 3900 more keys: 32 layers x 2 x 1024 x 2 bytes each, at 3.35 TB/s.
        let extra = 32.0 * 64.0 * 3900.0 * 2.0 * 1024.0 * 2.0 / 3.35e12;
        assert!((long - short - extra).abs() < 1e-9 * long, "{short} {long} {extra}");
    }

    #[test]
    fn overlapped_cpu_step_follows_the_gpu_time_before_it() {
        // 6 ms of CPU per step hides under a short context's GPU time only partly, under a long
        // one's entirely: the overhead differs between iterations of the same batch size.
        for scale in [None, Some(1.7)] {
            let cm = CostModel::new(llama3_8b(), h100(), Efficiency { iteration_overhead: 6e-3, seq_overhead: Some(10e-6), cpu_overlap: Some(true), time_scale: scale, ..ideal() }, 1).unwrap();
            let mut memo = OpsMemo::default();
            let mut overheads = Vec::new();
            for first in [100, 30000, 100, 2000] {
                let s = decodes(32, first);
                let (m, full) = (cm.iteration_memo(&s, &mut memo), cm.iteration(&s));
                assert_eq!((m.seconds.to_bits(), m.compute_bound_seconds.to_bits()), (full.seconds.to_bits(), full.compute_bound_seconds.to_bits()), "first={first}");
                overheads.push(op(&cm.breakdown(&s), Op::Overhead).seconds);
            }
            assert!(overheads[0] > 0.0 && overheads[1] == 0.0, "{overheads:?}");
        }
    }

    #[test]
    fn memoised_moe_split_is_bit_identical_to_the_full_pass() {
        // Mixtral's split into one MoE layer's non-expert time and the rest, through the memo
        // right after the iteration's cost (as an instance takes them), with and without an
        // overlapped CPU step: bit for bit the full pass's, hits and misses alike.
        for eff in [ideal(), Efficiency { iteration_overhead: 6e-3, seq_overhead: Some(10e-6), cpu_overlap: Some(true), ..ideal() }] {
            let cm = CostModel::new(mixtral_8x7b(), h100(), eff, 1).unwrap();
            let mut memo = OpsMemo::default();
            for step in 0..30u64 {
                for n in [3u64, 64, 67] {
                    let s = decodes(n, 200 + 500 * step);
                    cm.iteration_memo(&s, &mut memo);
                    let (base, fixed) = cm.moe_layer_split_memo(&s, &mut memo);
                    let (b, f) = cm.moe_layer_split(&s);
                    assert_eq!((base.to_bits(), fixed.to_bits()), (b.to_bits(), f.to_bits()), "n={n} step={step}");
                    assert!(base > 0.0 && fixed > 0.0);
                }
            }
            let mut p = decodes(5, 300);
            p.add_prefill(200, 0, true);
            assert_eq!(cm.moe_layer_split_memo(&p, &mut memo), cm.moe_layer_split(&p));
        }
    }
}
