//! Mixture-of-experts layers: the router GEMM and the routed experts, a grouped GEMM over the
//! token-expert pairs that reads the experts the batch touches (on the GPU, or the PIM if faster).

use super::iteration::IterationPass;
use super::roofline::Kernel;
use super::{CostModel, Op, OpCost};

impl CostModel {
    /// Bytes of one routed expert's weights on one GPU (whole with expert parallelism, else a
    /// tensor-parallel shard).
    pub fn expert_bytes_per_gpu(&self) -> f64 {
        self.model.mlp.matrices() as f64 * self.h * self.model.moe_intermediate_size as f64 * self.wb / (self.tp as f64 / self.ep as f64)
    }

    /// The FLOPs and bytes of one MoE layer's routed experts on one GPU: a grouped GEMM over
    /// `pairs` token-expert pairs that reads the `touched` experts' weights. Each GPU holds
    /// experts/ep experts, each sharded over tp/ep GPUs.
    fn expert_work(&self, pairs: f64, touched: f64) -> (f64, f64) {
        let h = self.h;
        let width = self.model.moe_intermediate_size as f64 / (self.tp as f64 / self.ep as f64);
        let mats = self.model.mlp.matrices() as f64;
        let flops = 2.0 * pairs * mats * h * width;
        // Weights at the quantized width; each pair reads its first and second GEMM's inputs
        // (h + width, FP8 with FP8 activations) and writes their 16-bit outputs.
        let inputs_saved = (h + width) * (1.0 - self.xb / self.b);
        let bytes = (touched * mats * h * width * (self.wb / self.b) + pairs * (2.0 * h + mats * width - inputs_saved)) * self.b;
        (flops, bytes)
    }

    /// One MoE layer's routed experts on one GPU: a grouped GEMM over `pairs` token-expert pairs
    /// that reads the `touched` experts' weights, on the GPU or, if faster, the PIM. Seconds.
    pub fn expert_seconds(&self, pairs: f64, touched: f64) -> f64 {
        let (flops, bytes) = self.expert_work(pairs, touched);
        let gpu = self.gemm_roofline(flops, bytes, self.flops_expert, self.bw_expert).0;
        match &self.pim {
            Some(p) => gpu.min(p.seconds(flops, bytes)),
            None => gpu,
        }
    }
}

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the router and the routed experts on the MoE layers' share of the layers.
    pub(super) fn experts(&mut self) {
        let cm = self.cm;
        let (h, mt) = (cm.h, self.mt);
        if cm.moe_share > 0.0 {
            let experts = cm.model.num_experts as f64;
            // The router's gate stays 16-bit under quantization, as in vLLM.
            self.emit(Op::MoeRouter, &[Kernel::on(cm.moe_share, cm.gemm_16bit(mt, h, experts))], cm.flops_16bit, true);
            // On average each GPU gets 1/ep of the token-expert pairs and of the experts the batch touches.
            let e = cm.ep as f64;
            let pairs = mt * cm.model.experts_per_token as f64 / e;
            let touched = cm.model.expected_unique_experts(mt) / e;
            self.emit(Op::MoeExperts, &[Kernel::on(cm.moe_share, cm.expert_work(pairs, touched))], cm.flops_expert, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;
    use crate::model::ModelSpec;

    #[test]
    fn moe_experts_are_charged_by_tokens_and_unique_experts() {
        let cm = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        let expert = 3.0 * 4096.0 * 14336.0;
        // One decode touches its 2 experts: weight-bound on 2 experts' weights.
        let mut one = BatchShape::default();
        one.add_decode(100);
        let e1 = op(&cm.breakdown(&one), Op::MoeExperts);
        assert!(close(e1.bytes, 32.0 * (2.0 * expert + 2.0 * (2.0 * 4096.0 + 3.0 * 14336.0)) * 2.0));
        assert!(close(e1.flops, 32.0 * 2.0 * 2.0 * expert));
        // Four decodes touch 8 (1 - (3/4)^4) = 5.47 experts on average.
        let mut four = BatchShape::default();
        for _ in 0..4 {
            four.add_decode(100);
        }
        let u = 8.0 * (1.0 - 0.75f64.powi(4));
        let e4 = op(&cm.breakdown(&four), Op::MoeExperts);
        assert!(close(e4.bytes, 32.0 * (u * expert + 8.0 * (2.0 * 4096.0 + 3.0 * 14336.0)) * 2.0));
        assert!(cm.breakdown(&one).iter().all(|c| c.op != Op::MlpGateUp), "no dense MLP in Mixtral");
        // Active weights of a decode: attention + 2 experts, not 8.
        let t1 = cm.iteration_seconds(&one);
        let dense_equiv = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        assert!(t1 > dense_equiv.iteration_seconds(&one) && t1 < 2.0 * dense_equiv.iteration_seconds(&one));
    }

    #[test]
    fn expert_kernel_fractions_apply_to_routed_experts_only() {
        let slow = Efficiency { expert_memory: Some(0.5), expert_compute: Some(0.25), ..ideal() };
        let cm = CostModel::new(mixtral_8x7b(), h100(), slow, 1).unwrap();
        let base = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        let mut one = BatchShape::default();
        one.add_decode(100);
        // Weight-bound: half the bandwidth, twice the time; the router and attention unchanged.
        let (e, e0) = (op(&cm.breakdown(&one), Op::MoeExperts), op(&base.breakdown(&one), Op::MoeExperts));
        assert!(close(e.seconds, 2.0 * e0.seconds));
        assert!(close(op(&cm.breakdown(&one), Op::QkvProj).seconds, op(&base.breakdown(&one), Op::QkvProj).seconds));
        // Compute-bound prefill: a quarter of the FLOP rate, four times the time.
        let mut big = BatchShape::default();
        big.add_prefill(8192, 0, true);
        let (p, p0) = (op(&cm.breakdown(&big), Op::MoeExperts), op(&base.breakdown(&big), Op::MoeExperts));
        assert!(close(p.seconds, 4.0 * p0.seconds));
        assert!(CostModel::new(mixtral_8x7b(), h100(), Efficiency { expert_memory: Some(0.0), ..ideal() }, 1).is_err());
    }

    #[test]
    fn interleaved_moe_layers_charge_experts_on_half_the_layers() {
        let every = CostModel::new(mixtral_8x7b(), h100(), ideal(), 2).unwrap();
        let half = CostModel::new(ModelSpec { moe_layer_interval: 2, ..mixtral_8x7b() }, h100(), ideal(), 2).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..16 {
            s.add_decode(500);
        }
        let (a, b) = (every.breakdown(&s), half.breakdown(&s));
        for which in [Op::MoeRouter, Op::MoeExperts] {
            assert!(close(op(&b, which).flops, 0.5 * op(&a, which).flops) && close(op(&b, which).bytes, 0.5 * op(&a, which).bytes));
        }
        // The 16 dense layers run the 14336-wide MLP (7168 per GPU at tp = 2).
        assert!(close(op(&b, Op::MlpGateUp).bytes, 16.0 * gemm(16.0, 4096.0, 2.0 * 7168.0).1));
        assert!(a.iter().all(|c| c.op != Op::MlpGateUp));
        // Weights per GPU: 16 MoE layers and 16 dense layers, halved by tp = 2.
        let m = ModelSpec { moe_layer_interval: 2, ..mixtral_8x7b() };
        assert_eq!(half.weight_bytes_per_gpu(), 26_972_262_400 * 2 / 2);
        assert_eq!(half.weight_bytes_per_gpu(), m.weight_bytes() / 2);
        // Plain experts (Switch-style) hold two matrices each.
        let plain = CostModel::new(ModelSpec { mlp: crate::model::MlpKind::Plain, ..mixtral_8x7b() }, h100(), ideal(), 1).unwrap();
        assert!(close(plain.expert_bytes_per_gpu(), 2.0 * 4096.0 * 14336.0 * 2.0));
    }
}
