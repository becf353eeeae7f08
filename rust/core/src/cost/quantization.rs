//! Quantization of one instance, as vLLM offers it: the weights' storage format (FP8, INT8 W8A16,
//! AWQ/GPTQ-style INT4 W4A16 with per-group scales), the GEMMs' input activations (FP8 W8A8: the
//! GEMMs run at the GPU's FP8 tensor peak) and the KV cache (`--kv-cache-dtype fp8`).
//!
//! The cost model keeps three element sizes apart: weight bytes per parameter of the decoder layers
//! (`wb`; the embedding and LM head stay 16-bit, as vLLM leaves them), the 16-bit activation bytes
//! (`b`; with FP8 activations only a GEMM's input is read as FP8) and KV-cache bytes (`kvb`).
//! Weight-only formats compute at the 16-bit peak: their dequantization overhead (small for the
//! Marlin kernels vLLM uses at large batch) is not modelled. See docs/quantization.md.

use crate::error::{Error, Result};
use crate::hardware::GpuSpec;
use serde::{Deserialize, Serialize};

/// How the decoder layers' weights are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// The model's own 16-bit dtype (`dtype_bytes`): no quantization.
    #[default]
    Bf16,
    /// FP8 (E4M3), one byte per weight with per-channel or per-tensor scales.
    Fp8,
    /// INT8 weight-only (W8A16), one byte per weight with per-channel scales.
    Int8,
    /// INT4 weight-only (W4A16, AWQ/GPTQ): half a byte per weight plus a 16-bit scale and a 16-bit
    /// zero point per `group_size` weights.
    Int4,
}

/// The element type GEMMs read their input activations in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationFormat {
    /// 16-bit activations: GEMMs run at the 16-bit tensor peak.
    #[default]
    Bf16,
    /// FP8 activations with FP8 weights (W8A8): GEMMs run at the FP8 tensor peak.
    Fp8,
}

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheFormat {
    /// The model's own 16-bit dtype.
    #[default]
    Bf16,
    /// FP8 (vLLM's `--kv-cache-dtype fp8`): one byte per cached element.
    Fp8,
}

/// INT4 weights per group sharing one scale and zero point, by default (AWQ's and GPTQ's 128).
pub const DEFAULT_GROUP_SIZE: u32 = 128;
/// Bytes of one group's scale and zero point (16 bits each).
pub const GROUP_METADATA_BYTES: f64 = 4.0;
/// The smallest and largest INT4 group sizes accepted.
pub const GROUP_SIZE_RANGE: (u32, u32) = (8, 65536);

fn default_group_size() -> u32 {
    DEFAULT_GROUP_SIZE
}

/// An instance's quantization (a pool's `quantization` in the scenario); the default is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Storage format of the decoder layers' weights.
    #[serde(default)]
    pub weights: WeightFormat,
    /// Element type of the GEMMs' input activations.
    #[serde(default)]
    pub activations: ActivationFormat,
    /// Element type of the KV cache.
    #[serde(default)]
    pub kv_cache: KvCacheFormat,
    /// INT4 weights per scale and zero point (used by `weights: int4` only).
    #[serde(default = "default_group_size")]
    pub group_size: u32,
}

impl Default for Quantization {
    /// No quantization: 16-bit weights, activations and KV cache.
    fn default() -> Self {
        Quantization { weights: WeightFormat::Bf16, activations: ActivationFormat::Bf16, kv_cache: KvCacheFormat::Bf16, group_size: DEFAULT_GROUP_SIZE }
    }
}

impl Quantization {
    /// Bytes per decoder-layer parameter for a model whose own dtype has `native` bytes.
    pub fn weight_bytes_per_param(&self, native: f64) -> f64 {
        match self.weights {
            WeightFormat::Bf16 => native,
            WeightFormat::Fp8 | WeightFormat::Int8 => 1.0,
            WeightFormat::Int4 => 0.5 + GROUP_METADATA_BYTES / self.group_size as f64,
        }
    }

    /// Bytes per element of a GEMM's input activations (1 with FP8 activations, else `native`).
    pub fn gemm_input_bytes(&self, native: f64) -> f64 {
        match self.activations {
            ActivationFormat::Bf16 => native,
            ActivationFormat::Fp8 => 1.0,
        }
    }

    /// Bytes per cached key or value element (1 with an FP8 KV cache, else `native`).
    pub fn kv_bytes_per_element(&self, native: f64) -> f64 {
        match self.kv_cache {
            KvCacheFormat::Bf16 => native,
            KvCacheFormat::Fp8 => 1.0,
        }
    }

    /// The tensor peak the quantized linear layers run at on `gpu`, FLOP/s: the FP8 peak with FP8
    /// activations, else the 16-bit peak (weight-only formats dequantize to 16 bits).
    pub fn linear_peak_flops(&self, gpu: &GpuSpec) -> f64 {
        match self.activations {
            ActivationFormat::Bf16 => gpu.peak_flops,
            ActivationFormat::Fp8 => gpu.fp8_peak_flops,
        }
    }

    /// Checks the combination and that `gpu` can run it: FP8 activations need FP8 weights (W8A8)
    /// and a GPU with an FP8 tensor peak (`fp8_peak_flops`); the INT4 group size in range.
    pub fn validate(&self, gpu: &GpuSpec) -> Result<()> {
        let (lo, hi) = GROUP_SIZE_RANGE;
        if !(lo..=hi).contains(&self.group_size) {
            return Err(Error::config("quantization.group_size", format!("must be between {lo} and {hi} weights per scale, got {}", self.group_size)));
        }
        if self.activations == ActivationFormat::Fp8 {
            if self.weights != WeightFormat::Fp8 {
                return Err(Error::config(
                    "quantization.activations",
                    format!("fp8 activations run FP8 GEMMs, which need weights: fp8 (W8A8); got weights: {}", self.weights.name()),
                ));
            }
            if gpu.fp8_peak_flops <= 0.0 {
                return Err(Error::config(
                    "quantization.activations",
                    format!("fp8 needs FP8 tensor cores, and {} has none (its fp8_peak_flops is unset); use activations: bf16 (weight-only fp8, int8 or int4 still run)", gpu.name),
                ));
            }
        }
        Ok(())
    }
}

impl WeightFormat {
    /// The name the scenario uses.
    pub fn name(&self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Fp8 => "fp8",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::error::Error;
    use crate::memory::{MemoryConfig, MemoryPlan};
    use crate::model::fixtures::*;

    fn quantized(gpu: GpuSpec, q: Quantization) -> Result<CostModel> {
        CostModel::build(&InstanceSpec { quantization: q, ..InstanceSpec::new(llama3_8b(), gpu, ideal(), 1) })
    }

    fn weights(w: WeightFormat) -> Quantization {
        Quantization { weights: w, ..Quantization::default() }
    }

    fn decode_batch(n: u64, context: u64) -> BatchShape {
        let mut s = BatchShape::default();
        for _ in 0..n {
            s.add_decode(context);
        }
        s
    }

    // Llama-3-8B: 32 layers of 218,112,000 parameters (6,979,584,000), a 128256 x 4096 embedding
    // and LM head (525,336,576 each) and the 4096-wide final norm: 8,030,261,248 parameters.
    const LAYERS: u64 = 6_979_584_000;
    const EMBED_AND_HEAD: u64 = 2 * 525_336_576;

    #[test]
    fn fp8_and_int4_weights_shrink_the_layers_not_the_embedding_and_lm_head() {
        let m = llama3_8b();
        assert_eq!((m.total_params(), m.layers_params(0..32)), (8_030_261_248, LAYERS));
        let bf16 = quantized(h100(), Quantization::default()).unwrap();
        assert_eq!(bf16.weight_bytes_per_gpu(), 2 * 8_030_261_248);
        assert_eq!(bf16.model_weight_bytes(), m.weight_bytes());
        // FP8: (8.03e9 - embed - head) x 1 + (embed + head) x 2, the final norm 16-bit too.
        let fp8 = quantized(h100(), weights(WeightFormat::Fp8)).unwrap();
        assert_eq!(fp8.weight_bytes_per_gpu(), LAYERS + 2 * (EMBED_AND_HEAD + 4096));
        assert_eq!(fp8.weight_bytes_per_gpu(), 9_080_938_496);
        let brief = (8_030_261_248 - EMBED_AND_HEAD) + 2 * EMBED_AND_HEAD;
        assert!((fp8.weight_bytes_per_gpu() as f64 / brief as f64 - 1.0).abs() < 1e-6);
        assert_eq!(quantized(h100(), weights(WeightFormat::Int8)).unwrap().weight_bytes_per_gpu(), 9_080_938_496);
        // INT4, groups of 128: 0.5 + 4/128 = 0.53125 bytes per layer parameter.
        let int4 = quantized(h100(), weights(WeightFormat::Int4)).unwrap();
        assert_eq!(int4.weight_bytes_per_gpu(), 3_707_904_000 + 2 * (EMBED_AND_HEAD + 4096));
        let g64 = quantized(h100(), Quantization { group_size: 64, ..weights(WeightFormat::Int4) }).unwrap();
        assert_eq!(g64.weight_bytes_per_gpu() - int4.weight_bytes_per_gpu(), LAYERS * 4 / 128);
        // Tensor parallelism halves both parts.
        let tp2 = CostModel::build(&InstanceSpec { quantization: weights(WeightFormat::Fp8), ..InstanceSpec::new(llama3_8b(), h100(), ideal(), 2) }).unwrap();
        assert_eq!(tp2.weight_bytes_per_gpu(), 9_080_938_496 / 2);
        // Offloaded layers stream their quantized bytes: one layer's projections (218,103,808) at one byte each.
        assert!(close(fp8.clone().with_offload(Some(crate::offload::OffloadSpec { layer_fraction: 1.0, ..dram() })).unwrap().layer_fetch_bytes(1.0), 218_103_808.0));
    }

    fn dram() -> crate::offload::OffloadSpec {
        serde_json::from_str(r#"{"tier": "dram", "layer_fraction": 1.0}"#).unwrap()
    }

    #[test]
    fn batch_one_decode_speeds_up_with_the_weight_bytes() {
        // Batch 1 at context 1000 on an H100 is memory-bound: every GEMM streams its weights, the
        // 16-bit LM head (1.05 GB) and the 0.13 GB of KV stay. bf16 reads 15.2 GB (4.52 ms), fp8
        // 8.2 GB (2.44 ms), int4 4.9 GB (1.46 ms).
        let s = decode_batch(1, 1000);
        let t = |q| quantized(h100(), q).unwrap().iteration_seconds(&s);
        let bf16 = t(Quantization::default());
        let (fp8, int4) = (t(weights(WeightFormat::Fp8)), t(weights(WeightFormat::Int4)));
        // The bytes that stay: the LM head (16-bit) and the KV cache read (1000 x 131,072 B).
        let stay = EMBED_AND_HEAD as f64 + 1000.0 * 131_072.0;
        let by_bytes = |wb: f64| (2.0 * LAYERS as f64 + stay) / (wb * LAYERS as f64 + stay);
        let (r8, r4) = (bf16 / fp8, bf16 / int4);
        assert!((1.8..2.0).contains(&r8), "fp8 speed-up {r8}");
        assert!((3.0..3.6).contains(&r4), "int4 speed-up {r4}");
        // Within 1% of the ratio of bytes read (activations, norms and the embedding row are the rest).
        assert!((r8 / by_bytes(1.0) - 1.0).abs() < 0.01, "{r8} vs {}", by_bytes(1.0));
        assert!((r4 / by_bytes(0.53125) - 1.0).abs() < 0.01, "{r4} vs {}", by_bytes(0.53125));
        // Weight-only formats keep the 16-bit peak: a long prefill (compute-bound) barely changes.
        let mut p = BatchShape::default();
        p.add_prefill(4096, 0, true);
        let prefill = |q| quantized(h100(), q).unwrap().iteration_seconds(&p);
        let r = prefill(Quantization::default()) / prefill(weights(WeightFormat::Int4));
        assert!((1.0..1.02).contains(&r), "int4 W4A16 prefill speed-up {r}");
    }

    #[test]
    fn fp8_activations_run_compute_bound_gemms_at_the_fp8_peak() {
        let w8a8 = Quantization { weights: WeightFormat::Fp8, activations: ActivationFormat::Fp8, ..Quantization::default() };
        let (bf16, fp8) = (quantized(h100(), Quantization::default()).unwrap(), quantized(h100(), w8a8).unwrap());
        let mut p = BatchShape::default();
        p.add_prefill(4096, 0, true);
        // Every linear layer is compute-bound at 4096 tokens: 1979 / 989.4 = 2.0002x faster.
        for which in [Op::QkvProj, Op::OProj, Op::MlpGateUp, Op::MlpDown] {
            let (a, b) = (op(&bf16.breakdown(&p), which), op(&fp8.breakdown(&p), which));
            assert!(a.compute_bound && b.compute_bound);
            assert!(close(a.seconds / b.seconds, 1979e12 / 989.4e12), "{which:?}");
            assert_eq!(a.flops, b.flops);
        }
        // Attention stays at the 16-bit peak and the elementwise kernels memory-bound, so the whole
        // prefill gains less: GEMMs 2 x 4096 x 6.98e9 = 57.2 TFLOP (57.8 ms -> 28.9 ms), causal
        // attention 4.4 TFLOP (4.45 ms) and elementwise 25.2 GB (7.53 ms) unchanged: 70.1 / 41.2.
        let r = bf16.iteration_seconds(&p) / fp8.iteration_seconds(&p);
        assert!((1.65..1.75).contains(&r), "W8A8 prefill speed-up {r}");
        assert_eq!(op(&bf16.breakdown(&p), Op::PrefillAttention), op(&fp8.breakdown(&p), Op::PrefillAttention));
        // The engine's GEMM efficiency applies to the FP8 peak as well.
        let half = CostModel::build(&InstanceSpec { quantization: w8a8, ..InstanceSpec::new(llama3_8b(), h100(), Efficiency { gemm_compute: 0.5, ..ideal() }, 1) }).unwrap();
        assert!(close(op(&half.breakdown(&p), Op::MlpDown).seconds, 2.0 * op(&fp8.breakdown(&p), Op::MlpDown).seconds));
        // With a fraction of the FP8 peak of their own (0.6), FP8 GEMMs take 1 / 0.6 of the
        // ideal time; the 16-bit ones keep `gemm_compute` (1.0 here), the LM head among them.
        let own = Efficiency { fp8_gemm_compute: Some(0.6), ..ideal() };
        let slower = CostModel::build(&InstanceSpec { quantization: w8a8, ..InstanceSpec::new(llama3_8b(), h100(), own.clone(), 1) }).unwrap();
        assert!(close(op(&slower.breakdown(&p), Op::MlpDown).seconds, op(&fp8.breakdown(&p), Op::MlpDown).seconds / 0.6));
        assert_eq!(op(&slower.breakdown(&p), Op::LmHead), op(&fp8.breakdown(&p), Op::LmHead));
        let unquantized = CostModel::build(&InstanceSpec::new(llama3_8b(), h100(), own, 1)).unwrap();
        assert_eq!(op(&unquantized.breakdown(&p), Op::MlpDown), op(&bf16.breakdown(&p), Op::MlpDown));
        // The LM head stays 16-bit.
        assert_eq!(op(&bf16.breakdown(&p), Op::LmHead), op(&fp8.breakdown(&p), Op::LmHead));
    }

    #[test]
    fn fp8_kv_cache_doubles_the_blocks_and_halves_decode_attention_bytes() {
        let cfg = MemoryConfig { gpu_memory_utilization: 0.9, block_size: 16 };
        let plan = |q| MemoryPlan::new(&quantized(h100(), q).unwrap(), &cfg, 8192, 256).unwrap();
        let kv8 = Quantization { kv_cache: KvCacheFormat::Fp8, ..Quantization::default() };
        let (base, half) = (plan(Quantization::default()), plan(kv8));
        assert_eq!((base.kv_bytes_per_token, half.kv_bytes_per_token), (131_072, 65_536));
        assert_eq!(base.kv_bytes, half.kv_bytes);
        assert_eq!(half.num_blocks as u64, base.kv_bytes / (16 * 65_536));
        assert!(half.num_blocks.abs_diff(2 * base.num_blocks) <= 1);
        // With FP8 weights too, the blocks also gain the ~6.95 GB the weights freed.
        let both = plan(Quantization { kv_cache: KvCacheFormat::Fp8, ..weights(WeightFormat::Fp8) });
        assert_eq!(base.weight_bytes - both.weight_bytes, LAYERS);
        assert_eq!(both.num_blocks as u64, (base.kv_bytes + LAYERS) / (16 * 65_536));
        // Decode attention reads half the cache: 64 decodes at context 4096 are KV-bound.
        let s = decode_batch(64, 4096);
        let (a, b) = (quantized(h100(), Quantization::default()).unwrap(), quantized(h100(), kv8).unwrap());
        let (da, db) = (op(&a.breakdown(&s), Op::DecodeAttention), op(&b.breakdown(&s), Op::DecodeAttention));
        // Per layer: queries and outputs 2 x 64 x 4096 x 2 B, K and V 2 x 1024 x 64 x 4096 x (2 or 1) B.
        let (qo, kv) = (2.0 * 64.0 * 4096.0 * 2.0, 2.0 * 1024.0 * 64.0 * 4096.0);
        assert!(close(da.bytes, 32.0 * (qo + 2.0 * kv)) && close(db.bytes, 32.0 * (qo + kv)));
        assert!(close(db.seconds, db.bytes / 3.35e12));
        assert_eq!(a.kv_bytes_per_token_whole_model(), 2 * b.kv_bytes_per_token_whole_model());
    }

    #[test]
    fn unsupported_combinations_are_config_errors_naming_the_field() {
        let w8a8 = Quantization { weights: WeightFormat::Fp8, activations: ActivationFormat::Fp8, ..Quantization::default() };
        let e = quantized(a100(), w8a8).unwrap_err();
        assert!(matches!(&e, Error::Config { .. }));
        let msg = e.to_string();
        assert!(msg.contains("quantization.activations") && msg.contains("a100-80gb-sxm") && msg.contains("fp8_peak_flops"), "{msg}");
        // Weight-only formats run on the A100.
        for w in [WeightFormat::Fp8, WeightFormat::Int8, WeightFormat::Int4] {
            assert!(quantized(a100(), weights(w)).is_ok());
        }
        let e = quantized(h100(), Quantization { activations: ActivationFormat::Fp8, ..weights(WeightFormat::Int4) }).unwrap_err();
        assert!(e.to_string().contains("quantization.activations") && e.to_string().contains("weights: int4"), "{e}");
        let e = quantized(h100(), Quantization { group_size: 0, ..weights(WeightFormat::Int4) }).unwrap_err();
        assert!(e.to_string().contains("quantization.group_size"), "{e}");
        let q: Quantization = serde_json::from_str(r#"{"weights": "int4", "kv_cache": "fp8"}"#).unwrap();
        assert_eq!((q.group_size, q.activations), (128, ActivationFormat::Bf16));
        assert!(serde_json::from_str::<Quantization>(r#"{"weights": "nf4"}"#).is_err());
        let e = quantized(GpuSpec { fp8_peak_flops: f64::NAN, ..h100() }, Quantization::default()).unwrap_err();
        assert!(e.to_string().contains("gpu.fp8_peak_flops"), "{e}");
    }

    #[test]
    fn routed_experts_read_quantized_weights_and_the_router_stays_16_bit() {
        let build = |q| CostModel::build(&InstanceSpec { quantization: q, ..InstanceSpec::new(mixtral_8x7b(), h100(), ideal(), 2) }).unwrap();
        let (bf16, fp8) = (build(Quantization::default()), build(weights(WeightFormat::Fp8)));
        // One expert's 3 x 4096 x 14336 weights over tp = 2: 176 MB in bf16, 88 MB in fp8.
        assert!(close(bf16.expert_bytes_per_gpu(), 3.0 * 4096.0 * 14336.0));
        assert!(close(fp8.expert_bytes_per_gpu(), 1.5 * 4096.0 * 14336.0));
        let s = decode_batch(1, 100);
        let (a, b) = (op(&bf16.breakdown(&s), Op::MoeExperts), op(&fp8.breakdown(&s), Op::MoeExperts));
        // Two experts' weights per layer dominate; the 16-bit pair activations stay.
        let acts = 32.0 * 2.0 * (2.0 * 4096.0 + 3.0 * 7168.0) * 2.0;
        assert!(close(a.bytes - acts, 2.0 * (b.bytes - acts)));
        assert_eq!(op(&bf16.breakdown(&s), Op::MoeRouter), op(&fp8.breakdown(&s), Op::MoeRouter));
    }
}
