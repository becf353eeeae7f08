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
    /// HBM (device memory) capacity in bytes.
    pub memory_bytes: u64,
    /// HBM bandwidth in bytes/s.
    pub memory_bandwidth: f64,
    /// Per-direction bandwidth of the GPU-to-GPU link used by tensor parallelism, bytes/s
    /// (NVLink where present, otherwise PCIe).
    pub link_bandwidth: f64,
    /// Latency of one step of a collective on that link, seconds.
    pub link_latency: f64,
}

impl GpuSpec {
    /// The ridge point of the roofline: FLOPs per byte above which work is compute-bound.
    pub fn ridge_intensity(&self) -> f64 {
        self.peak_flops / self.memory_bandwidth
    }
}
