//! The stages of an asynchronous pipeline: how long each stage holds one batch.
//!
//! With asynchronous pipelining (vLLM's virtual engines) a batch is not split into micro-batches:
//! the whole batch goes through the `pp` stages one after the other, and the next batch enters
//! stage 1 as soon as stage 1 is free. Each stage runs its `ceil(L / pp)` layers on the batch
//! (reading its weights once per batch) and sends the activations on; stage 1 also runs the
//! embedding and the engine's CPU step, the last stage the LM head and sampling.

use smallvec::SmallVec;

use super::{BatchShape, CostModel, OpsMemo, IterationCost, Op, OpCost, VerifyChunks};

/// Seconds per stage, kept inline (no allocation per batch) for up to 8 stages.
pub type StageSeconds = SmallVec<[f64; 8]>;

/// How long each pipeline stage holds one batch, and the batch's average over the stages.
#[derive(Debug, Clone, PartialEq)]
pub struct StageCosts {
    /// Seconds each stage is busy with the batch, stage 1 first.
    pub seconds: StageSeconds,
    /// The batch's cost averaged over the stages (the sum of the stage times / pp), for busy time
    /// and energy: every GPU of the instance counted for its own stage's time.
    pub average: IterationCost,
}

/// The running sums a batch's operators are split into, in execution order.
#[derive(Debug, Default, Clone, Copy)]
struct StageSums {
    /// Stage 1's own time (the embedding, the CPU part of the per-step overhead).
    first: f64,
    /// The last stage's own time (the LM head).
    last: f64,
    /// The layers' time, shared by the stages (with the GPU part of the overhead).
    layered: f64,
    total: f64,
    /// Compute-bound time.
    cb: f64,
}

impl StageSums {
    /// Adds operator `c`; `gpu_fixed` is the GPU part of the per-step overhead op.
    #[inline]
    fn add(&mut self, c: &OpCost, gpu_fixed: f64) {
        self.total += c.seconds;
        if c.compute_bound {
            self.cb += c.seconds;
        }
        match c.op {
            Op::Embedding => self.first += c.seconds,
            Op::LmHead => self.last += c.seconds,
            Op::Overhead => {
                let gpu = gpu_fixed.min(c.seconds);
                self.layered += gpu;
                self.first += c.seconds - gpu;
            }
            _ => self.layered += c.seconds,
        }
    }
}

/// A held decode batch's stage sums around its decode attention (the one operator, with the
/// per-step overhead under an overlapped CPU step, that changes from pass to pass): the sums of
/// the operators before it, and each sum's additions after it up to the overhead, in order. A
/// pass then adds its attention, those additions and its overhead: every sum gets the same
/// additions in the same order as [`StageSums::add`] over all operators (a sum an operator does
/// not touch gets none), so the result is bit-identical.
#[derive(Debug, Clone)]
pub(super) struct HeldStageSums {
    before: StageSums,
    total: Additions,
    cb: Additions,
    layered: Additions,
    /// The first and last stages' sums up to the overhead, and the compute-bound one's when the
    /// pass's decode attention is not compute-bound: decode attention adds nothing to them, so
    /// every pass makes the same additions from the same start (summed once, the same value).
    first_done: f64,
    last_done: f64,
    cb_done: f64,
    /// The overhead operator, last (recomputed per pass under an overlapped CPU step).
    overhead: OpCost,
}

/// Up to [`Additions::MAX`] seconds added to one sum, in order (inline: a pass reads them all).
#[derive(Debug, Clone, Copy, Default)]
struct Additions {
    seconds: [f64; Additions::MAX],
    len: usize,
}

impl Additions {
    /// More operators between decode attention and the overhead than any model has (a MoE
    /// layer's are the most: 10).
    const MAX: usize = 14;

    /// Appends `x`; false when full.
    fn push(&mut self, x: f64) -> bool {
        let room = self.len < Self::MAX;
        if room {
            self.seconds[self.len] = x;
            self.len += 1;
        }
        room
    }

    /// `sum` plus every addition, in order.
    #[inline]
    fn onto(&self, sum: f64) -> f64 {
        self.seconds[..self.len].iter().fold(sum, |s, x| s + x)
    }
}

impl HeldStageSums {
    /// The plan of `ops` (a memo entry's), if they are one decode attention followed by
    /// operators and, last, the overhead (None otherwise: the caller sums every operator).
    /// (Once per memo entry: kept out of the per-pass path.)
    #[cold]
    #[inline(never)]
    fn new(ops: &[OpCost], gpu_fixed: f64) -> Option<Self> {
        let at = ops.iter().position(|c| c.op == Op::DecodeAttention)?;
        let (overhead, middle) = ops[at + 1..].split_last()?;
        if overhead.op != Op::Overhead || middle.iter().any(|c| matches!(c.op, Op::DecodeAttention | Op::Overhead)) {
            return None;
        }
        let mut before = StageSums::default();
        ops[..at].iter().for_each(|c| before.add(c, gpu_fixed));
        let (mut first, mut last) = (Additions::default(), Additions::default());
        let mut plan = HeldStageSums { before, total: Additions::default(), cb: Additions::default(), layered: Additions::default(), first_done: 0.0, last_done: 0.0, cb_done: 0.0, overhead: *overhead };
        for c in middle {
            let fits = plan.total.push(c.seconds)
                && (!c.compute_bound || plan.cb.push(c.seconds))
                && match c.op {
                    Op::Embedding => first.push(c.seconds),
                    Op::LmHead => last.push(c.seconds),
                    _ => plan.layered.push(c.seconds),
                };
            if !fits {
                return None;
            }
        }
        (plan.first_done, plan.last_done, plan.cb_done) = (first.onto(before.first), last.onto(before.last), plan.cb.onto(before.cb));
        Some(plan)
    }

    /// The sums of a pass whose decode attention costs `attention`, its overhead given by
    /// `overhead` from the running total before it.
    #[inline]
    fn sums(&self, attention: &OpCost, gpu_fixed: f64, overhead: impl FnOnce(f64) -> Option<OpCost>) -> StageSums {
        let mut s = self.before;
        s.add(attention, gpu_fixed);
        debug_assert!(attention.op == Op::DecodeAttention && s.first == self.before.first && s.last == self.before.last);
        s.total = self.total.onto(s.total);
        s.cb = if attention.compute_bound { self.cb.onto(s.cb) } else { self.cb_done };
        s.first = self.first_done;
        s.last = self.last_done;
        s.layered = self.layered.onto(s.layered);
        let o = overhead(s.total).unwrap_or(self.overhead);
        s.add(&o, gpu_fixed);
        s
    }
}

impl CostModel {
    /// This cost model running every batch as a single micro-batch (what asynchronous pipelining
    /// does: the batches in flight take the micro-batches' place).
    pub fn single_microbatch(&self) -> CostModel {
        CostModel { microbatches: 1, ..self.clone() }
    }

    /// The per-stage times of a batch of `shape` through the pipeline, run as one micro-batch.
    ///
    /// The decoder layers' operators (and their per-layer overheads and stage-to-stage sends) are
    /// shared equally by the stages; the embedding and the CPU step go to stage 1, the LM head to
    /// the last stage. The stage times add up to the single-micro-batch iteration time. With
    /// pp = 1 there is one stage lasting the whole iteration.
    pub fn stage_costs(&self, shape: &BatchShape) -> StageCosts {
        self.stage_costs_with(shape, None, &VerifyChunks::default())
    }

    /// [`CostModel::stage_costs`] of a speculative verify pass whose chunks `verify` lists.
    pub fn stage_costs_verify(&self, shape: &BatchShape, verify: &VerifyChunks) -> StageCosts {
        self.stage_costs_with(shape, None, verify)
    }

    /// [`CostModel::stage_costs`] of `shape`, bit-identical, with the operators of decode-only
    /// batches other than decode attention, and of prefill-only ones other than prefill
    /// attention, taken from `memo` (see `decode_memo.rs`, `prefill_memo.rs`).
    pub fn stage_costs_memo(&self, shape: &BatchShape, memo: &mut OpsMemo) -> StageCosts {
        if self.microbatches == 1 {
            if let Some(st) = self.held_stage_costs(shape, memo) {
                return st;
            }
        }
        self.stage_costs_with(shape, Some(memo), &VerifyChunks::default())
    }

    /// A held decode batch's stage times: its stage sums from the memo entry's plan, with this
    /// batch's decode attention and overhead (the same additions in the same order as every
    /// operator's); None on a memo miss or for operators that admit no plan (the caller sums
    /// every operator). Run as one micro-batch.
    #[inline(always)]
    fn held_stage_costs(&self, shape: &BatchShape, memo: &mut OpsMemo) -> Option<StageCosts> {
        let gpu_fixed = self.gpu_fixed();
        let hit = self.decode_memo_hit(shape, memo)?;
        let plan = hit.stage_plan.get_or_insert_with(|| HeldStageSums::new(hit.ops, gpu_fixed).map(Box::new)).as_ref()?;
        let (time_n, work_n) = (hit.time_n, hit.work_n);
        // The running total before the overhead is the full pass's, bit for bit.
        let sums = plan.sums(&hit.attention, gpu_fixed, |before| self.overlapped_overhead(shape, time_n, work_n, before));
        Some(self.stages_of(sums))
    }

    /// The GPU part of the overhead op: per-layer fixed costs on all stages' layers.
    fn gpu_fixed(&self) -> f64 {
        let scale = self.eff.time_scale.unwrap_or(1.0);
        (self.eff.layer_overhead + self.eff.moe_layer_overhead.unwrap_or(0.0) * self.moe_share) * self.stage_layers * self.pp as f64 * scale
    }

    /// The stage times of `shape` (with `verify`'s chunks among its prefills), its operators
    /// visited through `memo` if given.
    fn stage_costs_with(&self, shape: &BatchShape, memo: Option<&mut OpsMemo>, verify: &VerifyChunks) -> StageCosts {
        if self.microbatches != 1 {
            // The memo holds this model's operators, not the single micro-batch's.
            return self.single_microbatch().stage_costs_verify(shape, verify);
        }
        let gpu_fixed = self.gpu_fixed();
        let mut sums = StageSums::default();
        match memo {
            // (A held decode batch took `held_stage_costs` before: here every operator.)
            Some(m) => self.for_each_op_memo(shape, m, |c| sums.add(c, gpu_fixed)),
            None => self.for_each_op_with(shape, verify, |c| sums.add(&c, gpu_fixed)),
        }
        self.stages_of(sums)
    }

    /// The stage times and average of a batch whose operators summed to `sums`.
    #[inline(always)]
    fn stages_of(&self, sums: StageSums) -> StageCosts {
        let pp = self.pp as usize;
        let StageSums { first, last, layered, total, cb } = sums;
        // x / pp; for a power of two, x * (1 / pp) (kept in the cost model): the same quotient,
        // without a division.
        let per_stage = |x: f64| match self.stage_reciprocal {
            Some(r) => x * r,
            None => x / pp as f64,
        };
        let mut seconds: StageSeconds = if pp <= 8 { SmallVec::from_buf_and_len([per_stage(layered); 8], pp) } else { smallvec::smallvec![per_stage(layered); pp] };
        seconds[0] += first;
        seconds[pp - 1] += last;
        StageCosts { seconds, average: IterationCost { seconds: per_stage(total), compute_bound_seconds: per_stage(cb), ..Default::default() } }
    }
}

#[cfg(test)]
mod tests {
    use crate::calibration::Efficiency;
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    fn decodes(n: u64) -> BatchShape {
        let mut s = BatchShape::default();
        for _ in 0..n {
            s.add_decode(1000);
        }
        s
    }

    #[test]
    fn stages_share_the_layers_and_add_up_to_one_pass() {
        // Llama-2-70B on 2 stages of TP2: each stage runs 40 layers of the whole 32-decode batch.
        let eff = Efficiency { iteration_overhead: 1e-3, layer_overhead: 5e-6, ..ideal() };
        let pp = CostModel::new(llama2_70b(), h100(), eff.clone(), 2).unwrap().with_pipeline(2, None).unwrap();
        let s = decodes(32);
        let st = pp.stage_costs(&s);
        assert_eq!(st.seconds.len(), 2);
        let one = pp.single_microbatch().breakdown(&s);
        let total: f64 = one.iter().map(|c| c.seconds).sum();
        assert!(close(st.seconds.iter().sum::<f64>(), total));
        assert!(close(st.average.seconds, total / 2.0));
        // Stage 1 = half the layers + embedding + the 1 ms CPU step; stage 2 = half + LM head.
        let emb = op(&one, Op::Embedding).seconds;
        let lm = op(&one, Op::LmHead).seconds;
        let ov = op(&one, Op::Overhead).seconds;
        assert!(close(ov, 1e-3 + 80.0 * 5e-6));
        let layers = total - emb - lm - 1e-3;
        assert!(close(st.seconds[0], layers / 2.0 + emb + 1e-3), "{:?}", st.seconds);
        assert!(close(st.seconds[1], layers / 2.0 + lm));
        // One stage's layers of the whole batch: 40 layers, as a pp = 1 model would charge for half
        // its 80 layers (weights read once per batch per stage), plus one activation send.
        let full = CostModel::new(llama2_70b(), h100(), ideal(), 2).unwrap();
        let layer_ops = |b: &[OpCost]| -> f64 { b.iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead | Op::PipelineSend)).map(|c| c.seconds).sum() };
        let ideal_pp = CostModel::new(llama2_70b(), h100(), ideal(), 2).unwrap().with_pipeline(2, None).unwrap();
        let ist = ideal_pp.stage_costs(&s);
        let send = 2e-6 + 32.0 * 8192.0 * 2.0 / 450e9;
        assert!(close(ist.seconds[1] - op(&full.breakdown(&s), Op::LmHead).seconds, layer_ops(&full.breakdown(&s)) / 2.0 + send));
    }

    #[test]
    fn one_stage_is_the_whole_iteration() {
        let cm = CostModel::new(llama3_8b(), h100(), Efficiency { iteration_overhead: 2e-3, ..ideal() }, 1).unwrap();
        let s = decodes(8);
        let st = cm.stage_costs(&s);
        assert_eq!(st.seconds.len(), 1);
        assert!(close(st.seconds[0], cm.iteration_seconds(&s)));
    }
}
