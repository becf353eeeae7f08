//! MLPs (gated: gate+up and down projections; plain: up and down): the dense MLP of dense layers
//! and the shared experts of MoE layers.

use super::iteration::IterationPass;
use super::roofline::Kernel;
use super::{Op, OpCost};

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the MLP gate/up (plain: up) and down projections: the shared experts on the MoE
    /// layers' share, the dense MLP on the dense layers' share. Offloaded layers of a dense model
    /// with a sparse FFN (`ffn_load_fraction` < 1) compute only the neurons the batch's tokens activate.
    pub(super) fn mlp(&mut self) {
        let cm = self.cm;
        let (h, mt) = (cm.h, self.mt);
        let shared_share = if cm.shared_width > 0.0 { cm.moe_share } else { 0.0 };
        let sparse_share = if cm.moe_share == 0.0 { cm.sparse_ffn_share().min(cm.dense_share) } else { 0.0 };
        if shared_share > 0.0 || cm.dense_share > 0.0 {
            // The first GEMM's outputs: gate and up (gated), or up alone (plain).
            let outputs = cm.model.mlp.matrices() as f64 - 1.0;
            let mlp = |width: f64| [cm.gemm(mt, h, outputs * width), cm.gemm(mt, width, h)];
            let (shared, dense) = (mlp(cm.shared_width), mlp(cm.dense_width));
            // Only offloaded sparse layers need their own (narrower) GEMMs; most iterations have none.
            let sparse = if sparse_share > 0.0 { mlp(cm.dense_width * cm.ffn_active_fraction(mt)) } else { dense };
            for (i, op) in [Op::MlpGateUp, Op::MlpDown].into_iter().enumerate() {
                let kernels = [Kernel::on(shared_share, shared[i]), Kernel::on(cm.dense_share - sparse_share, dense[i]), Kernel::on(sparse_share, sparse[i])];
                let used = if sparse_share > 0.0 { 3 } else { 2 };
                self.emit(op, &kernels[..used], cm.flops_gemm, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;
    use crate::model::{MlpKind, ModelSpec};

    #[test]
    fn deepseek_v2_lite_dense_first_layer_charges_one_dense_mlp() {
        let ds = deepseek_v2_lite();
        let mut all_moe = deepseek_v2_lite();
        all_moe.first_dense_layers = 0;
        let cm = CostModel::new(ds, h100(), ideal(), 1).unwrap();
        let moe = CostModel::new(all_moe, h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..8 {
            s.add_decode(1000);
        }
        let (c, m) = (cm.breakdown(&s), moe.breakdown(&s));
        // MLP gate+up: the 2 x 1408 shared experts on 26 layers, the 10944-wide MLP on exactly one.
        let shared = gemm(8.0, 2048.0, 2.0 * 2816.0);
        let dense = gemm(8.0, 2048.0, 2.0 * 10944.0);
        let gu = op(&c, Op::MlpGateUp);
        assert!(close(gu.flops, 26.0 * shared.0 + dense.0));
        assert!(close(gu.bytes, 26.0 * shared.1 + dense.1));
        assert!(close(gu.seconds, (26.0 * shared.1 + dense.1) / 3.35e12));
        assert!(close(gu.flops - op(&m, Op::MlpGateUp).flops, dense.0 - shared.0));
        let down = op(&c, Op::MlpDown);
        assert!(close(down.bytes, 26.0 * gemm(8.0, 2816.0, 2048.0).1 + gemm(8.0, 10944.0, 2048.0).1));
        // Router and routed experts run on 26 of the 27 layers.
        for which in [Op::MoeRouter, Op::MoeExperts] {
            let (a, b) = (op(&c, which), op(&m, which));
            assert!(close(a.flops, b.flops * 26.0 / 27.0) && close(a.bytes, b.bytes * 26.0 / 27.0) && close(a.seconds, b.seconds * 26.0 / 27.0));
        }
        assert!(close(op(&c, Op::MoeRouter).flops, 26.0 * gemm(8.0, 2048.0, 64.0).0));
    }

    #[test]
    fn plain_mlp_runs_an_up_and_a_down_projection() {
        // OPT-66B, 8 decodes on one H100: per layer an up GEMM 9216 -> 36864 (no gate) and a down
        // GEMM 36864 -> 9216, on 64 layers.
        let cm = CostModel::new(opt_66b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..8 {
            s.add_decode(1000);
        }
        let c = cm.breakdown(&s);
        let (up, down) = (op(&c, Op::MlpGateUp), op(&c, Op::MlpDown));
        assert!(close(up.flops, 64.0 * 2.0 * 8.0 * 9216.0 * 36864.0));
        assert!(close(up.bytes, 64.0 * (9216.0 * 36864.0 + 8.0 * 9216.0 + 8.0 * 36864.0) * 2.0));
        assert!(close(up.seconds, up.bytes / 3.35e12));
        assert!(close(down.flops, up.flops) && close(down.bytes, up.bytes));
        // The gated variant's gate+up reads twice the weights.
        let gated = CostModel::new(ModelSpec { mlp: MlpKind::Gated, ..opt_66b() }, h100(), ideal(), 1).unwrap();
        assert!(close(op(&gated.breakdown(&s), Op::MlpGateUp).flops, 2.0 * up.flops));
        // The MLP's live activations: input, residual, up output and activation.
        assert_eq!(cm.activation_bytes(1000, 0), 1000 * (2 * 9216 + 2 * 36864) * 2);
        assert_eq!(gated.activation_bytes(1000, 0), 1000 * (2 * 9216 + 3 * 36864) * 2);
    }
}
