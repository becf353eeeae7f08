//! Accelerator specifications used by the cost and memory models.

use serde::{Deserialize, Serialize};

/// One accelerator: peak rates and memory, as printed on its datasheet (dense, no sparsity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSpec {
    /// Catalogue name, e.g. `h100-sxm`.
    pub name: String,
    /// Peak dense 16-bit tensor throughput, FLOP/s.
    pub peak_flops: f64,
    /// Peak dense FP8 tensor throughput (FP32 accumulate, no sparsity), FLOP/s; 0 when the GPU has
    /// no FP8 tensor cores (then it cannot run FP8 activations).
    #[serde(default)]
    pub fp8_peak_flops: f64,
    /// HBM (device memory) capacity in bytes.
    pub memory_bytes: u64,
    /// HBM bandwidth in bytes/s.
    pub memory_bandwidth: f64,
    /// Per-direction bandwidth of the GPU-to-GPU link used by tensor parallelism, bytes/s
    /// (NVLink where present, otherwise PCIe).
    pub link_bandwidth: f64,
    /// Latency of one step of a collective on that link, seconds.
    pub link_latency: f64,
    /// Per-direction bandwidth of the GPU's network interface to other nodes (InfiniBand/RoCE),
    /// bytes/s; 0 when the GPU has none (then instances cannot span nodes).
    #[serde(default)]
    pub nic_bandwidth: f64,
    /// Latency of one step over the NIC, seconds.
    #[serde(default = "default_host_latency")]
    pub nic_latency: f64,
    /// Per-direction bandwidth of the GPU's link to host memory (PCIe), bytes/s; 0 when unknown.
    #[serde(default)]
    pub host_link_bandwidth: f64,
    /// Latency of a transfer over the host link, seconds.
    #[serde(default = "default_host_latency")]
    pub host_link_latency: f64,
    /// Rated board power (TDP), watts; 0 leaves power and energy unaccounted.
    #[serde(default)]
    pub tdp_watts: f64,
    /// Power drawn while idle, watts.
    #[serde(default)]
    pub idle_watts: f64,
    /// Fraction of the dynamic power (TDP - idle) drawn by memory-bound kernels; compute-bound
    /// kernels draw all of it.
    #[serde(default = "default_memory_bound_activity")]
    pub memory_bound_activity: f64,
    /// Streaming multiprocessors (or compute units); 0 when unknown.
    #[serde(default)]
    pub sm_count: u32,
}

/// The slowest compute peak accepted, FLOP/s (a 1990s workstation reached this).
pub const MIN_PEAK_FLOPS: f64 = 1e9;
/// The slowest memory or link bandwidth accepted where one is required, bytes/s.
pub const MIN_BANDWIDTH: f64 = 1e6;
/// The longest link latency accepted, seconds.
pub const MAX_LATENCY: f64 = 1.0;

impl GpuSpec {
    /// Checks that the datasheet figures are finite and physically meaningful: peaks and required
    /// bandwidths not absurdly low (they would make one iteration last years), optional ones 0 or
    /// at least [`MIN_BANDWIDTH`], latencies at most [`MAX_LATENCY`], idle power below the TDP.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |field: &str, message: String| Err(crate::error::Error::config(format!("gpu.{field}"), format!("{}: {message}", self.name)));
        if !(self.peak_flops.is_finite() && self.peak_flops >= MIN_PEAK_FLOPS) {
            return bad("peak_flops", format!("must be a finite FLOP/s figure of at least {MIN_PEAK_FLOPS:e}, got {:?}", self.peak_flops));
        }
        if !(self.fp8_peak_flops == 0.0 || (self.fp8_peak_flops.is_finite() && self.fp8_peak_flops >= MIN_PEAK_FLOPS)) {
            return bad("fp8_peak_flops", format!("must be 0 (no FP8 tensor cores) or a finite FLOP/s figure of at least {MIN_PEAK_FLOPS:e}, got {:?}", self.fp8_peak_flops));
        }
        for (field, v, required) in [
            ("memory_bandwidth", self.memory_bandwidth, true),
            ("link_bandwidth", self.link_bandwidth, true),
            ("nic_bandwidth", self.nic_bandwidth, false),
            ("host_link_bandwidth", self.host_link_bandwidth, false),
        ] {
            let ok = v.is_finite() && (v >= MIN_BANDWIDTH || (!required && v == 0.0));
            if !ok {
                let allowed = if required { format!("at least {MIN_BANDWIDTH:e}") } else { format!("0 (none) or at least {MIN_BANDWIDTH:e}") };
                return bad(field, format!("must be a finite bandwidth in bytes/s, {allowed}; got {v:?}"));
            }
        }
        for (field, v) in [("link_latency", self.link_latency), ("nic_latency", self.nic_latency), ("host_link_latency", self.host_link_latency)] {
            if !(0.0..=MAX_LATENCY).contains(&v) {
                return bad(field, format!("must be between 0 and {MAX_LATENCY} s, got {v:?}"));
            }
        }
        if !(self.tdp_watts.is_finite() && self.tdp_watts >= 0.0 && self.idle_watts.is_finite() && self.idle_watts >= 0.0) {
            return bad("tdp_watts", format!("tdp_watts and idle_watts must be finite and non-negative, got {:?} and {:?}", self.tdp_watts, self.idle_watts));
        }
        if self.tdp_watts > 0.0 && self.idle_watts >= self.tdp_watts {
            return bad("idle_watts", format!("must be below tdp_watts ({} W), got {}", self.tdp_watts, self.idle_watts));
        }
        if !(0.0..=1.0).contains(&self.memory_bound_activity) {
            return bad("memory_bound_activity", format!("must be in [0, 1], got {:?}", self.memory_bound_activity));
        }
        Ok(())
    }
}

fn default_host_latency() -> f64 {
    5e-6
}

fn default_memory_bound_activity() -> f64 {
    0.3
}

/// How a power cap stretches kernels: a kernel whose uncapped draw `p` exceeds the cap `c` runs
/// `(p / c)^POWER_CAP_EXPONENT` times longer (clocks drop, and power falls faster than clocks).
/// 0.74 reproduces Splitwise's power-capped H100 profile (prompt phase 1.3x slower at a cap of
/// 70% of TDP, token phase unchanged) and the 10-15% slowdown reported for an H100 capped at 600 W.
pub const POWER_CAP_EXPONENT: f64 = 0.74;

/// The power model of one GPU, optionally capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerModel {
    /// Rated power, watts.
    pub tdp: f64,
    /// Idle power, watts.
    pub idle: f64,
    /// Share of dynamic power drawn by memory-bound work.
    pub memory_activity: f64,
    /// The cap, watts (the TDP when uncapped).
    pub cap: f64,
}

impl PowerModel {
    /// The power model of `gpu` under an optional cap (watts per GPU).
    pub fn new(gpu: &GpuSpec, cap: Option<f64>) -> Self {
        let cap = cap.unwrap_or(gpu.tdp_watts);
        PowerModel { tdp: gpu.tdp_watts, idle: gpu.idle_watts, memory_activity: gpu.memory_bound_activity, cap }
    }

    /// Whether power is modelled at all.
    pub fn enabled(&self) -> bool {
        self.tdp > 0.0
    }

    /// Uncapped draw of a kernel with the given activity (0 = idle, 1 = TDP).
    fn draw(&self, activity: f64) -> f64 {
        self.idle + (self.tdp - self.idle) * activity
    }

    /// Time stretch of compute-bound kernels under the cap.
    pub fn compute_slowdown(&self) -> f64 {
        self.stretch(self.draw(1.0))
    }

    /// Time stretch of memory-bound kernels under the cap.
    pub fn memory_slowdown(&self) -> f64 {
        self.stretch(self.draw(self.memory_activity))
    }

    fn stretch(&self, draw: f64) -> f64 {
        if !self.enabled() || draw <= self.cap || self.cap <= 0.0 {
            1.0
        } else {
            (draw / self.cap).powf(POWER_CAP_EXPONENT)
        }
    }

    /// Average power of a busy period whose share `compute_share` of time is compute-bound.
    pub fn busy_watts(&self, compute_share: f64) -> f64 {
        let a = self.memory_activity + (1.0 - self.memory_activity) * compute_share.clamp(0.0, 1.0);
        self.draw(a).min(self.cap)
    }
}

impl GpuSpec {
    /// The ridge point of the roofline: FLOPs per byte above which work is compute-bound.
    pub fn ridge_intensity(&self) -> f64 {
        self.peak_flops / self.memory_bandwidth
    }
}

/// A processing-in-memory device attached to a GPU's memory: it computes next to the DRAM, with
/// more internal bandwidth than the GPU sees but far less compute (AttAcc's bank-level HBM-PIM,
/// Duplex's Logic-PIM on the HBM logic die).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PimSpec {
    /// Catalogue name.
    pub name: String,
    /// Peak throughput of the PIM units, FLOP/s.
    pub peak_flops: f64,
    /// Internal bandwidth the PIM units see, bytes/s.
    pub internal_bandwidth: f64,
    /// Fraction of peak reached (both compute and bandwidth).
    #[serde(default = "default_pim_efficiency")]
    pub efficiency: f64,
}

fn default_pim_efficiency() -> f64 {
    0.8
}

impl PimSpec {
    /// Seconds the PIM needs for an operator.
    pub fn seconds(&self, flops: f64, bytes: f64) -> f64 {
        (flops / self.peak_flops).max(bytes / self.internal_bandwidth) / self.efficiency
    }
}
