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
