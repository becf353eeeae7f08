//! Mixture-of-experts layers: the router GEMM and the routed experts, a grouped GEMM over the
//! token-expert pairs that reads the experts the batch touches (on the GPU, or the PIM if faster).
//!
//! The grouped GEMM's achieved FLOP rate depends on its shape: each touched expert's rows round up
//! to whole row tiles, so with `m` rows per expert it computes about `m + pad` rows
//! (`expert_pad_rows`) and reaches `m / (m + pad)` of `expert_compute` — a curve that saturates
//! in tokens per expert (Qwen3-30B-A3B's 128 small experts at 8 of 128 per token see few rows each;
//! Mixtral's 8 see many). Its compute and memory times blend near the ridge with
//! `expert_ridge_exponent` (default: `gemm_ridge_exponent`).

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
        let gpu = self.expert_roofline(flops, bytes, self.expert_flops_rate(pairs, touched), self.bw_expert).0;
        match &self.pim {
            Some(p) => gpu.min(p.seconds(flops, bytes)),
            None => gpu,
        }
    }

    /// Fraction of `expert_compute` the grouped GEMM reaches over `pairs` token-expert pairs on
    /// `touched` experts: `m / (m + pad)` with `m = pairs / touched` rows per expert and `pad` =
    /// `expert_pad_rows` (1 when unset or nothing is routed).
    pub fn expert_row_efficiency(&self, pairs: f64, touched: f64) -> f64 {
        let pad = self.eff.expert_pad_rows.unwrap_or(0.0);
        if pad <= 0.0 || pairs <= 0.0 || touched <= 0.0 {
            return 1.0;
        }
        pairs / (pairs + touched * pad)
    }

    /// The grouped GEMM's achieved FLOP/s over `pairs` pairs on `touched` experts.
    fn expert_flops_rate(&self, pairs: f64, touched: f64) -> f64 {
        self.flops_expert * self.expert_row_efficiency(pairs, touched)
    }

    /// The routed experts' kernel time at FLOP rate `peak` and bandwidth `bw`: the roofline
    /// blended with `expert_ridge_exponent` (default `gemm_ridge_exponent`), and whether compute
    /// bounds it.
    pub(super) fn expert_roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64) -> (f64, bool) {
        self.blended_roofline(flops, bytes, peak, bw, self.eff.expert_ridge_exponent.or(self.eff.gemm_ridge_exponent))
    }
}

/// The largest `expert_pad_rows` accepted (a row tile is at most a few hundred rows).
pub(super) const MAX_EXPERT_PAD_ROWS: f64 = 4096.0;

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
            self.emit(Op::MoeExperts, &[Kernel::on(cm.moe_share, cm.expert_work(pairs, touched))], cm.expert_flops_rate(pairs, touched), true);
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
    fn expert_rows_pad_to_tiles_so_the_flop_rate_saturates_in_tokens_per_expert() {
        let padded = CostModel::new(mixtral_8x7b(), h100(), Efficiency { expert_pad_rows: Some(128.0), ..ideal() }, 1).unwrap();
        let base = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        // m rows per touched expert reach m / (m + 128) of the expert FLOP rate.
        assert!(close(padded.expert_row_efficiency(2.0, 2.0), 1.0 / 129.0));
        assert!(close(padded.expert_row_efficiency(2048.0, 8.0), 2.0 / 3.0));
        assert!(close(padded.expert_row_efficiency(0.0, 0.0), 1.0) && close(base.expert_row_efficiency(2.0, 2.0), 1.0));
        // A prefill of 8192 tokens: 16384 pairs on all 8 experts, 2048 rows each: 2048 / 2176 =
        // 16/17 of peak. Per layer 2 x 16384 x 3 x 4096 x 14336 = 5.772e12 FLOPs at
        // 16/17 x 989.4 TFLOP/s (931.2), 6.199 ms, against 4.50 GB of weights and activations in 1.34 ms.
        let mut big = BatchShape::default();
        big.add_prefill(8192, 0, true);
        let flops: f64 = 2.0 * 16384.0 * 3.0 * 4096.0 * 14336.0;
        assert!((flops - 5.772e12).abs() < 1e9);
        let p = op(&padded.breakdown(&big), Op::MoeExperts);
        assert!(p.compute_bound && close(p.seconds, 32.0 * flops / (989.4e12 * 16.0 / 17.0)));
        assert!((p.seconds / 32.0 - 6.199e-3).abs() < 1e-6, "{}", p.seconds / 32.0);
        assert!(close(p.seconds, 17.0 / 16.0 * op(&base.breakdown(&big), Op::MoeExperts).seconds));
        assert!(close(p.flops, op(&base.breakdown(&big), Op::MoeExperts).flops), "padding costs time, not FLOPs");
        // One decode: 2 rows on 2 experts compute at 1/129 of peak (91.9 us) but read 2 experts'
        // weights (210.4 us at 3.35 TB/s): still weight-bound, unchanged.
        let mut one = BatchShape::default();
        one.add_decode(100);
        let c: f64 = 2.0 * 2.0 * 3.0 * 4096.0 * 14336.0 * 129.0 / 989.4e12;
        assert!((c - 91.9e-6).abs() < 0.1e-6);
        let d = op(&padded.breakdown(&one), Op::MoeExperts);
        assert!(!d.compute_bound && close(d.seconds, op(&base.breakdown(&one), Op::MoeExperts).seconds));
        assert!(close(padded.expert_seconds(2.0, 2.0), base.expert_seconds(2.0, 2.0)));
        assert!(close(padded.expert_seconds(16384.0, 8.0), p.seconds / 32.0));
        for bad in [-1.0, f64::NAN, 1e5] {
            assert!(CostModel::new(mixtral_8x7b(), h100(), Efficiency { expert_pad_rows: Some(bad), ..ideal() }, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn expert_ridge_exponent_blends_the_experts_alone_and_defaults_to_the_gemms() {
        let base = CostModel::new(mixtral_8x7b(), h100(), ideal(), 1).unwrap();
        let blended = CostModel::new(mixtral_8x7b(), h100(), Efficiency { expert_ridge_exponent: Some(2.0), ..ideal() }, 1).unwrap();
        // A prefill of 256 tokens: 512 pairs on all 8 experts. Per layer compute
        // 2 x 512 x 3 x 4096 x 14336 / 989.4e12 = 182.3 us, memory (8 x 3 x 4096 x 14336 +
        // 512 x (2 x 4096 + 3 x 14336)) x 2 / 3.35e12 = 857.1 us; p = 2: sqrt(c^2 + m^2) = 876.2 us.
        let mut s = BatchShape::default();
        s.add_prefill(256, 0, true);
        let c: f64 = 2.0 * 512.0 * 3.0 * 4096.0 * 14336.0 / 989.4e12;
        let m: f64 = (8.0 * 3.0 * 4096.0 * 14336.0 + 512.0 * (2.0 * 4096.0 + 3.0 * 14336.0)) * 2.0 / 3.35e12;
        assert!((c - 182.3e-6).abs() < 0.1e-6 && (m - 857.1e-6).abs() < 0.1e-6, "{c} {m}");
        let e = op(&blended.breakdown(&s), Op::MoeExperts);
        assert!(close(e.seconds, 32.0 * (c * c + m * m).sqrt()) && (e.seconds / 32.0 - 876.2e-6).abs() < 0.1e-6, "{} {}", e.seconds / 32.0, op(&base.breakdown(&s), Op::MoeExperts).seconds / 32.0);
        assert!(close(op(&base.breakdown(&s), Op::MoeExperts).seconds, 32.0 * m));
        // The dense GEMMs keep their max; unset, the experts take gemm_ridge_exponent.
        assert!(close(op(&blended.breakdown(&s), Op::QkvProj).seconds, op(&base.breakdown(&s), Op::QkvProj).seconds));
        let shared = CostModel::new(mixtral_8x7b(), h100(), Efficiency { gemm_ridge_exponent: Some(2.0), ..ideal() }, 1).unwrap();
        assert!(close(op(&shared.breakdown(&s), Op::MoeExperts).seconds, e.seconds));
        let own = CostModel::new(mixtral_8x7b(), h100(), Efficiency { gemm_ridge_exponent: Some(2.0), expert_ridge_exponent: Some(1e3), ..ideal() }, 1).unwrap();
        assert!((op(&own.breakdown(&s), Op::MoeExperts).seconds / (32.0 * m) - 1.0).abs() < 1e-6);
        assert!(CostModel::new(mixtral_8x7b(), h100(), Efficiency { expert_ridge_exponent: Some(0.5), ..ideal() }, 1).is_err());
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
