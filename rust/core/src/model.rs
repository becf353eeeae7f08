//! Dense decoder-only transformer shapes (Llama-style: RMSNorm, RoPE, GQA, gated SiLU MLP).

use serde::{Deserialize, Serialize};

/// The shape of a model, as in its Hugging Face `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

fn default_dtype_bytes() -> u32 {
    2
}

impl ModelSpec {
    /// Parameters of one decoder layer (attention + MLP + two norms).
    pub fn layer_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let i = self.intermediate_size as u64;
        h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h
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
    fn kv_bytes_per_token() {
        assert_eq!(llama3_8b().kv_bytes_per_token(1), 131_072);
        assert_eq!(llama2_7b().kv_bytes_per_token(1), 524_288);
        assert_eq!(llama2_70b().kv_bytes_per_token(1), 327_680);
        assert_eq!(llama2_70b().kv_bytes_per_token(4), 81_920);
        // 8 KV heads over 16 GPUs: each GPU keeps one (replicated) head.
        assert_eq!(llama2_70b().kv_bytes_per_token(16), 40_960);
    }
}
