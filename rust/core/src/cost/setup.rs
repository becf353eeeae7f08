//! One instance's description and the validated construction of its cost model.

use super::attention::Attention;
use super::experts::MAX_EXPERT_PAD_ROWS;
use super::CostModel;
use crate::calibration::Efficiency;
use crate::error::{Error, Result};
use crate::hardware::{GpuSpec, PimSpec, PowerModel};
use crate::model::ModelSpec;
use crate::offload::OffloadSpec;
use super::quantization::ActivationFormat;
use super::Quantization;

/// Everything that fixes one instance's iteration cost: the model, the GPU kind and its
/// calibration, how the model is laid out over the GPUs, and what is attached to them.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The model served.
    pub model: ModelSpec,
    /// The GPU kind of every GPU of the instance.
    pub gpu: GpuSpec,
    /// Calibration: fractions of peak reached, overheads.
    pub efficiency: Efficiency,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Pipeline stages.
    pub pp: u32,
    /// Micro-batches per iteration with pipelining (`None`: one per stage).
    pub microbatches: Option<u32>,
    /// Expert-parallel degree (1, or tp) for MoE models.
    pub ep: u32,
    /// GPUs per node: a larger instance crosses nodes over the NICs (`u32::MAX`: one node).
    pub gpus_per_node: u32,
    /// A processing-in-memory device attached to every GPU, if any.
    pub pim: Option<PimSpec>,
    /// Layers whose weights live in host DRAM or on flash, if any.
    pub offload: Option<OffloadSpec>,
    /// The power cap of every GPU, watts, if any.
    pub power_cap_watts: Option<f64>,
    /// Quantization of weights, GEMM activations and the KV cache (default none).
    pub quantization: Quantization,
}

impl InstanceSpec {
    /// `model` on `tp` GPUs of one node: no pipelining, no expert parallelism, nothing attached, uncapped.
    pub fn new(model: ModelSpec, gpu: GpuSpec, efficiency: Efficiency, tp: u32) -> Self {
        InstanceSpec { model, gpu, efficiency, tp, pp: 1, microbatches: None, ep: 1, gpus_per_node: u32::MAX, pim: None, offload: None, power_cap_watts: None, quantization: Quantization::default() }
    }
}

/// The lowest efficiency factor accepted: a kernel reaching under 1% of a peak describes no real
/// engine, and such values make simulated iterations absurdly long.
pub const MIN_EFFICIENCY: f64 = 0.01;
/// The largest fixed cost of one iteration accepted, seconds.
pub const MAX_ITERATION_OVERHEAD: f64 = 10.0;
/// The largest fixed cost per layer per iteration accepted, seconds.
pub const MAX_LAYER_OVERHEAD: f64 = 1.0;

impl CostModel {

    /// The cost model of the instance `spec` describes; fails on a setting that is out of range or
    /// that the model, the GPU or the parallelism cannot take (in that order: the model's sharding
    /// and the calibration, quantization, pipelining, expert parallelism, nodes, PIM, offloading,
    /// power cap).
    pub fn build(spec: &InstanceSpec) -> Result<Self> {
        Self::new(spec.model.clone(), spec.gpu.clone(), spec.efficiency.clone(), spec.tp)?
            .with_quantization(spec.quantization)?
            .with_pipeline(spec.pp, spec.microbatches)?
            .with_expert_parallel(spec.ep)?
            .with_nodes(spec.gpus_per_node)?
            .with_pim(spec.pim.clone())?
            .with_offload(spec.offload.clone())?
            .with_power_cap(spec.power_cap_watts)
    }

    /// A cost model of `model` on `tp` GPUs of one node, the first step of [`CostModel::build`];
    /// fails when `tp` does not divide the attention heads or the MLP.
    pub(super) fn new(model: ModelSpec, gpu: GpuSpec, eff: Efficiency, tp: u32) -> Result<Self> {
        if tp == 0 || !model.num_heads.is_multiple_of(tp) {
            return Err(Error::config(
                "parallelism.tp",
                format!("tp={tp} must be a positive divisor of {}'s {} attention heads", model.name, model.num_heads),
            ));
        }
        if !(1..=8).contains(&model.dtype_bytes) {
            return Err(Error::config("model.dtype_bytes", format!("{}: must be between 1 and 8 bytes per element, got {}", model.name, model.dtype_bytes)));
        }
        if model.first_dense_layers > model.num_layers {
            return Err(Error::config(
                "model.first_dense_layers",
                format!("{} exceeds {}'s {} layers", model.first_dense_layers, model.name, model.num_layers),
            ));
        }
        if model.dense_layers() > 0 && !model.intermediate_size.is_multiple_of(tp) {
            return Err(Error::config(
                "parallelism.tp",
                format!("tp={tp} must divide {}'s MLP size {}", model.name, model.intermediate_size),
            ));
        }
        if model.sliding_window == Some(0) {
            return Err(Error::config("model.sliding_window", format!("{}: the attention window must be at least 1 token", model.name)));
        }
        if let Some(m) = &model.mla {
            if m.kv_lora_rank == 0 || m.qk_head_dim() == 0 || m.v_head_dim == 0 || m.q_lora_rank == Some(0) {
                return Err(Error::config("model.mla", format!("{}: kv_lora_rank, the query/key and value head sizes and q_lora_rank must be positive", model.name)));
            }
        }
        let attention_memory = eff.attention_memory.unwrap_or(eff.memory);
        let elementwise_memory = eff.elementwise_memory.unwrap_or(eff.memory);
        for (name, v) in [
            ("gemm_compute", eff.gemm_compute),
            ("attention_compute", eff.attention_compute),
            ("memory", eff.memory),
            ("attention_memory", attention_memory),
            ("elementwise_memory", elementwise_memory),
            ("moe_dispatch_memory", eff.moe_dispatch_memory.unwrap_or(elementwise_memory)),
            ("collective", eff.collective),
            ("expert_compute", eff.expert_compute.unwrap_or(eff.gemm_compute)),
            ("fp8_gemm_compute", eff.fp8_gemm_compute.unwrap_or(eff.gemm_compute)),
            ("expert_memory", eff.expert_memory.unwrap_or(eff.memory)),
            ("attention_memory_split", eff.attention_memory_split.unwrap_or(attention_memory)),
        ] {
            if !(MIN_EFFICIENCY..=1.0).contains(&v) {
                return Err(Error::config(format!("calibration.{name}"), format!("must be a fraction of peak in [{MIN_EFFICIENCY}, 1], got {v:?}")));
            }
        }
        for (name, v, max) in [
            ("iteration_overhead", eff.iteration_overhead, MAX_ITERATION_OVERHEAD),
            ("layer_overhead", eff.layer_overhead, MAX_LAYER_OVERHEAD),
            ("seq_overhead", eff.seq_overhead.unwrap_or(0.0), MAX_LAYER_OVERHEAD),
            ("token_overhead", eff.token_overhead.unwrap_or(0.0), MAX_LAYER_OVERHEAD),
            ("moe_layer_overhead", eff.moe_layer_overhead.unwrap_or(0.0), MAX_LAYER_OVERHEAD),
        ] {
            if !(0.0..=max).contains(&v) {
                return Err(Error::config(format!("calibration.{name}"), format!("must be between 0 and {max} seconds, got {v:?}")));
            }
        }
        gpu.validate()?;
        if let Some(v) = eff.time_scale {
            if !(0.1..=10.0).contains(&v) {
                return Err(Error::config("calibration.time_scale", format!("must be in [0.1, 10], got {v:?}")));
            }
        }
        if let Some(v) = eff.attention_cta {
            if !(v > 0.0 && v <= 4.0) {
                return Err(Error::config("calibration.attention_cta", format!("must be in (0, 4], got {v:?}")));
            }
        }
        for (name, v) in [("gemm_ridge_exponent", eff.gemm_ridge_exponent), ("expert_ridge_exponent", eff.expert_ridge_exponent)] {
            if let Some(v) = v {
                if v.is_nan() || v < 1.0 {
                    return Err(Error::config(format!("calibration.{name}"), format!("must be at least 1, got {v:?}")));
                }
            }
        }
        if let Some(v) = eff.expert_pad_rows {
            if !(0.0..=MAX_EXPERT_PAD_ROWS).contains(&v) {
                return Err(Error::config("calibration.expert_pad_rows", format!("must be between 0 and {MAX_EXPERT_PAD_ROWS} rows, got {v:?}")));
            }
        }
        let t = tp as f64;
        let power = PowerModel::new(&gpu, None);
        Ok(CostModel {
            pp: 1,
            microbatches: 1,
            gpus_per_node: u32::MAX,
            pim: None,
            offload: None,
            expert_hbm_saved: 0,
            power,
            slow_compute: 1.0,
            slow_memory: 1.0,
            attn: match &model.mla {
                None => Attention::Gqa { q: (model.num_heads * model.head_dim) as f64 / t, kv: (model.kv_heads_per_gpu(tp) * model.head_dim) as f64 },
                Some(m) => Attention::Mla {
                    heads: model.num_heads as f64 / t,
                    nope: m.qk_nope_head_dim as f64,
                    rope: m.qk_rope_head_dim as f64,
                    v: m.v_head_dim as f64,
                    lora: m.kv_lora_rank as f64,
                    q_lora: m.q_lora_rank.map(f64::from),
                },
            },
            dense_width: model.intermediate_size as f64 / t,
            shared_width: (model.num_shared_experts * model.shared_expert_intermediate_size) as f64 / t,
            moe_act_width: (model.experts_per_token * model.moe_intermediate_size + model.num_shared_experts * model.shared_expert_intermediate_size) as f64 / t,
            dense_share: model.dense_layers() as f64 / model.num_layers.max(1) as f64,
            moe_share: model.moe_layers() as f64 / model.num_layers.max(1) as f64,
            ep: 1,
            vocab_shard: model.vocab_size as f64 / t,
            quant: Quantization::default(),
            b: model.dtype_bytes as f64,
            wb: model.dtype_bytes as f64,
            xb: model.dtype_bytes as f64,
            kvb: model.dtype_bytes as f64,
            h: model.hidden_size as f64,
            layers: model.num_layers as f64,
            stage_layers: model.num_layers as f64,
            stage_reciprocal: Some(1.0),
            flops_gemm: gpu.peak_flops * eff.gemm_compute,
            flops_16bit: gpu.peak_flops * eff.gemm_compute,
            flops_attn: gpu.peak_flops * eff.attention_compute,
            bw: gpu.memory_bandwidth * eff.memory,
            bw_attn: gpu.memory_bandwidth * eff.attention_memory.unwrap_or(eff.memory),
            bw_elem: gpu.memory_bandwidth * eff.elementwise_memory.unwrap_or(eff.memory),
            bw_dispatch: eff.moe_dispatch_memory.map(|f| gpu.memory_bandwidth * f),
            flops_expert: gpu.peak_flops * eff.expert_compute.unwrap_or(eff.gemm_compute),
            bw_expert: gpu.memory_bandwidth * eff.expert_memory.unwrap_or(eff.memory),
            model,
            gpu,
            eff,
            tp,
        })
    }

    /// Quantizes the decoder layers' weights, the GEMMs' input activations and the KV cache (see
    /// [`Quantization`]); fails when the combination or the GPU cannot run it.
    pub(super) fn with_quantization(mut self, q: Quantization) -> Result<Self> {
        q.validate(&self.gpu)?;
        let native = self.model.dtype_bytes as f64;
        self.quant = q;
        self.wb = q.weight_bytes_per_param(native);
        self.xb = q.gemm_input_bytes(native);
        self.kvb = q.kv_bytes_per_element(native);
        let peak = q.linear_peak_flops(&self.gpu);
        // FP8 GEMMs reach their own fraction of their own peak; grouped expert GEMMs keep theirs.
        let gemm = match q.activations {
            ActivationFormat::Fp8 => self.eff.fp8_gemm_compute.unwrap_or(self.eff.gemm_compute),
            ActivationFormat::Bf16 => self.eff.gemm_compute,
        };
        self.flops_gemm = peak * gemm;
        self.flops_expert = peak * self.eff.expert_compute.unwrap_or(gemm);
        Ok(self)
    }

    /// Caps each GPU's power at `watts`: kernels whose draw would exceed it run longer.
    pub(super) fn with_power_cap(mut self, watts: Option<f64>) -> Result<Self> {
        if let Some(w) = watts {
            if w.is_nan() || w <= 0.0 {
                return Err(Error::config("power_cap_watts", format!("must be positive, got {w:?}")));
            }
            if self.gpu.tdp_watts <= 0.0 {
                return Err(Error::config("power_cap_watts", format!("{} has no tdp_watts, so it cannot be capped", self.gpu.name)));
            }
            if !w.is_finite() || w <= self.gpu.idle_watts {
                return Err(Error::config("power_cap_watts", format!("must be above {}'s idle power of {} W (a GPU cannot run below idle), got {w:?}", self.gpu.name, self.gpu.idle_watts)));
            }
            if w > self.gpu.tdp_watts {
                // Such a cap changes nothing, but power budgets (place, designs) would count it.
                return Err(Error::config("power_cap_watts", format!("must be at most {}'s TDP of {} W (a cap above it limits nothing: leave it unset), got {w:?}", self.gpu.name, self.gpu.tdp_watts)));
            }
        }
        self.power = PowerModel::new(&self.gpu, watts);
        if let Some(w) = watts {
            if self.power.compute_clock() < crate::hardware::MIN_CAPPED_CLOCK {
                let lowest = self.power.lowest_cap();
                return Err(Error::config("power_cap_watts", format!(
                    "{w:?} W would clock {}'s compute-bound kernels at {:.1}% of their maximum, below the lowest SM clock GPUs run at (~{:.0}%): the lowest cap this GPU's power model accepts is {:.0} W",
                    self.gpu.name, 100.0 * self.power.compute_clock(), 100.0 * crate::hardware::MIN_CAPPED_CLOCK, lowest.ceil())));
            }
        }
        self.slow_compute = self.power.compute_slowdown();
        self.slow_memory = self.power.memory_slowdown();
        Ok(self)
    }

    /// Splits the layers over `pp` pipeline stages, each iteration's batch into `microbatches`
    /// micro-batches (vLLM-style: one per stage when `None`).
    pub(super) fn with_pipeline(mut self, pp: u32, microbatches: Option<u32>) -> Result<Self> {
        if pp == 0 || pp > self.model.num_layers {
            return Err(Error::config("parallelism.pp", format!("pp={pp} must be between 1 and {}'s {} layers", self.model.name, self.model.num_layers)));
        }
        let m = microbatches.unwrap_or(pp);
        if m == 0 {
            return Err(Error::config("parallelism.microbatches", "must be at least 1"));
        }
        self.pp = pp;
        self.stage_layers = super::roofline::ceil(self.layers / pp as f64);
        self.stage_reciprocal = pp.is_power_of_two().then(|| 1.0 / pp as f64);
        self.microbatches = if pp == 1 { 1 } else { m };
        Ok(self)
    }

    /// Places the instance on nodes of `gpus_per_node` GPUs: a tensor-parallel group larger than a
    /// node runs its collectives over the NICs, and pipeline stages on different nodes send over them.
    pub(super) fn with_nodes(mut self, gpus_per_node: u32) -> Result<Self> {
        if gpus_per_node == 0 {
            return Err(Error::config("gpus_per_node", "must be at least 1"));
        }
        self.gpus_per_node = gpus_per_node;
        if self.gpus() > gpus_per_node && self.gpu.nic_bandwidth <= 0.0 {
            return Err(Error::config(
                "parallelism",
                format!("tp x pp = {} GPUs spans nodes of {gpus_per_node}, but {} has no nic_bandwidth", self.gpus(), self.gpu.name),
            ));
        }
        Ok(self)
    }

    /// Attaches a PIM device to every GPU: each layer operator runs on the device that finishes
    /// it sooner (so low-Op/B work such as decode attention moves to the PIM), and decode attention
    /// on the PIM overlaps prefill attention on the GPU.
    pub(super) fn with_pim(mut self, pim: Option<PimSpec>) -> Result<Self> {
        if let Some(p) = &pim {
            use crate::hardware::{MAX_BANDWIDTH, MAX_PEAK_FLOPS, MIN_BANDWIDTH, MIN_PEAK_FLOPS};
            if !(MIN_PEAK_FLOPS..=MAX_PEAK_FLOPS).contains(&p.peak_flops)
                || !(MIN_BANDWIDTH..=MAX_BANDWIDTH).contains(&p.internal_bandwidth)
                || !(0.01..=1.0).contains(&p.efficiency)
            {
                return Err(Error::config(
                    "pim",
                    format!(
                        "{}: peak_flops must be between {MIN_PEAK_FLOPS:e} and {MAX_PEAK_FLOPS:e} FLOP/s, internal_bandwidth between {MIN_BANDWIDTH:e} and {MAX_BANDWIDTH:e} bytes/s, efficiency in [0.01, 1]; got {:?}, {:?}, {:?}",
                        p.name, p.peak_flops, p.internal_bandwidth, p.efficiency
                    ),
                ));
            }
        }
        self.pim = pim;
        Ok(self)
    }

    /// Keeps some layers' weights in host DRAM or on flash and streams them in (see [`crate::offload`]).
    pub(super) fn with_offload(mut self, offload: Option<OffloadSpec>) -> Result<Self> {
        if let Some(o) = &offload {
            o.validate()?;
            if self.pp > 1 {
                return Err(Error::config("offload", "weight offloading with pipeline parallelism is not modelled yet; use pp = 1"));
            }
            if self.model.moe_layers() > 0 {
                // The stream carries dense FFN neurons; a MoE layer's routed experts are fetched
                // by the tokens that pick them, which the expert runtime models.
                return Err(Error::config(
                    "offload",
                    format!("{} has MoE layers: whole-layer offloading streams dense FFNs only; offload its routed experts with experts: {{placement: dram}} (or flash) instead (docs/moe.md)", self.model.name),
                ));
            }
            if self.gpu.host_link_bandwidth <= 0.0 {
                return Err(Error::config("offload", format!("offloading needs the GPU's host_link_bandwidth, which {} does not set", self.gpu.name)));
            }
        }
        self.offload = offload;
        if let Some(o) = &self.offload {
            let stored = self.offloaded_layers() as u64 * self.offloaded_layer_bytes_per_gpu();
            if stored > o.capacity_bytes() {
                return Err(Error::Capacity { what: format!("{} weights offloaded to {:?} per GPU", self.model.name, o.tier), needed_bytes: stored, available_bytes: o.capacity_bytes() });
            }
        }
        Ok(self)
    }

    /// Spreads each MoE layer's experts over the `ep` GPUs of the tensor-parallel group (whole
    /// experts per GPU) instead of sharding every expert; tokens reach their experts' GPUs by an
    /// all-to-all and come back by another. `ep` must be 1 or equal `tp`.
    pub(super) fn with_expert_parallel(mut self, ep: u32) -> Result<Self> {
        if ep > 1 {
            if !self.model.is_moe() {
                return Err(Error::config("parallelism.ep", format!("ep={ep} needs a mixture-of-experts model; {} is dense", self.model.name)));
            }
            if ep != self.tp {
                return Err(Error::config("parallelism.ep", format!("ep={ep} must equal tp={} (experts spread over the tensor-parallel GPUs)", self.tp)));
            }
            if !self.model.num_experts.is_multiple_of(ep) {
                return Err(Error::config("parallelism.ep", format!("ep={ep} must divide {}'s {} experts", self.model.name, self.model.num_experts)));
            }
        }
        self.ep = ep.max(1);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;
    use crate::error::Error;

    #[test]
    fn bad_mla_or_dense_layer_configs_are_errors() {
        let mut m = deepseek_v2_lite();
        m.first_dense_layers = 28;
        assert!(matches!(CostModel::new(m, h100(), ideal(), 1).unwrap_err(), Error::Config { .. }));
        let mut m = deepseek_v2_lite();
        m.intermediate_size = 10945;
        let e = CostModel::new(m, h100(), ideal(), 2).unwrap_err();
        assert!(e.to_string().contains("MLP size 10945"), "{e}");
        let mut m = deepseek_v2_lite();
        m.mla.as_mut().unwrap().kv_lora_rank = 0;
        assert!(CostModel::new(m, h100(), ideal(), 1).is_err());
    }

    #[test]
    fn bad_tp_is_a_config_error() {
        let e = CostModel::new(llama3_8b(), h100(), ideal(), 3).unwrap_err();
        assert!(matches!(e, Error::Config { .. }));
        assert!(e.to_string().contains("tp=3"));
    }

    #[test]
    fn build_runs_every_step_of_the_description() {
        let spec = InstanceSpec { pp: 2, microbatches: Some(4), gpus_per_node: 2, power_cap_watts: Some(500.0), ..InstanceSpec::new(llama2_70b(), h100(), ideal(), 2) };
        let built = CostModel::build(&spec).unwrap();
        let chained = CostModel::new(llama2_70b(), h100(), ideal(), 2).unwrap().with_pipeline(2, Some(4)).unwrap().with_nodes(2).unwrap().with_power_cap(Some(500.0)).unwrap();
        let mut s = BatchShape::default();
        s.add_prefill(512, 0, true);
        for _ in 0..16 {
            s.add_decode(1000);
        }
        assert_eq!(built.breakdown(&s), chained.breakdown(&s));
        assert_eq!((built.tp(), built.pp(), built.nodes()), (2, 2, 2));
        // Every step validates its part of the description.
        assert!(CostModel::build(&InstanceSpec { pp: 0, ..spec.clone() }).is_err());
        assert!(CostModel::build(&InstanceSpec { ep: 2, ..spec.clone() }).is_err(), "a dense model has no experts to spread");
        assert!(CostModel::build(&InstanceSpec { gpus_per_node: 0, ..spec.clone() }).is_err());
        assert!(CostModel::build(&InstanceSpec { power_cap_watts: Some(10.0), ..spec.clone() }).is_err());
        let above_tdp = CostModel::build(&InstanceSpec { power_cap_watts: Some(spec.gpu.tdp_watts + 1.0), ..spec.clone() }).err().expect("a cap above TDP is refused");
        assert!(above_tdp.to_string().contains("at most"), "{above_tdp}");
        assert!(CostModel::build(&InstanceSpec { power_cap_watts: Some(spec.gpu.tdp_watts), ..spec.clone() }).is_ok());
        // The lowest cap leaves compute-bound kernels 15% of the clock: idle + (0.3 * 0.15 + 0.7 *
        // 0.15^1.6) * (TDP - idle) = 70 + 0.07873 * 630 = 119.6 W on the H100 (70.001 W ran a
        // 2000-token prefill for hours of simulated time).
        let lowest = PowerModel::new(&spec.gpu, Some(700.0)).lowest_cap();
        assert!((lowest - (70.0 + (0.3 * 0.15 + 0.7 * 0.15f64.powf(1.6)) * 630.0)).abs() < 1e-9 && (119.0..120.0).contains(&lowest), "{lowest}");
        let near_idle = CostModel::build(&InstanceSpec { power_cap_watts: Some(70.001), ..spec.clone() }).err().expect("a cap just above idle is refused");
        assert!(near_idle.to_string().contains("the lowest cap this GPU's power model accepts is 120 W"), "{near_idle}");
        assert!(CostModel::build(&InstanceSpec { power_cap_watts: Some(119.5), ..spec.clone() }).is_err());
        assert!(CostModel::build(&InstanceSpec { power_cap_watts: Some(119.7), ..spec.clone() }).is_ok());
        let pim = PimSpec { name: "p".into(), peak_flops: 1e12, internal_bandwidth: 1e12, efficiency: 0.0 };
        assert!(CostModel::build(&InstanceSpec { pim: Some(pim), ..spec }).is_err());
    }
}
