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

    /// Bytes of one offloaded layer fetched per iteration on one GPU: its attention weights and the
    /// loaded fraction of its FFN weights.
    pub fn layer_fetch_bytes(&self) -> f64 {
        let Some(o) = &self.offload else { return 0.0 };
        let h = self.model.hidden_size as f64;
        let replicated = self.replicated_layer_params() as f64;
        let attn = self.model.attention_params() as f64 - replicated;
        let ffn = 3.0 * h * self.model.intermediate_size as f64;
        (attn + ffn * o.ffn_load_fraction) * self.wb / self.tp as f64 + replicated * self.wb
    }

    /// The weights one iteration streams in from host DRAM or flash, if any layers are offloaded.
    pub fn weight_stream(&self) -> Option<WeightStream> {
        let o = self.offload.as_ref()?;
        let total = (self.layer_fetch_bytes() * self.offloaded_layers() as f64).round() as u64;
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
                let bytes = cm.layer_fetch_bytes() * n;
                let fetch = o.fetch_seconds(bytes, cm.gpu.host_link_bandwidth, cm.gpu.host_link_latency);
                let stall = if o.overlap { (fetch - self.emitted()).max(0.0) } else { fetch };
                self.push(OpCost { op: Op::WeightFetch, flops: 0.0, bytes, seconds: stall, compute_bound: false, on_pim: false });
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
        assert!((layer_bytes - 2.0 * 4096.0 * 2.0 - dram.layer_fetch_bytes()).abs() < 1.0, "the two norm vectors are not fetched");
        assert!(close(wf.seconds, 5e-6 + 32.0 * dram.layer_fetch_bytes() / 64e9));
        // From flash at 7 GB/s (64 KiB reads at depth 32 saturate the drive): flash paces the stream.
        let flash = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Flash, false))).unwrap();
        let ff = op(&flash.breakdown(&one), Op::WeightFetch);
        assert!(close(ff.seconds, 80e-6 + 32.0 * flash.layer_fetch_bytes() / 7e9));
        // LLM in a flash: load 10% of the FFN; only attention + 10% FFN are read.
        let mut sparse = offload(Tier::Flash, false);
        sparse.ffn_load_fraction = 0.1;
        let sp = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(sparse)).unwrap();
        let attn = (4096.0 * (4096.0 * 3.0) + 4096.0 * 4096.0) * 2.0;
        let ffn = 3.0 * 4096.0 * 11008.0 * 2.0;
        assert!(close(sp.layer_fetch_bytes(), attn + 0.1 * ffn));
        assert!(sp.iteration_seconds(&one) < 0.5 * flash.iteration_seconds(&one));
        // Overlap hides the fetch behind compute up to each layer's compute time.
        let ov = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(offload(Tier::Dram, true))).unwrap();
        let plain = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap();
        let layer_compute: f64 = plain.breakdown(&one).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead)).map(|c| c.seconds).sum::<f64>() / 32.0;
        let fetch = 5e-6 + 32.0 * ov.layer_fetch_bytes() / 64e9;
        let compute: f64 = ov.breakdown(&one).iter().filter(|c| c.op != Op::WeightFetch).map(|c| c.seconds).sum();
        assert!(close(compute, plain.iteration_seconds(&one)));
        assert!(close(op(&ov.breakdown(&one), Op::WeightFetch).seconds, (fetch - compute).max(0.0)));
        assert!(layer_compute > 0.0);
        let stream = ov.weight_stream().unwrap();
        assert_eq!((stream.flash_bytes, stream.overlap), (0, true));
        assert_eq!(stream.dram_bytes, (32.0 * ov.layer_fetch_bytes()).round() as u64);
        // HBM holds only two staging layers of the 32.
        assert!(ov.weight_bytes_per_gpu() < plain.weight_bytes_per_gpu() / 4);
    }

    #[test]
    fn offloaded_weights_must_fit_their_tier() {
        let mut o = offload(crate::offload::Tier::Dram, true);
        o.capacity_gb = Some(1.0);
        let e = CostModel::new(llama2_7b(), h100(), ideal(), 1).unwrap().with_offload(Some(o)).unwrap_err();
        assert!(matches!(e, Error::Capacity { .. }));
    }
}
