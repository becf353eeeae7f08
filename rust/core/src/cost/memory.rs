//! Memory on one GPU: weight bytes (tensor-parallel shards, pipeline stages, offloaded layers
//! and experts kept out of HBM; decoder layers at the quantized width, the embedding and LM head
//! 16-bit), KV-cache bytes per token and peak activation bytes.

use super::CostModel;

impl CostModel {
    /// Parameters of one layer kept out of tensor-parallel sharding, and how many of them each GPU
    /// holds: MLA's latent down-projections (every GPU holds them whole), and with fewer KV heads
    /// than GPUs the K and V projections (each GPU holds its KV head's, replicated, as vLLM
    /// shards them); (0, 0) when everything is sharded.
    pub(super) fn replicated_layer_params(&self) -> (u64, u64) {
        let h = self.model.hidden_size as u64;
        match &self.model.mla {
            Some(m) if self.tp > 1 => (m.replicated_params(h), m.replicated_params(h)),
            None if self.tp > self.model.num_kv_heads => {
                let kv_proj = |heads: u32| 2 * h * heads as u64 * self.model.head_dim as u64;
                (kv_proj(self.model.num_kv_heads), kv_proj(self.model.kv_heads_per_gpu(self.tp)))
            }
            _ => (0, 0),
        }
    }

    /// Bytes on one GPU of `params` decoder-layer parameters spanning `layers` layers (at the
    /// quantized width, rounded up to whole bytes) and `unquantized` 16-bit parameters (embedding,
    /// final norm, LM head), all sharded over tp but the replicated ones
    /// ([`Self::replicated_layer_params`]).
    fn param_bytes_per_gpu(&self, params: u64, layers: u64, unquantized: u64) -> u64 {
        let bytes = |n: u64| (n as f64 * self.wb).ceil() as u64;
        let (unsharded, held) = self.replicated_layer_params();
        (bytes(params - layers * unsharded) + unquantized * self.model.dtype_bytes as u64).div_ceil(self.tp as u64) + bytes(layers * held)
    }

    /// Weight bytes of one decoder layer on one GPU.
    pub(super) fn layer_weight_bytes_per_gpu(&self) -> u64 {
        self.param_bytes_per_gpu(self.model.layer_params(), 1, 0)
    }

    /// Weight bytes of one offloaded decoder layer that leave HBM, per GPU: the whole layer, or only
    /// its FFN when the offload keeps attention resident.
    pub(super) fn offloaded_layer_bytes_per_gpu(&self) -> u64 {
        let layer = self.layer_weight_bytes_per_gpu();
        match &self.offload {
            Some(o) if o.resident_attention => layer - self.param_bytes_per_gpu(self.model.attention_params(), 1, 0),
            _ => layer,
        }
    }

    /// Weight bytes of the whole model on all GPUs together: the decoder layers at the quantized
    /// width, the embedding, final norm and LM head 16-bit.
    pub fn model_weight_bytes(&self) -> u64 {
        let layers = self.model.layers_params(0..self.model.num_layers);
        let other = self.model.total_params() - layers;
        (layers as f64 * self.wb).ceil() as u64 + other * self.model.dtype_bytes as u64
    }

    /// Keeps `bytes` of routed-expert weights per GPU out of HBM (offloaded experts).
    pub fn with_expert_hbm_saved(mut self, bytes: u64) -> Self {
        self.expert_hbm_saved = bytes;
        self
    }

    /// Weight bytes on one GPU: the largest stage's layers, plus the larger of the embedding
    /// (first stage) and the LM head (last stage), divided by tp (MLA's latent down-projections
    /// are replicated, not divided).
    pub fn weight_bytes_per_gpu(&self) -> u64 {
        let layers = self.model.num_layers;
        if self.pp == 1 {
            let decoder = self.model.layers_params(0..layers);
            let resident = self.param_bytes_per_gpu(decoder, layers as u64, self.model.total_params() - decoder).saturating_sub(self.expert_hbm_saved);
            let Some(o) = &self.offload else { return resident };
            let away = self.offloaded_layers() as u64 * self.offloaded_layer_bytes_per_gpu();
            // Staging buffers for the streamed layers: two when the next layer streams during this one,
            // sized for one token's neurons (a prefill's larger fetch passes through them in pieces).
            let staging = if self.offloaded_layers() > 0 { (if o.overlap { 2.0 } else { 1.0 } * self.layer_fetch_bytes(1.0)).ceil() as u64 } else { 0 };
            return resident - away + staging;
        }
        let n = layers.div_ceil(self.pp);
        let embed = self.model.vocab_size as u64 * self.model.hidden_size as u64 + self.model.hidden_size as u64;
        (0..self.pp)
            .map(|s| {
                let (start, end) = (s * n, ((s + 1) * n).min(layers));
                self.param_bytes_per_gpu(self.model.layers_params(start..end), end.saturating_sub(start) as u64, embed)
            })
            .max()
            .unwrap_or(0)
    }

    /// KV-cache bytes per token on one GPU (its stage's layers only), at the cache's element width.
    pub fn kv_bytes_per_token_per_gpu(&self) -> u64 {
        self.kv_bytes_per_token_per_layer(self.tp) * self.model.num_layers.div_ceil(self.pp) as u64
    }

    /// KV-cache bytes of one token over all layers and KV heads (what a disaggregated prefill
    /// instance sends per prompt token), at the cache's element width.
    pub fn kv_bytes_per_token_whole_model(&self) -> u64 {
        self.kv_bytes_per_token_per_layer(1) * self.model.num_layers as u64
    }

    /// KV-cache bytes per token per layer on one GPU at tensor-parallel degree `tp`.
    fn kv_bytes_per_token_per_layer(&self, tp: u32) -> u64 {
        (self.model.kv_width_per_gpu(tp) as f64 * self.kvb).ceil() as u64
    }

    /// Peak activation memory of one iteration on one GPU, bytes: the larger of the MLP's live
    /// tensors (input, residual, gate/up output and activation; plain MLPs: up output and
    /// activation) and the fp32 logits of sampled tokens.
    pub fn activation_bytes(&self, tokens: u64, sampled: u64) -> u64 {
        let t = tokens as f64;
        let act = if self.moe_share > 0.0 { self.moe_act_width } else { 0.0 };
        let act = if self.dense_share > 0.0 { act.max(self.dense_width) } else { act };
        let mlp = t * (2.0 * self.h + self.model.mlp.matrices() as f64 * act) * self.b;
        let logits = sampled as f64 * self.model.vocab_size as f64 * 4.0 + t * self.h * self.b;
        mlp.max(logits).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    #[test]
    fn pipeline_memory_is_split_by_stage() {
        let pp = CostModel::new(llama2_70b(), a100(), ideal(), 2).unwrap().with_pipeline(4, None).unwrap();
        // 20 of 80 layers per stage, plus the 32000 x 8192 embedding, over tp = 2.
        let m = llama2_70b();
        let expected = ((20 * m.layer_params() + 32000 * 8192 + 8192) * 2).div_ceil(2);
        assert_eq!(pp.weight_bytes_per_gpu(), expected);
        assert_eq!(pp.kv_bytes_per_token_per_gpu(), 2 * 20 * 4 * 128 * 2);
        assert!(CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(0, None).is_err());
    }

    #[test]
    fn kv_projections_are_replicated_beyond_the_kv_heads() {
        // Llama-3-8B has 8 KV heads: at TP8 every GPU holds one head's K and V projections, at
        // TP16 two GPUs hold each head's (vLLM replicates them), so each GPU keeps a whole head's
        // 2 x 4096 x 128 K/V weights per layer, not half of one.
        let m = llama3_8b();
        let layers = 32 * m.layer_params();
        let other = 2 * 128_256 * 4096 + 4096;
        let tp8 = CostModel::new(m.clone(), h100(), ideal(), 8).unwrap();
        assert_eq!(tp8.weight_bytes_per_gpu(), ((layers + other) * 2).div_ceil(8));
        let tp16 = CostModel::new(m.clone(), h100(), ideal(), 16).unwrap();
        let (kv_all, kv_one) = (32 * 2 * 4096 * 8 * 128, 32 * 2 * 4096 * 128);
        assert_eq!(tp16.weight_bytes_per_gpu(), ((layers - kv_all + other) * 2).div_ceil(16) + kv_one * 2);
        // 33.5 MB per GPU more than an even split: (1 - 1/2) of a head's K/V per layer.
        assert_eq!(tp16.weight_bytes_per_gpu() - ((layers + other) * 2).div_ceil(16), 33_554_432);
    }

    #[test]
    fn deepseek_v2_lite_memory_and_collectives() {
        let m = deepseek_v2_lite();
        // KV: the whole 576-wide latent on every GPU, whatever the tp.
        let tp2 = CostModel::new(m.clone(), h100(), ideal(), 2).unwrap();
        assert_eq!(tp2.kv_bytes_per_token_per_gpu(), 31_104);
        // Weights: kv_a_proj_with_mqa (2048 x 576) and kv_a_layernorm (512) are replicated, the rest halved.
        let rep = 27 * (2048 * 576 + 512);
        assert_eq!(tp2.weight_bytes_per_gpu(), (m.total_params() - rep) * 2 / 2 + rep * 2);
        assert_eq!(CostModel::new(m.clone(), h100(), ideal(), 1).unwrap().weight_bytes_per_gpu(), m.weight_bytes());
        // Three stages of 9 layers: the first holds the dense layer, so a later stage is the largest.
        let pp = CostModel::new(m.clone(), h100(), ideal(), 1).unwrap().with_pipeline(3, None).unwrap();
        assert_eq!(pp.weight_bytes_per_gpu(), (9 * m.layer_params() + 102400 * 2048 + 2048) * 2);
        assert_eq!(pp.kv_bytes_per_token_per_gpu(), 9 * 1152);
        // TP2 + EP2, 64 decodes: attention's all-reduce on 27 layers, the dense MLP's on 1, and the
        // expert all-to-alls (dispatch + combine) on 26.
        let ep = CostModel::new(m.clone(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(500);
        }
        let c = ep.breakdown(&s);
        let msg = 64.0 * 2048.0 * 2.0;
        let one = 2.0 * 2e-6 + msg / 450e9;
        assert!(close(op(&c, Op::AllReduce).seconds, 28.0 * one));
        let one_way = 2e-6 + 64.0 * 6.0 / 2.0 * 2048.0 * 2.0 / 2.0 / 450e9;
        assert!(close(op(&c, Op::AllToAll).seconds, 26.0 * 2.0 * one_way));
        let tp_only = tp2.breakdown(&s);
        assert!(close(op(&tp_only, Op::AllReduce).seconds, 2.0 * 27.0 * one));
    }
}
