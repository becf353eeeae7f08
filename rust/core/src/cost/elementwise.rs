//! The elementwise operator: RMSNorms, RoPE, residual adds, SiLU-and-multiply, MLA's latent norm,
//! the KV-cache write and a MoE layer's dispatch and combine of its token-expert pairs.

use super::attention::AttentionWidths;
use super::iteration::IterationPass;
use super::roofline::Kernel;
use super::{Op, OpCost};

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the elementwise kernels of the MoE and the dense layers; `widths` come from the
    /// attention kind.
    pub(super) fn elementwise(&mut self, widths: AttentionWidths) {
        let cm = self.cm;
        let (h, b, mt) = (cm.h, cm.b, self.mt);
        let AttentionWidths { rope: rope_width, latent: latent_width, cache: cache_width } = widths;
        // Two RMSNorms (read+write), RoPE on q and k, two residual adds (2 reads + 1 write),
        // SiLU-and-multiply (2 reads + 1 write) of the activated FFN width, MLA's latent norm,
        // and writing the new K and V (or latent) into the cache.
        let elem = |act: f64| (mt * (10.0 * h + 6.0 * act), mt * b * (10.0 * h + 2.0 * rope_width + 2.0 * latent_width + 3.0 * act + cache_width * cm.kv_ratio()));
        // A MoE layer also moves every token-expert pair's hidden vector twice: dispatch (read the
        // token, write one copy per expert it goes to, in expert order) and combine (read the
        // experts' outputs, write the weighted sum): (2k + 2) h per token for k pairs on this GPU.
        let k = cm.model.experts_per_token as f64 / cm.ep as f64;
        let (f, by) = elem(cm.moe_act_width);
        let moe = (f + mt * 2.0 * k * h, by + mt * b * (2.0 * k + 2.0) * h);
        let kernels = [Kernel::on(cm.moe_share, moe), Kernel::on(cm.dense_share, elem(cm.dense_width))];
        self.emit(Op::Elementwise, &kernels, cm.flops_16bit, true);
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    #[test]
    fn elementwise_memory_efficiency_applies_to_elementwise_only() {
        let mut eff = ideal();
        eff.elementwise_memory = Some(0.25);
        let cm = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(1000, 0, true);
        let c = cm.breakdown(&s);
        // Per layer: T * b * (10h + 2(q + kv) + 3I + 2kv) bytes = 1000 * 2 * (40960 + 10240 + 43008 + 2048).
        let el = op(&c, Op::Elementwise);
        assert!(close(el.bytes, 32.0 * 1000.0 * 2.0 * 96256.0));
        assert!(close(el.seconds, el.bytes / (0.25 * 3.35e12)));
        let mlp = op(&c, Op::MlpDown);
        assert!(close(mlp.seconds, mlp.flops / 989.4e12));
    }

    #[test]
    fn moe_layers_add_dispatch_and_combine_traffic() {
        // Mixtral (k = 2, h = 4096, activated width 2 x 14336): the dense terms of the test above
        // plus (2k + 2) h = 6h per token for moving the token-expert pairs.
        let cm = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(1000, 0, true);
        let el = op(&cm.breakdown(&s), Op::Elementwise);
        let (h, act, kv) = (4096.0, 2.0 * 14336.0, 1024.0);
        let per_token = 10.0 * h + 2.0 * (h + kv) + 3.0 * act + 2.0 * kv + 6.0 * h;
        assert!(close(el.bytes, 32.0 * 1000.0 * 2.0 * per_token), "{}", el.bytes);
    }
}
