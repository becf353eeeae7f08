//! How an instance's GPU memory divides into weights, activations and the KV cache.

use crate::cost::CostModel;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Memory settings of an instance (vLLM's `gpu_memory_utilization` and `block_size`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Fraction of each GPU's memory the engine may use.
    pub gpu_memory_utilization: f64,
    /// Tokens per KV block.
    pub block_size: u32,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { gpu_memory_utilization: 0.9, block_size: 16 }
    }
}

/// The memory budget of one GPU of an instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Bytes the engine may use (capacity x utilisation).
    pub usable_bytes: u64,
    /// Weight bytes per GPU.
    pub weight_bytes: u64,
    /// Bytes reserved for activations of the largest iteration.
    pub activation_bytes: u64,
    /// Bytes left for the KV cache.
    pub kv_bytes: u64,
    /// KV bytes per token per GPU.
    pub kv_bytes_per_token: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// Number of KV blocks.
    pub num_blocks: u32,
}

impl MemoryPlan {
    /// Plans memory for `cost`'s model and GPU, reserving activations for iterations of up to
    /// `max_tokens` tokens of which `max_seqs` sample; fails with the memory needed and available
    /// when not even one KV block fits.
    pub fn new(cost: &CostModel, cfg: &MemoryConfig, max_tokens: u64, max_seqs: u64) -> Result<Self> {
        if !(cfg.gpu_memory_utilization > 0.0 && cfg.gpu_memory_utilization <= 1.0) {
            return Err(Error::config("memory.gpu_memory_utilization", format!("must be in (0, 1], got {}", cfg.gpu_memory_utilization)));
        }
        if cfg.block_size == 0 {
            return Err(Error::config("memory.block_size", "must be at least 1"));
        }
        let tp = cost.tp();
        let usable = (cost.gpu().memory_bytes as f64 * cfg.gpu_memory_utilization) as u64;
        let weight = cost.weight_bytes_per_gpu();
        let activation = cost.activation_bytes(max_tokens, max_seqs.min(max_tokens));
        let per_token = cost.kv_bytes_per_token_per_gpu();
        let block_bytes = per_token * cfg.block_size as u64;
        let needed = weight + activation + block_bytes;
        if needed > usable {
            return Err(Error::Capacity {
                what: format!(
                    "{} on {} x{}{} (weights {:.2} GiB + activations {:.2} GiB + one KV block, per GPU)",
                    cost.model().name,
                    cost.gpu().name,
                    tp,
                    if cost.pp() > 1 { format!(" x pp{}", cost.pp()) } else { String::new() },
                    weight as f64 / (1u64 << 30) as f64,
                    activation as f64 / (1u64 << 30) as f64
                ),
                needed_bytes: needed,
                available_bytes: usable,
            });
        }
        let kv = usable - weight - activation;
        let blocks = (kv / block_bytes).min(u32::MAX as u64) as u32;
        Ok(MemoryPlan { usable_bytes: usable, weight_bytes: weight, activation_bytes: activation, kv_bytes: kv, kv_bytes_per_token: per_token, block_size: cfg.block_size, num_blocks: blocks })
    }

    /// Tokens the KV cache holds.
    pub fn kv_tokens(&self) -> u64 {
        self.num_blocks as u64 * self.block_size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibration::Efficiency;
    use crate::cost::InstanceSpec;
    use crate::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
    use crate::model::fixtures::llama3_8b;

    fn gpu(memory_bytes: u64) -> GpuSpec {
        GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 }
    }

    fn cost(memory_bytes: u64) -> CostModel {
        CostModel::build(&InstanceSpec::new(llama3_8b(), gpu(memory_bytes), Efficiency::default(), 1)).unwrap()
    }

    /// Llama 3 8B caches K and V of 8 heads of 128 bf16 values in each of 32 layers.
    const KV_BYTES_PER_TOKEN: u64 = 2 * 32 * 8 * 128 * 2;

    #[test]
    fn kv_blocks_are_what_is_left_after_weights_and_activations() {
        let c = cost(80_000_000_000);
        let plan = MemoryPlan::new(&c, &MemoryConfig { gpu_memory_utilization: 0.9, block_size: 16 }, 8192, 256).unwrap();
        assert_eq!(plan.usable_bytes, 72_000_000_000);
        assert_eq!(plan.kv_bytes_per_token, KV_BYTES_PER_TOKEN);
        assert_eq!(plan.weight_bytes, llama3_8b().weight_bytes(), "one GPU holds every weight");
        assert_eq!(plan.activation_bytes, c.activation_bytes(8192, 256));
        assert_eq!(plan.kv_bytes, plan.usable_bytes - plan.weight_bytes - plan.activation_bytes);
        assert_eq!(plan.num_blocks as u64, plan.kv_bytes / (16 * KV_BYTES_PER_TOKEN));
        assert_eq!(plan.kv_tokens(), plan.num_blocks as u64 * 16);
    }

    #[test]
    fn a_partial_block_does_not_count() {
        let probe = cost(80_000_000_000);
        let fixed = probe.weight_bytes_per_gpu() + probe.activation_bytes(2048, 64);
        let block = 16 * KV_BYTES_PER_TOKEN;
        // Room for ten blocks and a half, all of the memory usable.
        let c = cost(fixed + 10 * block + block / 2);
        let plan = MemoryPlan::new(&c, &MemoryConfig { gpu_memory_utilization: 1.0, block_size: 16 }, 2048, 64).unwrap();
        assert_eq!(plan.num_blocks, 10);
        assert_eq!(plan.kv_bytes, 10 * block + block / 2);
        // Blocks of 32 tokens: five whole ones.
        assert_eq!(MemoryPlan::new(&c, &MemoryConfig { gpu_memory_utilization: 1.0, block_size: 32 }, 2048, 64).unwrap().num_blocks, 5);
        // Activations count sampled sequences up to the tokens: 64 of 2048 here, 16 of 16 below.
        assert_eq!(MemoryPlan::new(&probe, &MemoryConfig::default(), 16, 256).unwrap().activation_bytes, probe.activation_bytes(16, 16));
    }

    #[test]
    fn not_even_one_block_is_a_capacity_error() {
        let probe = cost(80_000_000_000);
        let fixed = probe.weight_bytes_per_gpu() + probe.activation_bytes(2048, 64);
        let block = 16 * KV_BYTES_PER_TOKEN;
        let c = cost(fixed + block - 1);
        match MemoryPlan::new(&c, &MemoryConfig { gpu_memory_utilization: 1.0, block_size: 16 }, 2048, 64) {
            Err(Error::Capacity { needed_bytes, available_bytes, .. }) => assert_eq!((needed_bytes, available_bytes), (fixed + block, fixed + block - 1)),
            other => panic!("expected a capacity error, got {other:?}"),
        }
        assert_eq!(MemoryPlan::new(&cost(fixed + block), &MemoryConfig { gpu_memory_utilization: 1.0, block_size: 16 }, 2048, 64).unwrap().num_blocks, 1);
    }

    #[test]
    fn settings_out_of_range_are_config_errors() {
        let c = cost(80_000_000_000);
        for (util, block, path) in [(0.0, 16, "memory.gpu_memory_utilization"), (1.5, 16, "memory.gpu_memory_utilization"), (f64::NAN, 16, "memory.gpu_memory_utilization"), (0.9, 0, "memory.block_size")] {
            match MemoryPlan::new(&c, &MemoryConfig { gpu_memory_utilization: util, block_size: block }, 2048, 64) {
                Err(Error::Config { path: p, .. }) => assert_eq!(p, path),
                other => panic!("expected a config error at {path}, got {other:?}"),
            }
        }
    }
}
