//! Dense decoder-only transformer shapes (Llama-style: RMSNorm, RoPE, GQA, gated SiLU MLP).

use serde::{Deserialize, Serialize};

/// The shape of a model, as in its Hugging Face `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Catalogue name, e.g. `llama-3-8b`.
    pub name: String,
    /// Number of decoder layers.
    pub num_layers: u32,
    /// Hidden size (model width).
    pub hidden_size: u32,
    /// Query heads.
    pub num_heads: u32,
    /// Key/value heads (GQA; equals `num_heads` for multi-head attention).
    pub num_kv_heads: u32,
    /// Size of one attention head.
    pub head_dim: u32,
    /// MLP intermediate size (per gate/up projection).
    pub intermediate_size: u32,
    /// Vocabulary size.
    pub vocab_size: u32,
    /// Longest supported context, tokens.
    pub max_position_embeddings: u32,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bytes per weight and activation element (2 for bf16/fp16).
    #[serde(default = "default_dtype_bytes")]
    pub dtype_bytes: u32,
    /// Routed experts per MoE layer (0: a dense model).
    #[serde(default)]
    pub num_experts: u32,
    /// Experts each token is routed to (top-k).
    #[serde(default)]
    pub experts_per_token: u32,
    /// Intermediate size of one routed expert.
    #[serde(default)]
    pub moe_intermediate_size: u32,
    /// Shared experts every token passes through.
    #[serde(default)]
    pub num_shared_experts: u32,
    /// Intermediate size of one shared expert.
    #[serde(default)]
    pub shared_expert_intermediate_size: u32,
}

fn default_dtype_bytes() -> u32 {
    2
}

impl ModelSpec {
    /// Whether the feed-forward blocks are mixtures of experts.
    pub fn is_moe(&self) -> bool {
        self.num_experts > 0
    }

    /// Parameters of one decoder layer's feed-forward block: a gated MLP, or a router, the routed
    /// experts and the shared experts.
    pub fn ffn_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        if !self.is_moe() {
            return 3 * h * self.intermediate_size as u64;
        }
        let routed = self.num_experts as u64 * 3 * h * self.moe_intermediate_size as u64;
        let shared = self.num_shared_experts as u64 * 3 * h * self.shared_expert_intermediate_size as u64;
        h * self.num_experts as u64 + routed + shared
    }

    /// Parameters of one decoder layer (attention + feed-forward + two norms).
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        h * (q + 2 * kv) + q * h + self.ffn_params() + 2 * h
    }

    /// Parameters one token uses in a layer's feed-forward block (its k experts and the shared ones).
    pub fn active_ffn_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        if !self.is_moe() {
            return self.ffn_params();
        }
        h * self.num_experts as u64
            + self.experts_per_token as u64 * 3 * h * self.moe_intermediate_size as u64
            + self.num_shared_experts as u64 * 3 * h * self.shared_expert_intermediate_size as u64
    }

    /// Decoder layers whose feed-forward block is a mixture of experts.
    pub fn moe_layers(&self) -> u32 {
        if self.is_moe() { self.num_layers } else { 0 }
    }

    /// Expected distinct experts `tokens` tokens touch in one layer when each picks
    /// `experts_per_token` of `num_experts` uniformly: `E (1 - (1 - k/E)^T)`.
    pub fn expected_unique_experts(&self, tokens: f64) -> f64 {
        if !self.is_moe() || tokens <= 0.0 {
            return 0.0;
        }
        let e = self.num_experts as f64;
        let k = self.experts_per_token as f64;
        e * (1.0 - (1.0 - k / e).powf(tokens))
    }

    /// Total parameters: layers, embedding, final norm and (untied) LM head.
    pub fn total_params(&self) -> u64 {
        let embed = self.vocab_size as u64 * self.hidden_size as u64;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        self.num_layers as u64 * self.layer_params() + embed + head + self.hidden_size as u64
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.total_params() * self.dtype_bytes as u64
    }

    /// Key/value heads held by one GPU at tensor-parallel degree `tp` (replicated when tp exceeds them).
    pub fn kv_heads_per_gpu(&self, tp: u32) -> u32 {
        self.num_kv_heads.div_ceil(tp).max(1)
    }

    /// KV-cache bytes per token on one GPU at tensor-parallel degree `tp`.
    pub fn kv_bytes_per_token(&self, tp: u32) -> u64 {
        2 * self.num_layers as u64 * self.kv_heads_per_gpu(tp) as u64 * self.head_dim as u64 * self.dtype_bytes as u64
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::ModelSpec;

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
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;

    #[test]
    fn parameter_counts_match_published_sizes() {
        // Reference: 8.030 B (Llama-3-8B), 68.977 B (Llama-2-70B), 6.738 B (Llama-2-7B).
        assert!((llama3_8b().total_params() as f64 / 1e9 - 8.030).abs() < 0.001);
        assert!((llama2_70b().total_params() as f64 / 1e9 - 68.977).abs() < 0.001);
        assert!((llama2_7b().total_params() as f64 / 1e9 - 6.738).abs() < 0.001);
    }

    #[test]
    fn moe_parameter_counts_and_unique_experts() {
        let m = mixtral_8x7b();
        // Published: 46.703 B total, 12.88 B active per token.
        assert!((m.total_params() as f64 / 1e9 - 46.703).abs() < 0.001);
        let active = m.total_params() - m.num_layers as u64 * (m.ffn_params() - m.active_ffn_params());
        assert!((active as f64 / 1e9 - 12.88).abs() < 0.01);
        assert_eq!(m.expected_unique_experts(1.0), 2.0);
        // 4 tokens: 8 (1 - (3/4)^4) = 5.47 experts.
        assert!((m.expected_unique_experts(4.0) - 8.0 * (1.0 - 0.75f64.powi(4))).abs() < 1e-12);
        assert!(m.expected_unique_experts(256.0) > 7.999);
        assert!(!llama3_8b().is_moe());
    }

    #[test]
    fn kv_bytes_per_token() {
        assert_eq!(llama3_8b().kv_bytes_per_token(1), 131_072);
        assert_eq!(llama2_7b().kv_bytes_per_token(1), 524_288);
        assert_eq!(llama2_70b().kv_bytes_per_token(1), 327_680);
        assert_eq!(llama2_70b().kv_bytes_per_token(4), 81_920);
        // 8 KV heads over 16 GPUs: each GPU keeps one (replicated) head.
        assert_eq!(llama2_70b().kv_bytes_per_token(16), 40_960);
    }
}
