//! Weight streaming: offloaded layers' weights fetched from host DRAM or flash every iteration
//! (see [`crate::offload`]), and the part of the fetch the iteration's compute does not hide.

use super::iteration::IterationPass;
use super::{CostModel, Op, OpCost};
use crate::offload::OffloadSpec;

/// The offloaded weights one iteration streams in, split by the path they take.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WeightStream {
    /// Bytes read from flash (then over the host link), per GPU.
    pub flash_bytes: u64,
    /// Bytes from host DRAM (the DRAM tier, or flash's DRAM cache) over the host link, per GPU.
    pub dram_bytes: u64,
    /// Whether the stream runs under the iteration's compute.
    pub overlap: bool,
}

impl CostModel {
    /// Decoder layers whose weights are offloaded.
    pub fn offloaded_layers(&self) -> u32 {
        self.offload.as_ref().map_or(0, |o| (o.layer_fraction * self.model.num_layers as f64).round() as u32)
    }

    /// The fraction of an offloaded layer's FFN neurons an iteration of `tokens` tokens needs: each
    /// token activates `ffn_load_fraction` of them independently, and a neuron is loaded (and
    /// computed) when any token needs it: `1 - (1 - f)^tokens`. One decode: `f`; a long prefill:
    /// nearly all.
    pub fn ffn_active_fraction(&self, tokens: f64) -> f64 {
        let Some(o) = &self.offload else { return 1.0 };
        if o.ffn_load_fraction >= 1.0 {
            return 1.0;
        }
        1.0 - (1.0 - o.ffn_load_fraction).powf(tokens.max(1.0))
    }

    /// Bytes of one offloaded layer fetched per iteration of `tokens` tokens on one GPU: its
    /// attention weights (unless they stay resident) and the FFN neurons those tokens activate
    /// ([`Self::ffn_active_fraction`]).
    pub fn layer_fetch_bytes(&self, tokens: f64) -> f64 {
        let Some(o) = &self.offload else { return 0.0 };
        let ffn = self.model.dense_ffn_params() as f64 * self.ffn_active_fraction(tokens) * self.wb / self.tp as f64;
        if o.resident_attention {
            return ffn;
        }
        let (unsharded, held) = self.replicated_layer_params();
        let attn = self.model.attention_params() as f64 - unsharded as f64;
        attn * self.wb / self.tp as f64 + ffn + held as f64 * self.wb
    }

    /// Share of all decoder layers that are offloaded with a sparse FFN (`ffn_load_fraction` < 1):
    /// those layers compute only the FFN neurons their tokens activate, as "LLM in a flash"'s
    /// predictor-driven sparse FFN does.
    pub(super) fn sparse_ffn_share(&self) -> f64 {
        match &self.offload {
            Some(o) if o.ffn_load_fraction < 1.0 => self.offloaded_layers() as f64 / self.model.num_layers as f64,
            _ => 0.0,
        }
    }

    /// The weights an iteration of `tokens` tokens streams in from host DRAM or flash, if any layers
    /// are offloaded.
    pub fn weight_stream(&self, tokens: f64) -> Option<WeightStream> {
        let o = self.offload.as_ref()?;
        let total = (self.layer_fetch_bytes(tokens) * self.offloaded_layers() as f64).round() as u64;
        if total == 0 {
            return None;
        }
        let flash = match o.tier {
            crate::offload::Tier::Dram => 0,
            crate::offload::Tier::Flash => (total as f64 * (1.0 - o.dram_cache_fraction)).round() as u64,
        };
        Some(WeightStream { flash_bytes: flash, dram_bytes: total - flash, overlap: o.overlap })
    }

    /// The offload settings, if any.
    pub fn offload(&self) -> Option<&OffloadSpec> {
        self.offload.as_ref()
    }
}

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the offloaded layers' weight fetch: one stream per iteration carries every
    /// offloaded layer; with overlap it runs under the whole iteration's compute (prefetching
    /// ahead), so only what outlasts the operators charged before it stalls.
    pub(super) fn weight_fetch(&mut self) {
        let cm = self.cm;
        if let Some(o) = &cm.offload {
            let n = cm.offloaded_layers() as f64;
            if n > 0.0 {
                let bytes = cm.layer_fetch_bytes(self.mt) * n;
                let fetch = o.fetch_seconds(bytes, cm.gpu.host_link_bandwidth, cm.gpu.host_link_latency);
                let stall = if o.overlap { (fetch - self.emitted()).max(0.0) } else { fetch };
                self.push(OpCost { op: Op::WeightFetch, flops: 0.0, bytes, seconds: stall, compute_bound: false, on_pim: false, bubble_seconds: 0.0 });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;
    use crate::error::Error;

    fn offload(tier: crate::offload::Tier, overlap: bool) -> OffloadSpec {
        OffloadSpec {
            tier,
            layer_fraction: 1.0,
            ffn_load_fraction: 1.0,
            dram_cache_fraction: 0.0,
            resident_attention: false,
            overlap,
            flash: Some(crate::offload::FlashSpec { name: "nvme".into(), read_bandwidth: 7e9, latency: 80e-6, iops: None }),
            queue_depth: 32,
            read_chunk_kb: 64.0,
            capacity_gb: Some(1e4),
        }
    }

    #[test]
    fn weight_streaming_time_from_dram_and_flash() {
        use crate::offload::Tier;
        let mut one = BatchShape::default();
        one.add_decode(100);
        let layer_bytes = llama2_7b().layer_params() as f64 * 2.0;
        // All 32 layers of Llama-2-7B in DRAM, no overlap: each layer's 404 MB cross 64 GB/s PCIe.
        let dram = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Dram, false))).unwrap();
        let wf = op(&dram.breakdown(&one), Op::WeightFetch);
        assert!((layer_bytes - 2.0 * 4096.0 * 2.0 - dram.layer_fetch_bytes(1.0)).abs() < 1.0, "the two norm vectors are not fetched");
        assert!(close(wf.seconds, 5e-6 + 32.0 * dram.layer_fetch_bytes(1.0) / 64e9));
        // From flash at 7 GB/s (64 KiB reads at depth 32 saturate the drive): flash paces the stream.
        let flash = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Flash, false))).unwrap();
        let ff = op(&flash.breakdown(&one), Op::WeightFetch);
        assert!(close(ff.seconds, 80e-6 + 32.0 * flash.layer_fetch_bytes(1.0) / 7e9));
        // LLM in a flash: load 10% of the FFN; only attention + 10% FFN are read.
        let mut sparse = offload(Tier::Flash, false);
        sparse.ffn_load_fraction = 0.1;
        let sp = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(sparse)).unwrap();
        let attn = (4096.0 * (4096.0 * 3.0) + 4096.0 * 4096.0) * 2.0;
        let ffn = 3.0 * 4096.0 * 11008.0 * 2.0;
        assert!(close(sp.layer_fetch_bytes(1.0), attn + 0.1 * ffn));
        assert!(sp.iteration_seconds(&one) < 0.5 * flash.iteration_seconds(&one));
        // Overlap hides the fetch behind compute up to each layer's compute time.
        let ov = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Dram, true))).unwrap();
        let plain = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap();
        let layer_compute: f64 = plain.breakdown(&one).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead)).map(|c| c.seconds).sum::<f64>() / 32.0;
        let fetch = 5e-6 + 32.0 * ov.layer_fetch_bytes(1.0) / 64e9;
        let compute: f64 = ov.breakdown(&one).iter().filter(|c| c.op != Op::WeightFetch).map(|c| c.seconds).sum();
        assert!(close(compute, plain.iteration_seconds(&one)));
        assert!(close(op(&ov.breakdown(&one), Op::WeightFetch).seconds, (fetch - compute).max(0.0)));
        assert!(layer_compute > 0.0);
        let stream = ov.weight_stream(1.0).unwrap();
        assert_eq!((stream.flash_bytes, stream.overlap), (0, true));
        assert_eq!(stream.dram_bytes, (32.0 * ov.layer_fetch_bytes(1.0)).round() as u64);
        // HBM holds only two staging layers of the 32.
        assert!(ov.weight_bytes_per_gpu() < plain.weight_bytes_per_gpu() / 4);
    }

    #[test]
    fn a_sparse_ffn_loads_and_computes_the_neurons_its_tokens_activate() {
        use crate::offload::Tier;
        let mut sparse = offload(Tier::Flash, false);
        sparse.ffn_load_fraction = 0.1;
        let sp = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(sparse)).unwrap();
        let dense = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Flash, false))).unwrap();
        // One token: 10% of the neurons; 4 tokens: 1 - 0.9^4 = 34.39%; a 1000-token prefill: all.
        assert!(close(sp.ffn_active_fraction(1.0), 0.1));
        assert!(close(sp.ffn_active_fraction(4.0), 1.0 - 0.9f64.powi(4)));
        assert!(sp.ffn_active_fraction(1000.0) > 0.999999);
        let attn = (4096.0 * (4096.0 * 3.0) + 4096.0 * 4096.0) * 2.0;
        let ffn = 3.0 * 4096.0 * 11008.0 * 2.0;
        assert!(close(sp.layer_fetch_bytes(4.0), attn + (1.0 - 0.9f64.powi(4)) * ffn));
        // The FFN computes 10% of its 11008 neurons for one decode: a tenth of the FLOPs.
        let mut one = BatchShape::default();
        one.add_decode(100);
        let (s_gu, d_gu) = (op(&sp.breakdown(&one), Op::MlpGateUp), op(&dense.breakdown(&one), Op::MlpGateUp));
        assert!(close(s_gu.flops, 32.0 * gemm(1.0, 4096.0, 2.0 * 1100.8).0));
        assert!(close(d_gu.flops, 32.0 * gemm(1.0, 4096.0, 2.0 * 11008.0).0));
        // A long prefill needs every neuron: as dense.
        let mut long = BatchShape::default();
        long.add_prefill(1000, 0, true);
        assert!(close(op(&sp.breakdown(&long), Op::MlpDown).flops, op(&dense.breakdown(&long), Op::MlpDown).flops));
        assert!(close(op(&sp.breakdown(&long), Op::WeightFetch).bytes, op(&dense.breakdown(&long), Op::WeightFetch).bytes));
    }

    #[test]
    fn resident_attention_streams_only_the_ffn_and_keeps_attention_in_hbm() {
        use crate::offload::Tier;
        let mut resident = offload(Tier::Flash, false);
        resident.ffn_load_fraction = 0.1;
        resident.resident_attention = true;
        let rs = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(resident)).unwrap();
        let all = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Flash, false))).unwrap();
        let attn = (4096.0 * (4096.0 * 3.0) + 4096.0 * 4096.0) * 2.0;
        let ffn = 3.0 * 4096.0 * 11008.0 * 2.0;
        // One decode fetches 10% of the FFN only: 27.05 MB per layer, against 404 MB fully offloaded.
        assert!(close(rs.layer_fetch_bytes(1.0), 0.1 * ffn));
        let mut one = BatchShape::default();
        one.add_decode(100);
        assert!(close(op(&rs.breakdown(&one), Op::WeightFetch).seconds, 80e-6 + 32.0 * 0.1 * ffn / 7e9));
        // HBM keeps the 32 layers' attention (134 MB each) plus one staging buffer for 10% of an FFN.
        assert_eq!(rs.weight_bytes_per_gpu() - all.weight_bytes_per_gpu(), (32.0 * attn) as u64 + (0.1 * ffn).ceil() as u64 - all.layer_fetch_bytes(1.0).ceil() as u64);
    }

    #[test]
    fn offloaded_weights_must_fit_their_tier() {
        let mut o = offload(crate::offload::Tier::Dram, true);
        o.capacity_gb = Some(1.0);
        let e = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(o)).unwrap_err();
        assert!(matches!(e, Error::Capacity { .. }));
    }
}
