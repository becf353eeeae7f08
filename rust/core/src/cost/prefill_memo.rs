//! A memo of prefill-only iterations' operator costs, by token count (kept with the decode memo
//! in [`super::OpsMemo`]).
//!
//! In a batch of prompt chunks and no decode, every operator but prefill attention depends on the
//! batch's token, sequence and sample counts alone (the GEMMs, norms and collectives see the
//! padded tokens, the LM head the samples, the per-step overhead the sequences and tokens);
//! prefill attention also depends on the query-key pairs and the keys read. A batch's token count
//! is bounded by the scheduler's budget and recurs (prompt lengths repeat over a long run), so
//! the operators are kept per count and only prefill attention (and an overlapped per-step
//! overhead, from the running sum) is recomputed; the sums are then taken over the same operators
//! in the same order, so the result is bit-identical to the full pass. Applies to grouped-query
//! attention on a GPU without a PIM, dense models, no sliding window and no one-token chunk (MLA's
//! absorbed chunks, PIM co-processing and the experts follow other terms of the shape).

use super::{BatchShape, CostModel, Op, OpCost};

/// Direct-mapped slots, by token count: a budget of up to this many tokens keeps every count.
const SLOTS: usize = 4096;

/// One prefill-only iteration's operators, in execution order, and the counts they were costed
/// for.
#[derive(Debug, Clone, Default)]
struct Entry {
    tokens: u64,
    seqs: u64,
    sampled: u64,
    ops: Vec<OpCost>,
}

/// The operator costs of recent prefill-only iterations of one cost model, by token count.
#[derive(Debug, Clone, Default)]
pub struct PrefillOpsMemo {
    slots: Vec<Entry>,
}

impl CostModel {
    /// Whether the prefill-only `shape`'s operators can come from the prefill memo (see the
    /// module documentation).
    pub(super) fn prefill_memo_applies(&self, shape: &BatchShape) -> bool {
        shape.decode_seqs == 0
            && shape.prefill_seqs > 0
            && shape.single_token_chunks == 0
            && shape.attention_window.is_none()
            && self.pim.is_none()
            && self.moe_share == 0.0
            && matches!(self.attn, super::attention::Attention::Gqa { .. })
            && self.decode_ops_memoizable()
    }

    /// Calls `f` on each operator of the prefill-only `shape` in execution order, as
    /// [`CostModel::for_each_op`] costs them: from `memo` when it holds this token, sequence and
    /// sample count (prefill attention and an overlapped overhead recomputed), else costed in
    /// full and stored there.
    pub(super) fn prefill_memo_ops(&self, shape: &BatchShape, memo: &mut PrefillOpsMemo, f: impl FnMut(&OpCost)) {
        if memo.slots.is_empty() {
            memo.slots.resize_with(SLOTS, Entry::default);
        }
        let e = &mut memo.slots[(shape.prefill_tokens % SLOTS as u64) as usize];
        let held = (shape.prefill_tokens, shape.prefill_seqs, shape.sampled);
        if e.ops.is_empty() || (e.tokens, e.seqs, e.sampled) != held {
            e.ops.clear();
            self.for_each_op(shape, |op| e.ops.push(op));
            (e.tokens, e.seqs, e.sampled) = held;
            e.ops.iter().for_each(f);
            return;
        }
        self.replay(shape, &e.ops, Op::PrefillAttention, f);
    }
}

#[cfg(test)]
mod tests {
    use crate::calibration::Efficiency;
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    /// A prefill-only batch of prompts of `lens` tokens after `cached` cached tokens each.
    fn prompts(lens: &[u64], cached: u64) -> BatchShape {
        let mut s = BatchShape::default();
        for &q in lens {
            s.add_prefill(q, cached, true);
        }
        s
    }

    #[test]
    fn memoised_prefill_costs_are_bit_identical_to_the_full_pass() {
        // Batches of the same token count with different chunks (the attention term differs,
        // the rest is held), other counts in the same slot, an overlapped CPU step and a time
        // scale: every result equals the full pass's bit for bit, hits and misses alike.
        let engine = Efficiency { iteration_overhead: 5.4e-4, seq_overhead: Some(20e-6), token_overhead: Some(1e-7), cpu_overlap: Some(true), time_scale: Some(1.3), prefill_pad_tokens: Some(8), ..ideal() };
        for (cm, name) in [
            (CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap(), "llama3-8b"),
            (CostModel::new(llama3_8b(), h100(), engine.clone(), 1).unwrap(), "llama3-8b, overlapped CPU step"),
            (CostModel::new(llama2_70b(), a100(), engine, 2).unwrap().with_pipeline(2, None).unwrap().single_microbatch(), "llama2-70b tp2 x pp2 async"),
        ] {
            let mut memo = OpsMemo::default();
            let cases: [(&[u64], u64); 6] = [(&[1000], 0), (&[600, 400], 0), (&[1000], 3000), (&[500, 500], 0), (&[1000 + 4096], 0), (&[1000], 0)];
            for round in 0..3 {
                for (lens, cached) in cases {
                    let s = prompts(lens, cached);
                    assert!(cm.prefill_memo_applies(&s), "{name}");
                    assert_eq!(cm.iteration_memo(&s, &mut memo), cm.iteration(&s), "{name}: {lens:?} after {cached}, round {round}");
                    assert_eq!(cm.stage_costs_memo(&s, &mut memo), cm.stage_costs(&s), "{name}: {lens:?} after {cached}, round {round}");
                }
            }
        }
    }

    #[test]
    fn the_prefill_attention_term_follows_the_cached_keys() {
        // The same 1000 new tokens after 0 and after 8000 cached ones: one entry, and the later
        // batch pays for 32 layers x 1000 x 8000 more query-key pairs (4 x 4096 FLOPs each) at
        // the H100's peak (compute-bound).
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut memo = OpsMemo::default();
        let short = cm.iteration_memo(&prompts(&[1000], 0), &mut memo).seconds;
        let long = cm.iteration_memo(&prompts(&[1000], 8000), &mut memo).seconds;
        assert_eq!(long.to_bits(), cm.iteration(&prompts(&[1000], 8000)).seconds.to_bits());
        let extra = 32.0 * 1000.0 * 8000.0 * 4.0 * 4096.0 / 989.4e12;
        assert!((long - short - extra).abs() < 1e-6 * long, "{short} {long} {extra}");
    }

    #[test]
    fn other_batches_are_costed_in_full() {
        // Mixed batches, one-token chunks, MoE and MLA models keep the full pass.
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let mut mixed = prompts(&[500], 0);
        mixed.add_decode(300);
        assert!(!cm.prefill_memo_applies(&mixed) && !cm.prefill_memo_applies(&prompts(&[1], 700)));
        assert!(!CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap().prefill_memo_applies(&prompts(&[500], 0)));
        assert!(!CostModel::new(deepseek_v2_lite(), h100(), ideal(), 1).unwrap().prefill_memo_applies(&prompts(&[500], 0)));
    }
}
