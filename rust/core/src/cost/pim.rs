//! Processing-in-memory: where the PIM device attached to every GPU beats it. Each layer operator
//! runs on the device that finishes it sooner (see the iteration's `emit`).

use super::CostModel;

impl CostModel {
    /// The Op/B (FLOPs per byte) below which a memory-bound GPU operator runs faster on the PIM,
    /// if a PIM is attached: the GPU takes B / Bg, a compute-bound PIM I·B / (Fp·e), so the PIM
    /// wins while I < Fp·e / Bg (0 when the PIM has no more bandwidth than the GPU).
    pub fn pim_crossover_intensity(&self) -> Option<f64> {
        let p = self.pim.as_ref()?;
        if p.internal_bandwidth * p.efficiency <= self.bw {
            return Some(0.0);
        }
        Some(p.peak_flops * p.efficiency / self.bw)
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    fn pim() -> PimSpec {
        // AttAcc-like bank-level PIM on 5 HBM3 stacks: 9 x 670.4 GB/s internal per stack, 1 FLOP per byte.
        PimSpec { name: "hbm3-pim".into(), peak_flops: 30.168e12, internal_bandwidth: 30.168e12, efficiency: 1.0 }
    }

    #[test]
    fn pim_takes_low_op_per_byte_operators() {
        let gpu = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let with = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_pim(Some(pim())).unwrap();
        // Crossover: the PIM's 30.2 TFLOP/s over the GPU's 3.35 TB/s = 9.0 FLOP/B.
        assert!(close(with.pim_crossover_intensity().unwrap(), 30.168e12 / 3.35e12));
        // 8 decodes at context 4096: decode attention is 4 FLOP/B (GQA 32:8) -> PIM. A bank-level PIM
        // does 1 FLOP per byte, so GQA attention is compute-bound there (the limit Duplex's Logic-PIM
        // lifts) yet still 1.8x faster than the GPU streaming the KV cache. The 8-token GEMMs are
        // ~8 FLOP/B -> PIM; the LM head stays on the GPU (not a layer op).
        let mut d = BatchShape::default();
        for _ in 0..8 {
            d.add_decode(4096);
        }
        let c = with.breakdown(&d);
        let att = op(&c, Op::DecodeAttention);
        assert!(att.on_pim);
        assert!((att.flops / att.bytes - 3.99).abs() < 0.02);
        assert!(att.compute_bound);
        assert!(close(att.seconds, att.flops / 30.168e12));
        assert!(att.seconds < op(&gpu.breakdown(&d), Op::DecodeAttention).seconds / 1.7);
        assert!(op(&c, Op::QkvProj).on_pim);
        assert!(!op(&c, Op::LmHead).on_pim);
        // Weight-streaming GEMMs at 8 FLOP/B gain little (8 x B / 30.2 TFLOP/s against B / 3.35 TB/s).
        assert!(with.iteration_seconds(&d) < 0.9 * gpu.iteration_seconds(&d));
        // A 2048-token prefill is ~1000+ FLOP/B: everything stays on the GPU, time unchanged.
        let mut p = BatchShape::default();
        p.add_prefill(2048, 0, true);
        let cp = with.breakdown(&p);
        assert!(cp.iter().filter(|o| matches!(o.op, Op::QkvProj | Op::MlpGateUp | Op::PrefillAttention)).all(|o| !o.on_pim));
        // 64-token GEMMs (64 FLOP/B, above the 9 FLOP/B crossover) stay on the GPU.
        let mut g = BatchShape::default();
        for _ in 0..64 {
            g.add_decode(100);
        }
        assert!(!op(&with.breakdown(&g), Op::MlpGateUp).on_pim);
    }

    #[test]
    fn a_gpu_query_tile_does_not_pad_decode_attention_on_the_pim() {
        // An engine whose decode kernel pads each decode's query to 16 rows (vLLM's profile pads
        // to a few): the GPU's decode attention does 16x the FLOPs, the PIM only the real ones, so
        // it still takes the operator and times it as an untiled engine's PIM does.
        let tiled = Efficiency { decode_query_rows: Some(16), ..ideal() };
        let with = CostModel::new(llama3_8b(), h100(), tiled, 1).unwrap().with_pim(Some(pim())).unwrap();
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_pim(Some(pim())).unwrap();
        let mut d = BatchShape::default();
        for _ in 0..8 {
            d.add_decode(4096);
        }
        let (att, want) = (op(&with.breakdown(&d), Op::DecodeAttention), op(&plain.breakdown(&d), Op::DecodeAttention));
        assert!(att.on_pim && want.on_pim);
        assert!(close(att.seconds, want.seconds) && close(att.flops, want.flops));
        assert!((att.flops / att.bytes - 3.99).abs() < 0.02, "the real 4 FLOP/B, not 16x");
    }

    #[test]
    fn pim_decode_attention_overlaps_gpu_prefill_attention() {
        let with = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_pim(Some(pim())).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(512, 3000, true);
        for _ in 0..32 {
            s.add_decode(4000);
        }
        let c = with.breakdown(&s);
        let pre = op(&c, Op::PrefillAttention);
        let dec = op(&c, Op::DecodeAttention);
        assert!(!pre.on_pim && dec.on_pim);
        let alone = dec.flops / 30.168e12;
        assert!(alone > pre.seconds);
        assert!(close(dec.seconds, alone - pre.seconds));
    }
}
