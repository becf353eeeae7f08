//! Roofline primitives: a kernel's time from its FLOPs and bytes (the power cap stretching both
//! sides, GEMMs optionally blended at the ridge), GEMM work, and the padded token count.

use super::{BatchShape, CostModel};
use std::cell::Cell;

/// One kernel of an operator: its FLOPs and bytes on one layer, and the share of the layers that
/// run it (1 for every layer; a MoE model's leading dense layers run other FFN kernels).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Kernel {
    /// FLOPs on one layer.
    pub(super) flops: f64,
    /// Bytes on one layer.
    pub(super) bytes: f64,
    /// The share of the layers that run it.
    pub(super) share: f64,
    /// A lower bound on the kernel's time, seconds (the decode-attention tail), 0 for none.
    pub(super) floor: f64,
    /// The bandwidth this kernel reaches, bytes/s, where it differs from its operator's (decode
    /// attention while FlashAttention splits keys); None: the operator's.
    pub(super) bw: Option<f64>,
    /// FLOPs on one layer when it runs on a PIM device, where they differ from `flops`: a GPU
    /// kernel's query tile pads decode attention's rows, a PIM computes only the real ones.
    pub(super) pim_flops: Option<f64>,
}

impl Kernel {
    /// `(flops, bytes)` run by `share` of the layers.
    pub(super) fn on(share: f64, (flops, bytes): (f64, f64)) -> Self {
        Kernel { flops, bytes, share, floor: 0.0, bw: None, pim_flops: None }
    }

    /// `(flops, bytes)` run by every layer.
    pub(super) fn all(work: (f64, f64)) -> Self {
        Self::on(1.0, work)
    }
}

const RIDGE_SLOTS: usize = 16384;

thread_local! {
    /// Direct-mapped memo of [`ridge_blend`] (room for the GEMMs of every decode batch size and of
    /// the prefills of a few thousand prompt lengths) by the bits of `(r, p)`; an empty slot holds 0.0,
    /// which no blend (always >= 1) equals.
    static RIDGE_MEMO: [Cell<(u64, u64, f64)>; RIDGE_SLOTS] = const { [const { Cell::new((0, 0, 0.0)) }; RIDGE_SLOTS] };
}

/// The GEMM ridge blend `(1 + r^p)^(1/p)`. Iterations repeat few GEMM shapes (decode batches of
/// the same size), so a per-thread memo of the last pair per slot skips most `powf`s; a hit
/// returns the value computed before for the same bits of `r` and `p`, so results are unchanged.
fn ridge_blend(r: f64, p: f64) -> f64 {
    let (rb, pb) = (r.to_bits(), p.to_bits());
    let h = (rb ^ pb.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - RIDGE_SLOTS.trailing_zeros());
    RIDGE_MEMO.with(|memo| {
        let slot = &memo[h as usize % RIDGE_SLOTS];
        let (kr, kp, v) = slot.get();
        if kr == rb && kp == pb && v != 0.0 {
            return v;
        }
        let v = (1.0 + r.powf(p)).powf(1.0 / p);
        slot.set((rb, pb, v));
        v
    })
}

/// `x.ceil()` without the library call x86-64's baseline makes for it, exact: below 2^52 the
/// truncation is (through i64, one instruction each way on x86-64, where u64 takes a branchy
/// sequence); elsewhere (and for x <= 0, keeping the sign of zero) the library's.
#[inline]
pub(super) fn ceil(x: f64) -> f64 {
    if x > 0.0 && x < 4_503_599_627_370_496.0 {
        let t = x as i64 as f64;
        if t < x { t + 1.0 } else { t }
    } else {
        x.ceil()
    }
}

impl CostModel {
    /// A kernel's time on the GPU, `max(compute, memory)` with both stretched by the power cap,
    /// and whether compute bounds it.
    pub(super) fn roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64) -> (f64, bool) {
        let tc = flops / peak * self.slow_compute;
        let tm = bytes / bw * self.slow_memory;
        (tc.max(tm), tc >= tm)
    }

    /// A GEMM's roofline: `max(c, m)`, or with `gemm_ridge_exponent` = p the blend
    /// `(c^p + m^p)^(1/p)` (computed as `max * (1 + (min / max)^p)^(1/p)`), which is 2^(1/p) times
    /// the max at the ridge and tends to the max away from it.
    pub(super) fn gemm_roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64) -> (f64, bool) {
        self.blended_roofline(flops, bytes, peak, bw, self.eff.gemm_ridge_exponent)
    }

    /// `gemm_roofline` with the blend exponent `exponent` (None or infinite: the max).
    pub(super) fn blended_roofline(&self, flops: f64, bytes: f64, peak: f64, bw: f64, exponent: Option<f64>) -> (f64, bool) {
        let (t, cb) = self.roofline(flops, bytes, peak, bw);
        match exponent {
            Some(p) if p.is_finite() && t > 0.0 => {
                let tc = flops / peak * self.slow_compute;
                let tm = bytes / bw * self.slow_memory;
                let r = tc.min(tm) / t;
                (t * ridge_blend(r, p), cb)
            }
            _ => (t, cb),
        }
    }

    /// Tokens the per-token operators (GEMMs, norms, activations) run on: the prefill part padded
    /// up to a multiple of `prefill_pad_tokens`, if set.
    pub(super) fn padded_tokens(&self, shape: &BatchShape) -> u64 {
        let t = shape.tokens();
        match self.eff.prefill_pad_tokens {
            Some(step) if step > 1 && shape.prefill_tokens > 0 => {
                let p = shape.prefill_tokens;
                t - p + p.div_ceil(step as u64) * step as u64
            }
            _ => t,
        }
    }

    /// The FLOPs and bytes of a decoder layer's `tokens x k` by `k x n` GEMM (weights, input and
    /// output read or written once): weights at the quantized width, the input at the GEMM input
    /// width (FP8 with FP8 activations), the output 16-bit.
    pub(super) fn gemm(&self, tokens: f64, k: f64, n: f64) -> (f64, f64) {
        (2.0 * tokens * k * n, (k * n * (self.wb / self.b) + tokens * k * (self.xb / self.b) + tokens * n) * self.b)
    }

    /// KV-cache bytes per element over 16-bit activation bytes (0.5 with an FP8 cache, else 1).
    pub(super) fn kv_ratio(&self) -> f64 {
        self.kvb / self.b
    }

    /// The FLOPs and bytes of a 16-bit `tokens x k` by `k x n` GEMM, which quantization leaves
    /// alone (the LM head, the MoE router).
    pub(super) fn gemm_16bit(&self, tokens: f64, k: f64, n: f64) -> (f64, f64) {
        (2.0 * tokens * k * n, (k * n + tokens * k + tokens * n) * self.b)
    }

    /// A batched GEMM: one `tokens x k` by `k x n` product per head, each with its own weights.
    pub(super) fn heads_gemm(&self, heads: f64, tokens: f64, k: f64, n: f64) -> (f64, f64) {
        let (flops, bytes) = self.gemm(tokens, k, n);
        (heads * flops, heads * bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    #[test]
    fn inline_ceil_is_the_librarys() {
        let mut xs = vec![0.0, -0.0, -0.5, 0.5, 1.0, 1.0000000000000002, 0.9999999999999999, 79.0 / 2.0, 80.0 / 3.0, 4_503_599_627_370_495.5, 4_503_599_627_370_496.0, 1e300, f64::INFINITY];
        let mut rng = crate::rng::RngStream::new(4, "ceil");
        xs.extend((0..100_000).map(|_| (rng.next_f64() - 0.2) * 10f64.powi((rng.next_f64() * 20.0) as i32 - 4)));
        for x in xs {
            assert_eq!(super::ceil(x).to_bits(), x.ceil().to_bits(), "{x:e}");
        }
        assert!(super::ceil(f64::NAN).is_nan());
    }

    #[test]
    fn efficiency_and_overheads_scale_time() {
        let mut eff = ideal();
        let base = CostModel::new(llama3_8b(), h100(), eff.clone(), 1).unwrap();
        let mut s = BatchShape::default();
        s.add_decode(100);
        let t0 = base.iteration_seconds(&s);
        eff.memory = 0.5;
        eff.iteration_overhead = 1e-3;
        let slow = CostModel::new(llama3_8b(), h100(), eff, 1).unwrap();
        let t1 = slow.iteration_seconds(&s);
        // Every operator of a single decode is memory-bound, so halving bandwidth doubles it.
        assert!(close(t1, 2.0 * t0 + 1e-3));
    }

    #[test]
    fn gemm_ridge_exponent_blends_compute_and_memory_time() {
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let cm = CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(2.0), ..ideal() }, 1).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(256, 0, true);
        // O projection of 256 tokens (4096 x 4096, bf16), per layer: compute 2 x 256 x 4096^2 /
        // 989.4e12 = 8.682 us, memory (4096^2 + 2 x 256 x 4096) x 2 B / 3.35e12 = 11.268 us; the
        // roofline takes 11.268 us, p = 2 gives sqrt(8.682^2 + 11.268^2) = 14.225 us; 32 layers.
        let c: f64 = 2.0 * 256.0 * 4096.0 * 4096.0 / 989.4e12;
        let m: f64 = (4096.0 * 4096.0 + 2.0 * 256.0 * 4096.0) * 2.0 / 3.35e12;
        assert!((c - 8.682e-6).abs() < 1e-9 && (m - 11.268e-6).abs() < 1e-9);
        assert!(close(op(&plain.breakdown(&s), Op::OProj).seconds, 32.0 * m));
        let o = op(&cm.breakdown(&s), Op::OProj);
        assert!(close(o.seconds, 32.0 * (c * c + m * m).sqrt()) && (o.seconds - 32.0 * 14.225e-6).abs() < 32.0 * 1e-9);
        assert!(!o.compute_bound);
        // Non-GEMM operators keep the max.
        for which in [Op::PrefillAttention, Op::Elementwise] {
            assert!(close(op(&cm.breakdown(&s), which).seconds, op(&plain.breakdown(&s), which).seconds));
        }
        // Far from the ridge the blend is the max (p = 2: 1 + (m/c)^2 / 2 of it).
        let mut big = BatchShape::default();
        big.add_prefill(8192, 0, true);
        let (a, b) = (op(&cm.breakdown(&big), Op::MlpGateUp).seconds, op(&plain.breakdown(&big), Op::MlpGateUp).seconds);
        assert!(a > b && a < 1.01 * b);
        // A large exponent is the max.
        let sharp = CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(1e3), ..ideal() }, 1).unwrap();
        assert!((op(&sharp.breakdown(&s), Op::OProj).seconds / (32.0 * m) - 1.0).abs() < 1e-6);
        assert!(CostModel::new(llama3_8b(), h100(), Efficiency { gemm_ridge_exponent: Some(0.5), ..ideal() }, 1).is_err());
    }

    #[test]
    fn prefill_padding_charges_the_padded_tokens_to_gemms_only() {
        let padded = CostModel::new(llama3_8b(), h100(), Efficiency { prefill_pad_tokens: Some(64), ..ideal() }, 1).unwrap();
        let plain = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let shape = |n: u64| {
            let mut s = BatchShape::default();
            s.add_prefill(n, 0, true);
            s
        };
        // 132 tokens run the GEMMs and norms of 192; attention and sampling stay those of 132.
        let (a, b) = (padded.breakdown(&shape(132)), plain.breakdown(&shape(192)));
        for which in [Op::QkvProj, Op::OProj, Op::MlpGateUp, Op::MlpDown, Op::Elementwise] {
            assert!(close(op(&a, which).seconds, op(&b, which).seconds));
        }
        let c = plain.breakdown(&shape(132));
        assert!(close(op(&a, Op::PrefillAttention).seconds, op(&c, Op::PrefillAttention).seconds));
        assert!(close(padded.iteration_seconds(&shape(128)), plain.iteration_seconds(&shape(128))));
    }

    #[test]
    fn power_cap_slows_compute_bound_prefill_not_memory_bound_decode() {
        // Capped at 70% of TDP (490 W): the SM clock drops to 0.74992 of its maximum (see
        // hardware::PowerModel), so compute-bound kernels take 1.33348x as long; memory-bound ones
        // draw 70 + 630 * 0.3 = 259 W, under the cap, and keep their time.
        let base = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let capped = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(490.0)).unwrap();
        let mut prefill = BatchShape::default();
        prefill.add_prefill(4096, 0, true);
        let mut decode = BatchShape::default();
        for _ in 0..8 {
            decode.add_decode(1000);
        }
        let stretch = 1.33348;
        for which in [Op::QkvProj, Op::MlpGateUp, Op::PrefillAttention] {
            let (a, b) = (op(&base.breakdown(&prefill), which), op(&capped.breakdown(&prefill), which));
            assert!(a.compute_bound && (b.seconds / a.seconds - stretch).abs() < 1e-4, "{which:?}: {}", b.seconds / a.seconds);
        }
        let p = capped.iteration_seconds(&prefill) / base.iteration_seconds(&prefill);
        assert!(p > 1.25 && p <= stretch + 1e-4, "prefill stretch {p}");
        let d = capped.iteration_seconds(&decode) / base.iteration_seconds(&decode);
        assert!(close(d, 1.0), "decode stretch {d}");
    }

    #[test]
    fn busy_power_follows_compute_share_and_cap() {
        let cm = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap();
        let pm = cm.power();
        assert!(close(pm.busy_watts(0.0), 70.0 + 630.0 * 0.3));
        assert!(close(pm.busy_watts(1.0), 700.0));
        let capped = CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(400.0)).unwrap();
        assert!(close(capped.power().busy_watts(1.0), 400.0));
        let mut s = BatchShape::default();
        s.add_prefill(2048, 0, true);
        let it = cm.iteration(&s);
        assert!(it.compute_bound_seconds > 0.8 * it.seconds, "a long prefill is mostly compute-bound");
        assert!(CostModel::new(llama3_8b(), h100(), ideal(), 1).unwrap().with_power_cap(Some(-5.0)).is_err());
    }
}
