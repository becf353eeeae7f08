//! Decoder-only transformer shapes: Llama-style (RMSNorm, RoPE, GQA, gated SiLU MLP) by default;
//! plain two-matrix MLPs (OPT, BLOOM, Falcon, GPT-2), parallel attention + MLP blocks (Falcon,
//! GPT-J), sliding-window attention (Mistral-7B v0.1), optional mixture-of-experts feed-forward
//! blocks (some leading layers may stay dense, and MoE layers may be interleaved with dense ones)
//! and optional DeepSeek-style multi-head latent attention (MLA).

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
    /// Leading layers of a MoE model that keep a dense gated MLP of `intermediate_size` instead of
    /// experts (DeepSeek's `first_k_dense_replace`); ignored by dense models.
    #[serde(default)]
    pub first_dense_layers: u32,
    /// Multi-head latent attention, replacing GQA (`num_kv_heads` and `head_dim` are then unused).
    #[serde(default)]
    pub mla: Option<MlaSpec>,
    /// The feed-forward blocks' kind (dense MLPs and experts alike): gated (three matrices) or
    /// plain (two).
    #[serde(default)]
    pub mlp: MlpKind,
    /// Whether attention and the MLP read the same normed input and share one residual add
    /// (Falcon, GPT-J), instead of running one after the other.
    #[serde(default)]
    pub parallel_attention: bool,
    /// Sliding-window attention: each token attends to at most this many tokens, itself included
    /// (Mistral-7B v0.1: 4096); `None`: the whole context.
    #[serde(default)]
    pub sliding_window: Option<u32>,
    /// Past the `first_dense_layers`, every `moe_layer_interval`-th layer is a MoE layer and the
    /// others keep the dense MLP (Switch/GLaM: 2; Qwen2-MoE's `decoder_sparse_step`); 0 or 1: every
    /// layer. Ignored by dense models.
    #[serde(default)]
    pub moe_layer_interval: u32,
    /// Multi-token-prediction modules the checkpoint ships beside the decoder layers (DeepSeek-V3
    /// and MiMo's `num_nextn_predict_layers`, Qwen3-Next's `mtp_num_hidden_layers`): each one
    /// decoder layer of the model's shape with a `2h x h` input projection, sharing the embedding
    /// and LM head. Only speculative decoding's `mtp` method runs them; 0: none.
    #[serde(default)]
    pub mtp_layers: u32,
}

/// The kind of a feed-forward block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// Gate and up projections, SiLU(gate) x up, down projection (Llama, Mistral, Qwen).
    #[default]
    Gated,
    /// Up projection, GELU or ReLU, down projection (OPT, BLOOM, Falcon, GPT-2).
    Plain,
}

impl MlpKind {
    /// Weight matrices of one MLP of this kind (3 gated, 2 plain); also the MLP-width tensors an
    /// activation pass and the MLP's live activations touch.
    pub fn matrices(self) -> u64 {
        match self {
            MlpKind::Gated => 3,
            MlpKind::Plain => 2,
        }
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3): keys and values are compressed into one latent
/// vector per token, which (with a shared RoPE key) is all the KV cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlaSpec {
    /// Rank of the query compression (`None`: a plain `q_proj` from the hidden state).
    #[serde(default)]
    pub q_lora_rank: Option<u32>,
    /// Width of the compressed key/value latent.
    pub kv_lora_rank: u32,
    /// Per-head query/key size without rotary embedding.
    pub qk_nope_head_dim: u32,
    /// Per-head query/key size with rotary embedding (the rotary key is shared by all heads).
    pub qk_rope_head_dim: u32,
    /// Per-head value size.
    pub v_head_dim: u32,
}

impl MlaSpec {
    /// Query/key size of one head: the non-rotary and rotary parts.
    pub fn qk_head_dim(&self) -> u32 {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Elements cached per token per layer: the latent and the rotary key.
    pub fn cache_width(&self) -> u32 {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Parameters of the down-projections into the latents and their norms, which tensor
    /// parallelism replicates on every GPU: `kv_a_proj_with_mqa`, `kv_a_layernorm` and, with a
    /// query latent, `q_a_proj` and `q_a_layernorm`.
    pub fn replicated_params(&self, hidden: u64) -> u64 {
        let kv = hidden * self.cache_width() as u64 + self.kv_lora_rank as u64;
        let q = self.q_lora_rank.map_or(0, |r| (hidden + 1) * r as u64);
        kv + q
    }
}

fn default_dtype_bytes() -> u32 {
    2
}

impl ModelSpec {
    /// Whether the feed-forward blocks are mixtures of experts.
    pub fn is_moe(&self) -> bool {
        self.num_experts > 0
    }

    /// Parameters of the feed-forward block of a layer past the first dense ones: a gated MLP, or
    /// a router, the routed experts and the shared experts.
    pub fn ffn_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        if !self.is_moe() {
            return self.dense_ffn_params();
        }
        let mats = self.mlp.matrices();
        let routed = self.num_experts as u64 * mats * h * self.moe_intermediate_size as u64;
        let shared = self.num_shared_experts as u64 * mats * h * self.shared_expert_intermediate_size as u64;
        h * self.num_experts as u64 + routed + shared
    }

    /// Parameters of a dense MLP of `intermediate_size`: gate, up and down projections (gated),
    /// or up and down (plain).
    pub fn dense_ffn_params(&self) -> u64 {
        self.mlp.matrices() * self.hidden_size as u64 * self.intermediate_size as u64
    }

    /// Layers whose feed-forward block is a dense MLP: all of a dense model's; of a MoE model's,
    /// the first `first_dense_layers` and those between interleaved MoE layers.
    pub fn dense_layers(&self) -> u32 {
        self.num_layers - self.moe_layers()
    }

    /// Layers whose feed-forward block is a mixture of experts.
    pub fn moe_layers(&self) -> u32 {
        self.moe_layers_below(self.num_layers)
    }

    /// MoE layers every how many layers past the first dense ones (at least 1).
    pub fn moe_interval(&self) -> u32 {
        self.moe_layer_interval.max(1)
    }

    /// Whether decoder layer `layer` (0-based) has experts: a MoE model's layers from
    /// `first_dense_layers` on whose offset from there + 1 is a multiple of the interval.
    pub fn is_moe_layer(&self, layer: u32) -> bool {
        self.is_moe() && layer >= self.first_dense_layers && (layer - self.first_dense_layers + 1).is_multiple_of(self.moe_interval())
    }

    /// MoE layers among the first `n` layers.
    fn moe_layers_below(&self, n: u32) -> u32 {
        if !self.is_moe() {
            return 0;
        }
        n.min(self.num_layers).saturating_sub(self.first_dense_layers) / self.moe_interval()
    }

    /// Parameters of one layer's attention block (projections, and MLA's latent norm).
    pub fn attention_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let heads = self.num_heads as u64;
        let Some(m) = &self.mla else {
            let q = heads * self.head_dim as u64;
            let kv = (self.num_kv_heads * self.head_dim) as u64;
            return h * (q + 2 * kv) + q * h;
        };
        let q_out = heads * m.qk_head_dim() as u64;
        let q_proj = m.q_lora_rank.map_or(h * q_out, |r| r as u64 * q_out);
        let kv_b = m.kv_lora_rank as u64 * heads * (m.qk_nope_head_dim + m.v_head_dim) as u64;
        let o = heads * m.v_head_dim as u64 * h;
        m.replicated_params(h) + q_proj + kv_b + o
    }

    /// Parameters of one MoE decoder layer (attention + feed-forward + two norms); of any layer of
    /// a dense model.
    pub fn layer_params(&self) -> u64 {
        self.attention_params() + self.ffn_params() + 2 * self.hidden_size as u64
    }

    /// Parameters of one decoder layer with a dense MLP.
    pub fn dense_layer_params(&self) -> u64 {
        self.attention_params() + self.dense_ffn_params() + 2 * self.hidden_size as u64
    }

    /// Parameters of decoder layers `layers` (0-based; which are MoE layers: [`Self::is_moe_layer`]).
    pub fn layers_params(&self, layers: std::ops::Range<u32>) -> u64 {
        let end = layers.end.min(self.num_layers);
        let start = layers.start.min(end);
        let moe = self.moe_layers_below(end) - self.moe_layers_below(start);
        (end - start - moe) as u64 * self.dense_layer_params() + moe as u64 * self.layer_params()
    }

    /// Parameters one token uses in a MoE layer's feed-forward block (its k experts and the shared
    /// ones); the whole block in a dense layer.
    pub fn active_ffn_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        if !self.is_moe() {
            return self.ffn_params();
        }
        let mats = self.mlp.matrices();
        h * self.num_experts as u64
            + self.experts_per_token as u64 * mats * h * self.moe_intermediate_size as u64
            + self.num_shared_experts as u64 * mats * h * self.shared_expert_intermediate_size as u64
    }

    /// Parameters one token uses: all of them but the experts it is not routed to.
    pub fn active_params(&self) -> u64 {
        self.total_params() - self.moe_layers() as u64 * (self.ffn_params() - self.active_ffn_params())
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
        self.layers_params(0..self.num_layers) + embed + head + self.hidden_size as u64
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.total_params() * self.dtype_bytes as u64
    }

    /// Key/value heads held by one GPU at tensor-parallel degree `tp` (replicated when tp exceeds them).
    pub fn kv_heads_per_gpu(&self, tp: u32) -> u32 {
        self.num_kv_heads.div_ceil(tp).max(1)
    }

    /// KV-cache elements per token per layer on one GPU at tensor-parallel degree `tp`: K and V of
    /// its KV heads, or (MLA) the whole latent and rotary key, which every GPU keeps.
    pub fn kv_width_per_gpu(&self, tp: u32) -> u64 {
        match &self.mla {
            Some(m) => m.cache_width() as u64,
            None => 2 * self.kv_heads_per_gpu(tp) as u64 * self.head_dim as u64,
        }
    }

    /// KV-cache bytes per token per layer on one GPU at tensor-parallel degree `tp`.
    pub fn kv_bytes_per_token_per_layer(&self, tp: u32) -> u64 {
        self.kv_width_per_gpu(tp) * self.dtype_bytes as u64
    }

    /// Keys one query at absolute position `position` (0-based) attends to: `position + 1`, at
    /// most the sliding window.
    pub fn attended_keys(&self, position: u64) -> u64 {
        let keys = position + 1;
        self.sliding_window.map_or(keys, |w| keys.min(w as u64))
    }

    /// KV-cache bytes per token on one GPU at tensor-parallel degree `tp`.
    pub fn kv_bytes_per_token(&self, tp: u32) -> u64 {
        self.num_layers as u64 * self.kv_bytes_per_token_per_layer(tp)
    }
}

#[cfg(test)]
pub(crate) mod fixtures;

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
        assert!((m.active_params() as f64 / 1e9 - 12.88).abs() < 0.01);
        assert_eq!(m.expected_unique_experts(1.0), 2.0);
        // 4 tokens: 8 (1 - (3/4)^4) = 5.47 experts.
        assert!((m.expected_unique_experts(4.0) - 8.0 * (1.0 - 0.75f64.powi(4))).abs() < 1e-12);
        assert!(m.expected_unique_experts(256.0) > 7.999);
        assert!(!llama3_8b().is_moe());
    }

    #[test]
    fn plain_mlp_has_two_matrices() {
        let m = opt_66b();
        // Per layer: q, k, v, o of 9216 x 9216, up and down of 9216 x 36864, two norms.
        let layer = 4 * 9216 * 9216 + 2 * 9216 * 36864 + 2 * 9216;
        assert_eq!(m.layer_params(), layer);
        assert_eq!(m.layer_params(), 1_019_234_304);
        // 64 layers + the tied 50272 x 9216 embedding + the final norm: 65.69 B (published: 66 B,
        // which adds biases and the learned position embeddings).
        assert_eq!(m.total_params(), 65_694_311_424);
        let gated = super::ModelSpec { mlp: super::MlpKind::Gated, ..opt_66b() };
        assert_eq!(gated.layer_params() - m.layer_params(), 9216 * 36864);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""mlp":"plain""#), "{json}");
        assert_eq!(serde_json::from_str::<super::ModelSpec>(&json).unwrap(), m);
    }

    #[test]
    fn interleaved_moe_layers_alternate_with_dense_ones() {
        let m = super::ModelSpec { moe_layer_interval: 2, ..mixtral_8x7b() };
        // Layers 1, 3, ..., 31 have experts; 0, 2, ..., 30 the 14336-wide gated MLP.
        assert_eq!((m.moe_layers(), m.dense_layers()), (16, 16));
        assert!(!m.is_moe_layer(0) && m.is_moe_layer(1) && !m.is_moe_layer(30) && m.is_moe_layer(31));
        let attn = 4096 * (4096 + 2 * 1024) + 4096 * 4096;
        let moe = attn + 4096 * 8 + 8 * 3 * 4096 * 14336 + 2 * 4096;
        let dense = attn + 3 * 4096 * 14336 + 2 * 4096;
        assert_eq!((m.layer_params(), m.dense_layer_params()), (moe, dense));
        assert_eq!(m.layers_params(0..1), dense);
        assert_eq!(m.layers_params(0..3), 2 * dense + moe);
        assert_eq!(m.layers_params(1..4), dense + 2 * moe);
        // 16 x (1 451 270 144 + 218 112 000) + embedding and LM head (2 x 32000 x 4096) + final norm.
        assert_eq!(m.total_params(), 26_972_262_400);
        assert_eq!(m.weight_bytes(), 2 * 26_972_262_400);
        // Active: the dense layers whole, 2 of 8 experts on the MoE layers.
        assert_eq!(m.total_params() - m.active_params(), 16 * 6 * 3 * 4096 * 14336);
        // With one leading dense layer, the interval counts from it: layers 2, 4, ..., 30.
        let d = super::ModelSpec { first_dense_layers: 1, ..m.clone() };
        assert_eq!(d.moe_layers(), 15);
        assert!(!d.is_moe_layer(1) && d.is_moe_layer(2) && !d.is_moe_layer(31));
        assert_eq!(d.layers_params(0..32), 17 * dense + 15 * moe);
        // 0 and 1 both mean every layer.
        assert_eq!(super::ModelSpec { moe_layer_interval: 1, ..mixtral_8x7b() }.total_params(), mixtral_8x7b().total_params());
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

    #[test]
    fn deepseek_v2_lite_parameters_with_mla_and_a_dense_first_layer() {
        let m = deepseek_v2_lite();
        // MLA per layer: q_proj 2048 x 16*192, kv_a_proj_with_mqa 2048 x (512 + 64), kv_a_layernorm
        // 512, kv_b_proj 512 x 16*(128 + 128), o_proj 16*128 x 2048.
        let attn = 2048 * 3072 + 2048 * 576 + 512 + 512 * 4096 + 2048 * 2048;
        assert_eq!(m.attention_params(), attn);
        assert_eq!(m.attention_params(), 13_763_072);
        // Layer 0: the 10944-wide gated MLP; layers 1..26: router + 64 routed + 2 shared experts.
        assert_eq!((m.dense_layers(), m.moe_layers()), (1, 26));
        assert_eq!(m.dense_layer_params(), attn + 3 * 2048 * 10944 + 2 * 2048);
        assert_eq!(m.layer_params(), attn + 2048 * 64 + 66 * 3 * 2048 * 1408 + 2 * 2048);
        assert_eq!(m.layers_params(0..1), m.dense_layer_params());
        assert_eq!(m.layers_params(1..27), 26 * m.layer_params());
        assert_eq!(m.layers_params(0..14) + m.layers_params(14..27), m.layers_params(0..27));
        // Published: 15.7 B total, 2.4 B activated. The core counts 15.706 B, and 2.661 B per token
        // including the embedding table and the LM head (0.210 B each).
        assert_eq!(m.total_params(), 15_706_484_224);
        assert!((m.total_params() as f64 / 1e9 - 15.706).abs() < 0.001);
        assert!((m.active_params() as f64 / 1e9 - 2.661).abs() < 0.01);
    }

    #[test]
    fn deepseek_v3_has_its_published_671_billion_parameters() {
        let m = super::fixtures::deepseek_v3();
        // MLA with a query latent: q_a_proj 7168 x 1536, its norm, q_b_proj 1536 x 128*192,
        // kv_a_proj_with_mqa 7168 x 576, its norm 512, kv_b_proj 512 x 128*256, o_proj 128*128 x 7168.
        let attn = 7168 * 1536 + 1536 + 1536 * 24576 + 7168 * 576 + 512 + 512 * 32768 + 16384 * 7168;
        assert_eq!(m.attention_params(), attn);
        assert_eq!((m.dense_layers(), m.moe_layers()), (3, 58));
        let expert = 3 * 7168 * 2048;
        assert_eq!(m.layer_params(), attn + 7168 * 256 + 257 * expert + 2 * 7168);
        // Published: 671 B in the main model (the MTP module's 11.5 B apart), 37 B activated
        // (36.6 B without the embedding table, 0.93 B).
        assert_eq!(m.total_params(), 3 * (attn + 3 * 7168 * 18432 + 2 * 7168) + 58 * m.layer_params() + 2 * 129280 * 7168 + 7168);
        assert!((m.total_params() as f64 / 1e9 - 671.03).abs() < 0.01, "{}", m.total_params());
        assert!((m.active_params() as f64 / 1e9 - 37.55).abs() < 0.01, "{}", m.active_params());
        // The KV cache: 61 layers x (512 + 64) x 2 bytes on every GPU.
        assert_eq!(m.kv_bytes_per_token(8), 70_272);
    }

    #[test]
    fn mla_kv_cache_holds_the_latent_and_rope_key_on_every_gpu() {
        let m = deepseek_v2_lite();
        // 27 layers x (512 + 64) x 2 bytes, not 2 x 16 heads x 128 x 2 per layer.
        assert_eq!(m.kv_bytes_per_token(1), 31_104);
        assert_eq!(m.kv_bytes_per_token(1), 27 * (512 + 64) * 2);
        assert_eq!(m.kv_bytes_per_token_per_layer(8), 1_152);
        assert_eq!(m.kv_bytes_per_token(16), 31_104, "the latent is not sharded by tensor parallelism");
    }

    #[test]
    fn mla_spec_reads_from_json_and_defaults_keep_old_configs() {
        let old = r#"{"name":"x","num_layers":2,"hidden_size":64,"num_heads":4,"num_kv_heads":4,"head_dim":16,"intermediate_size":128,"vocab_size":100,"max_position_embeddings":64}"#;
        let m: super::ModelSpec = serde_json::from_str(old).unwrap();
        assert_eq!((m.mla, m.first_dense_layers), (None, 0));
        let json = serde_json::to_string(&deepseek_v2_lite()).unwrap();
        assert_eq!(serde_json::from_str::<super::ModelSpec>(&json).unwrap(), deepseek_v2_lite());
        let bad = old.replace("}", r#","mla":{"kv_lora_rank":8,"qk_nope_head_dim":8,"qk_rope_head_dim":4,"v_head_dim":8,"typo":1}}"#);
        assert!(serde_json::from_str::<super::ModelSpec>(&bad).is_err());
        // A query latent adds q_a_proj (h x r), its norm (r) and q_b_proj (r x heads * qk).
        let mut q = deepseek_v2_lite();
        q.mla.as_mut().unwrap().q_lora_rank = Some(1536);
        let plain = deepseek_v2_lite().attention_params();
        assert_eq!(q.attention_params(), plain - 2048 * 3072 + 2048 * 1536 + 1536 + 1536 * 3072);
    }
}
