//! The elementwise operator: norms, RoPE, residual adds, the MLP activation (SiLU-and-multiply or
//! GELU/ReLU), MLA's latent norm, the KV-cache write and a MoE layer's dispatch and combine of its
//! token-expert pairs.

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
        // Hidden-state passes: two norms (read + write) and two residual adds (2 reads + 1 write)
        // = 10 h; a parallel block has one norm and one add of three tensors (3 reads + 1 write)
        // = 6 h. The activation reads the gate and up outputs and writes one (3 x its width), or
        // (plain) reads the up output and writes one (2x). Also RoPE on q and k, MLA's latent
        // norm and writing the new K and V (or latent) into the cache. One FLOP per element of the
        // hidden passes, two per element of the activation's.
        let hidden = if cm.model.parallel_attention { 6.0 * h } else { 10.0 * h };
        let act_passes = cm.model.mlp.matrices() as f64;
        let elem = |act: f64| (mt * (hidden + 2.0 * act_passes * act), mt * b * (hidden + 2.0 * rope_width + 2.0 * latent_width + act_passes * act + cache_width * cm.kv_ratio()));
        // A MoE layer also moves every token-expert pair's hidden vector twice: dispatch (read the
        // token, write one copy per expert it goes to, in expert order) and combine (read the
        // experts' outputs, write the weighted sum): (2k + 2) h per token for k pairs on this GPU.
        // With its own bandwidth (`moe_dispatch_memory`) that traffic is a kernel of its own.
        let k = cm.model.experts_per_token as f64 / cm.ep as f64;
        let (f, by) = elem(cm.moe_act_width);
        let dispatch = (mt * 2.0 * k * h, mt * b * (2.0 * k + 2.0) * h);
        let dense = Kernel::on(cm.dense_share, elem(cm.dense_width));
        if let Some(bw) = cm.bw_dispatch {
            let apart = Kernel { bw: Some(bw), ..Kernel::on(cm.moe_share, dispatch) };
            self.emit(Op::Elementwise, &[Kernel::on(cm.moe_share, (f, by)), apart, dense], cm.flops_16bit, true);
        } else {
            let moe = (f + dispatch.0, by + dispatch.1);
            self.emit(Op::Elementwise, &[Kernel::on(cm.moe_share, moe), dense], cm.flops_16bit, true);
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

    #[test]
    fn moe_dispatch_memory_times_the_dispatch_traffic_apart() {
        // Mixtral again, the elementwise kernels at full bandwidth and the 6h per token of moving
        // token-expert pairs at a quarter of it: 1000 tokens x 2 bytes x 32 layers each.
        let (h, act, kv) = (4096.0, 2.0 * 14336.0, 1024.0);
        let dense = 10.0 * h + 2.0 * (h + kv) + 3.0 * act + 2.0 * kv;
        let mut eff = ideal();
        eff.moe_dispatch_memory = Some(0.25);
        let cm = CostModel::new(mixtral_8x7b(), h100(), eff, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(1000, 0, true);
        let el = op(&cm.breakdown(&s), Op::Elementwise);
        let per_layer = 1000.0 * 2.0 * (dense / 3.35e12 + 6.0 * h / (0.25 * 3.35e12));
        assert!(close(el.seconds, 32.0 * per_layer), "{} vs {}", el.seconds, 32.0 * per_layer);
        assert!(close(el.bytes, 32.0 * 1000.0 * 2.0 * (dense + 6.0 * h)));
        // Unset, the traffic moves at the elementwise bandwidth (the test above).
        let same = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        assert!(close(op(&same.breakdown(&s), Op::Elementwise).seconds, 32.0 * 1000.0 * 2.0 * (dense + 6.0 * h) / 3.35e12));
    }

    #[test]
    fn parallel_blocks_and_plain_activations_pass_over_fewer_tensors() {
        // OPT-66B shapes (multi-head: q = k = v = 9216 wide, MLP 36864), a 1000-token prompt.
        let mut s = BatchShape::default();
        s.add_prefill(1000, 0, true);
        let bytes = |m: ModelSpec| op(&CostModel::new(m, h100(), ideal(), 1).unwrap().breakdown(&s), Op::Elementwise).bytes;
        let rope_cache = 2.0 * (9216.0 + 9216.0) + 2.0 * 9216.0;
        // Sequential, plain: two norms and two residual adds (10 h), GELU reads and writes 36864.
        let plain = 64.0 * 1000.0 * 2.0 * (10.0 * 9216.0 + rope_cache + 2.0 * 36864.0);
        assert!(close(bytes(opt_66b()), plain));
        // Parallel (Falcon): one norm (2 h), one add of x, attention and MLP outputs (4 h).
        let parallel = 64.0 * 1000.0 * 2.0 * (6.0 * 9216.0 + rope_cache + 2.0 * 36864.0);
        assert!(close(bytes(ModelSpec { parallel_attention: true, ..opt_66b() }), parallel));
        assert!(close(plain - parallel, 64.0 * 1000.0 * 2.0 * 4.0 * 9216.0));
        // Gated: SiLU-and-multiply reads two tensors.
        let gated = 64.0 * 1000.0 * 2.0 * (10.0 * 9216.0 + rope_cache + 3.0 * 36864.0);
        assert!(close(bytes(ModelSpec { mlp: MlpKind::Gated, ..opt_66b() }), gated));
        // FLOPs: one per hidden-pass element, two per activation element.
        let fl = op(&CostModel::new(ModelSpec { parallel_attention: true, ..opt_66b() }, h100(), ideal(), 1).unwrap().breakdown(&s), Op::Elementwise).flops;
        assert!(close(fl, 64.0 * 1000.0 * (6.0 * 9216.0 + 4.0 * 36864.0)));
    }
}
