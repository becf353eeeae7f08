//! Test fixtures: catalogue models' shapes, written from their Hugging Face config.json.

use super::{MlaSpec, MlpKind, ModelSpec};

/// Llama-3-8B (`meta-llama/Meta-Llama-3-8B`).
pub fn llama3_8b() -> ModelSpec {
    ModelSpec {
        name: "llama-3-8b".into(),
        num_layers: 32,
        hidden_size: 4096,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        intermediate_size: 14336,
        vocab_size: 128256,
        max_position_embeddings: 8192,
        tie_word_embeddings: false,
        dtype_bytes: 2,
        ..Default::default()
    }
}

/// Mixtral-8x7B (`mistralai/Mixtral-8x7B-v0.1`): 8 experts, top-2.
pub fn mixtral_8x7b() -> ModelSpec {
    ModelSpec {
        name: "mixtral-8x7b".into(),
        num_layers: 32,
        hidden_size: 4096,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        intermediate_size: 14336,
        vocab_size: 32000,
        max_position_embeddings: 32768,
        tie_word_embeddings: false,
        dtype_bytes: 2,
        num_experts: 8,
        experts_per_token: 2,
        moe_intermediate_size: 14336,
        ..Default::default()
    }
}

/// Llama-2-70B (`meta-llama/Llama-2-70b-hf`).
pub fn llama2_70b() -> ModelSpec {
    ModelSpec {
        name: "llama-2-70b".into(),
        num_layers: 80,
        hidden_size: 8192,
        num_heads: 64,
        num_kv_heads: 8,
        head_dim: 128,
        intermediate_size: 28672,
        vocab_size: 32000,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        dtype_bytes: 2,
        ..Default::default()
    }
}

/// Llama-2-7B (`meta-llama/Llama-2-7b-hf`).
pub fn llama2_7b() -> ModelSpec {
    ModelSpec {
        name: "llama-2-7b".into(),
        num_layers: 32,
        hidden_size: 4096,
        num_heads: 32,
        num_kv_heads: 32,
        head_dim: 128,
        intermediate_size: 11008,
        vocab_size: 32000,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        dtype_bytes: 2,
        ..Default::default()
    }
}

/// DeepSeek-V2-Lite (`deepseek-ai/DeepSeek-V2-Lite` config.json): MLA without a query latent,
/// 64 routed experts top-6 plus 2 shared, and a dense first layer.
pub fn deepseek_v2_lite() -> ModelSpec {
    ModelSpec {
        name: "deepseek-v2-lite".into(),
        num_layers: 27,
        hidden_size: 2048,
        num_heads: 16,
        num_kv_heads: 16,
        head_dim: 128,
        intermediate_size: 10944,
        vocab_size: 102400,
        max_position_embeddings: 163840,
        tie_word_embeddings: false,
        dtype_bytes: 2,
        num_experts: 64,
        experts_per_token: 6,
        moe_intermediate_size: 1408,
        num_shared_experts: 2,
        shared_expert_intermediate_size: 1408,
        first_dense_layers: 1,
        mla: Some(MlaSpec { q_lora_rank: None, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 }),
        ..Default::default()
    }
}

/// DeepSeek-V3 (`deepseek-ai/DeepSeek-V3` config.json): MLA with a query latent, three dense
/// layers, then 256 routed experts (top-8) and one shared expert per layer; one MTP module.
pub fn deepseek_v3() -> ModelSpec {
    ModelSpec {
        name: "deepseek-v3".into(),
        num_layers: 61,
        hidden_size: 7168,
        num_heads: 128,
        num_kv_heads: 128,
        head_dim: 128,
        intermediate_size: 18432,
        vocab_size: 129280,
        max_position_embeddings: 163840,
        dtype_bytes: 2,
        num_experts: 256,
        experts_per_token: 8,
        moe_intermediate_size: 2048,
        num_shared_experts: 1,
        shared_expert_intermediate_size: 2048,
        first_dense_layers: 3,
        mla: Some(MlaSpec { q_lora_rank: Some(1536), kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 }),
        mtp_layers: 1,
        ..Default::default()
    }
}

/// OPT-66B (`facebook/opt-66b` config.json): plain ReLU MLPs, multi-head attention, tied
/// embeddings.
pub fn opt_66b() -> ModelSpec {
    ModelSpec {
        name: "opt-66b".into(),
        num_layers: 64,
        hidden_size: 9216,
        num_heads: 72,
        num_kv_heads: 72,
        head_dim: 128,
        intermediate_size: 36864,
        vocab_size: 50272,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        dtype_bytes: 2,
        mlp: MlpKind::Plain,
        ..Default::default()
    }
}

/// Mistral-7B v0.1 (`mistralai/Mistral-7B-v0.1` config.json): a 4096-token sliding window.
pub fn mistral_7b() -> ModelSpec {
    ModelSpec { name: "mistral-7b".into(), vocab_size: 32000, max_position_embeddings: 32768, sliding_window: Some(4096), ..llama3_8b() }
}
