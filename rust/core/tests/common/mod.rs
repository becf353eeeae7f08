//! Fixtures shared by the core's integration tests: one Llama-3-8B on one H100 pool, and the run
//! configuration around it. Each test file adjusts the returned structs for its case.

use fleetwise_core::calibration::Efficiency;
use fleetwise_core::hardware::{GpuSpec, DEFAULT_DVFS_EXPONENT};
use fleetwise_core::memory::MemoryConfig;
use fleetwise_core::model::ModelSpec;
use fleetwise_core::router::RouterConfig;
use fleetwise_core::scheduler::SchedulerConfig;
use fleetwise_core::sim::{Parallelism, PoolConfig, SimConfig, Workload};

/// Llama-3-8B in bf16, as the catalogue describes it.
pub fn model() -> ModelSpec {
    ModelSpec { name: "llama-3-8b".into(), num_layers: 32, hidden_size: 4096, num_heads: 32, num_kv_heads: 8, head_dim: 128, intermediate_size: 14336, vocab_size: 128256, max_position_embeddings: 8192, tie_word_embeddings: false, dtype_bytes: 2, ..Default::default() }
}

/// An H100 SXM datasheet with `memory_bytes` of HBM (80 GB on the real part).
pub fn gpu(memory_bytes: u64) -> GpuSpec {
    GpuSpec { name: "h100".into(), peak_flops: 989.4e12, fp8_peak_flops: 1979e12, memory_bytes, memory_bandwidth: 3.35e12, link_bandwidth: 450e9, link_latency: 2e-6, nic_bandwidth: 50e9, nic_latency: 5e-6, host_link_bandwidth: 64e9, host_link_latency: 5e-6, tdp_watts: 700.0, idle_watts: 70.0, memory_bound_activity: 0.3, dvfs_exponent: DEFAULT_DVFS_EXPONENT, sm_count: 132 }
}

/// A pool named `main` of `count` single-GPU instances of [`model`] on `gpu`: default calibration
/// and memory, vLLM scheduling (64 sequences, 8192 batched tokens, recompute preemption, 4 GiB of
/// swap space), no power cap, no prefix caching, no disaggregation, offload or expert cache.
pub fn pool(count: u32, gpu: GpuSpec) -> PoolConfig {
    PoolConfig {
        name: "main".into(),
        count,
        gpu,
        model: model(),
        parallelism: Parallelism::default(),
        calibration: Efficiency::default(),
        memory: MemoryConfig::default(),
        scheduler: SchedulerConfig::Vllm { max_num_seqs: 64, max_num_batched_tokens: 8192, preemption_mode: Default::default(), swap_space_gb: 4.0 },
        power_cap_watts: None,
        prefix_caching: false,
        role: Default::default(),
        kv_transfer: Default::default(),
        kv_link: Default::default(),
        kv_transfer_latency: fleetwise_core::sim::DEFAULT_KV_TRANSFER_LATENCY,
        pim: None,
        offload: None,
        quantization: Default::default(),
        speculative: None,
        experts: None,
    }
}

/// A run of `pools` behind `router`, seed 1, recording the iteration log if `record_iterations`.
pub fn sim_config(pools: Vec<PoolConfig>, router: RouterConfig, record_iterations: bool) -> SimConfig {
    SimConfig { seed: 1, pools, router, record_iterations, hash_block_tokens: None, mixed_pool: None }
}

/// A deterministic bursty workload from an LCG seeded with `seed`: `n` requests, some arriving
/// together (gaps of 0-3 x up to 20 ms), prompts of 20-3019 tokens, outputs of 1-300.
#[allow(dead_code)] // not every test file uses it
pub fn bursty_workload(n: usize, seed: u64) -> Workload {
    let mut x = seed;
    let mut next = |m: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % m
    };
    let mut w = Workload::default();
    let mut t = 0;
    for _ in 0..n {
        t += next(4) * next(20_000_000);
        w.arrival.push(t);
        w.prompt.push(20 + next(3000) as u32);
        w.output.push(1 + next(300) as u32);
    }
    w
}
