//! Test fixtures of the cost model: GPUs, an ideal calibration, and lookups into a breakdown.

use super::{Op, OpCost};
use crate::calibration::Efficiency;
use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};

/// An H100 SXM.
pub(super) fn h100() -> GpuSpec {
    GpuSpec { name: "h100-sxm".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes: 80_000_000_000, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 }
}

/// An A100 80GB SXM.
pub(super) fn a100() -> GpuSpec {
    GpuSpec { name: "a100-80gb-sxm".into(), peak_flops: 312e12, fp8_peak_flops: 0.0, memory_bytes: 80_000_000_000, memory_bandwidth: 2.039e12, link_bandwidth: 300e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 400.0, idle_watts: 50.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 108 }
}

/// Peak rates, no overheads: the cost is the pure roofline, easy to compute by hand.
pub(super) fn ideal() -> Efficiency {
    Efficiency { gemm_compute: 1.0, attention_compute: 1.0, memory: 1.0, attention_memory: None, elementwise_memory: None, collective: 1.0, iteration_overhead: 0.0, layer_overhead: 0.0, attention_cta: None, gemm_ridge_exponent: None, prefill_pad_tokens: None, ..Default::default() }
}

/// The cost of `which` in a breakdown that has it.
pub(super) fn op(costs: &[OpCost], which: Op) -> OpCost {
    *costs.iter().find(|c| c.op == which).unwrap()
}

/// Equal to within 1e-9 relative.
pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1e-12)
}

/// The FLOPs and bytes of a GEMM as the cost model charges it (bf16).
pub(super) fn gemm(t: f64, k: f64, n: f64) -> (f64, f64) {
    (2.0 * t * k * n, (k * n + t * k + t * n) * 2.0)
}
