//! Collectives and links: the tensor-parallel ring all-reduce, the expert-parallel all-to-all,
//! activations sent between pipeline stages, the logits gather, and which link (NVLink-class or
//! the NIC, once the instance spans nodes) each crosses.

use super::iteration::IterationPass;
use super::{CostModel, Op, OpCost};

impl CostModel {
    /// Nodes the instance spans.
    pub fn nodes(&self) -> u32 {
        self.gpus().div_ceil(self.gpus_per_node)
    }

    /// (bandwidth, latency) of the slowest link in the tensor-parallel ring.
    fn tp_link(&self) -> (f64, f64) {
        if self.tp > self.gpus_per_node {
            (self.gpu.nic_bandwidth, self.gpu.nic_latency)
        } else {
            (self.gpu.link_bandwidth, self.gpu.link_latency)
        }
    }

    /// (bandwidth, latency) of the slowest stage-to-stage hop of the pipeline.
    fn pp_link(&self) -> (f64, f64) {
        if self.gpus() > self.gpus_per_node {
            (self.gpu.nic_bandwidth, self.gpu.nic_latency)
        } else {
            (self.gpu.link_bandwidth, self.gpu.link_latency)
        }
    }

    /// Ring all-reduce of `bytes` over the tensor-parallel group, seconds.
    fn all_reduce_seconds(&self, bytes: f64) -> f64 {
        if self.tp == 1 || bytes == 0.0 {
            return 0.0;
        }
        let p = self.tp as f64;
        let steps = 2.0 * (p - 1.0);
        let (bw, lat) = self.tp_link();
        steps * lat + steps / p * bytes / (bw * self.eff.collective)
    }

    /// Expert all-to-all (dispatch or combine) of `pairs` token-expert pairs, seconds.
    fn all_to_all_seconds(&self, pairs: f64) -> f64 {
        let e = self.ep as f64;
        let (bw, lat) = self.tp_link();
        let bytes_per_gpu = pairs / e * self.h * self.b * (e - 1.0) / e;
        (e - 1.0) * lat + bytes_per_gpu / (bw * self.eff.collective)
    }

    /// Gathering the fp32 logits of `s` sampled tokens from the tensor-parallel group's vocabulary
    /// shards, seconds (0 without tensor parallelism).
    pub(super) fn logits_gather_seconds(&self, s: f64) -> f64 {
        if self.tp > 1 {
            let p = self.tp as f64;
            let (bw, lat) = self.tp_link();
            (p - 1.0) * lat + (p - 1.0) / p * s * self.model.vocab_size as f64 * 4.0 / (bw * self.eff.collective)
        } else {
            0.0
        }
    }
}

impl<F: FnMut(OpCost)> IterationPass<'_, F> {
    /// Charges the tensor-parallel all-reduces: two per layer (attention and FFN outputs), one
    /// for parallel attention + MLP blocks (their partial sums add before one reduction); with
    /// expert parallelism the MoE layers' FFN all-reduce is replaced by the all-to-alls.
    pub(super) fn all_reduce(&mut self) {
        let cm = self.cm;
        let (h, b, mt, work_n, time_n) = (cm.h, cm.b, self.mt, self.work_n, self.time_n);
        if cm.tp > 1 {
            let msg = mt * h * b;
            let p = cm.tp as f64;
            let n = if cm.model.parallel_attention { 1.0 } else { 1.0 + cm.dense_share + if cm.ep > 1 { 0.0 } else { cm.moe_share } };
            self.push(OpCost { op: Op::AllReduce, flops: 0.0, bytes: n * work_n * 2.0 * (p - 1.0) / p * msg, seconds: n * cm.all_reduce_seconds(msg) * time_n, compute_bound: false, on_pim: false, bubble_seconds: n * cm.all_reduce_seconds(msg) * (time_n - work_n) });
        }
    }

    /// Charges the expert-parallel all-to-alls: tokens dispatched to their experts' GPUs and
    /// combined back, on the MoE layers' share.
    pub(super) fn all_to_all(&mut self) {
        let cm = self.cm;
        let (h, b, mt, work_n, time_n) = (cm.h, cm.b, self.mt, self.work_n, self.time_n);
        if cm.ep > 1 {
            let pairs = mt * cm.model.experts_per_token as f64;
            let e = cm.ep as f64;
            let bytes = 2.0 * pairs / e * h * b * (e - 1.0) / e;
            let n = cm.moe_share;
            self.push(OpCost { op: Op::AllToAll, flops: 0.0, bytes: bytes * work_n * n, seconds: 2.0 * cm.all_to_all_seconds(pairs) * time_n * n, compute_bound: false, on_pim: false, bubble_seconds: 2.0 * cm.all_to_all_seconds(pairs) * (time_n - work_n) * n });
        }
    }

    /// Charges the pipeline sends: each slot ends with the micro-batch's activations sent to the
    /// next stage.
    pub(super) fn pipeline_send(&mut self) {
        let cm = self.cm;
        let (h, b, mt, m, slots) = (cm.h, cm.b, self.mt, self.m, self.slots);
        if cm.pp > 1 {
            let msg = mt * h * b;
            let (bw, lat) = cm.pp_link();
            let send = lat + msg / (bw * cm.eff.collective);
            self.push(OpCost { op: Op::PipelineSend, flops: 0.0, bytes: msg * m, seconds: send * slots, compute_bound: false, on_pim: false, bubble_seconds: send * (slots - m) });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cost::fixtures::*;
    use crate::cost::*;
    use crate::model::fixtures::*;

    #[test]
    fn expert_parallel_all_to_all() {
        // Mixtral on 2 GPUs: TP2 shards every expert; EP2 keeps 4 whole experts per GPU and adds an
        // all-to-all dispatch and combine of the token-expert pairs instead of the FFN all-reduce.
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(500);
        }
        let tp = CostModel::new(mixtral_8x7b(), h100(), ideal(), 2).unwrap();
        let ep = CostModel::new(mixtral_8x7b(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).unwrap();
        let a2a = op(&ep.breakdown(&s), Op::AllToAll);
        // 128 pairs, half of them per GPU, half of those cross: 32 x 4096 x 2 bytes each way.
        let one_way = 2e-6 + 32.0 * 4096.0 * 2.0 / 450e9;
        assert!(close(a2a.seconds, 32.0 * 2.0 * one_way));
        assert!(close(a2a.bytes, 32.0 * 2.0 * 32.0 * 4096.0 * 2.0));
        let ar_tp = op(&tp.breakdown(&s), Op::AllReduce);
        let ar_ep = op(&ep.breakdown(&s), Op::AllReduce);
        assert!(close(ar_ep.seconds, ar_tp.seconds / 2.0));
        // About the same expert bytes per GPU (all 8 experts touched): 4 whole vs 8 halves; only the
        // activations differ (fewer, wider token-expert pairs per GPU with EP).
        let (be, bt) = (op(&ep.breakdown(&s), Op::MoeExperts).bytes, op(&tp.breakdown(&s), Op::MoeExperts).bytes);
        assert!((be / bt - 1.0).abs() < 1e-3);
        assert!(CostModel::new(llama3_8b(), h100(), ideal(), 2).unwrap().with_expert_parallel(2).is_err());
        assert!(CostModel::new(mixtral_8x7b(), h100(), ideal(), 4).unwrap().with_expert_parallel(2).is_err());
    }

    #[test]
    fn tensor_parallelism_across_nodes_runs_collectives_over_the_nic() {
        // Llama-2-70B, 64 decodes, TP16 on nodes of 8: the ring's slowest hop is a 50 GB/s NIC
        // with 5 us steps, not 450 GB/s NVLink with 2 us steps.
        let mut s = BatchShape::default();
        for _ in 0..64 {
            s.add_decode(1000);
        }
        let cm = CostModel::new(llama2_70b(), h100(), ideal(), 16).unwrap().with_nodes(8).unwrap();
        assert_eq!(cm.nodes(), 2);
        let ar = op(&cm.breakdown(&s), Op::AllReduce);
        let msg = 64.0 * 8192.0 * 2.0;
        let one = 30.0 * 5e-6 + 30.0 / 16.0 * msg / 50e9;
        assert!(close(ar.seconds, 2.0 * 80.0 * one));
        let inside = CostModel::new(llama2_70b(), h100(), ideal(), 8).unwrap().with_nodes(8).unwrap();
        assert_eq!(inside.nodes(), 1);
        let ar8 = op(&inside.breakdown(&s), Op::AllReduce);
        assert!(close(ar8.seconds, 2.0 * 80.0 * (14.0 * 2e-6 + 14.0 / 8.0 * msg / 450e9)));
        // Two stages of TP8 on two nodes: the stage hop crosses the NIC, the TP ring does not.
        let pp = CostModel::new(llama2_70b(), h100(), ideal(), 8).unwrap().with_pipeline(2, Some(2)).unwrap().with_nodes(8).unwrap();
        let send = op(&pp.breakdown(&s), Op::PipelineSend);
        assert!(close(send.seconds, 3.0 * (5e-6 + 32.0 * 8192.0 * 2.0 / 50e9)));
        let mut no_nic = h100();
        no_nic.nic_bandwidth = 0.0;
        assert!(CostModel::new(llama2_70b(), no_nic, ideal(), 16).unwrap().with_nodes(8).is_err());
    }

    #[test]
    fn pipeline_bubble_arithmetic() {
        // 64 decodes on 4 stages x 4 micro-batches: the layers take 7 slots of 16 decodes
        // through 8 layers (bubble 3/7), plus one activation send per slot.
        let full = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap();
        let pp = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(4, Some(4)).unwrap();
        let mut s64 = BatchShape::default();
        let mut s16 = BatchShape::default();
        for i in 0..64 {
            s64.add_decode(1000);
            if i < 16 {
                s16.add_decode(1000);
            }
        }
        let layer_ops = |cm: &CostModel, s: &BatchShape| -> f64 {
            cm.breakdown(s).iter().filter(|c| !matches!(c.op, Op::Embedding | Op::LmHead | Op::Overhead | Op::PipelineSend)).map(|c| c.seconds).sum()
        };
        let micro_all_layers = layer_ops(&full, &s16);
        let expected = 7.0 * micro_all_layers * 20.0 / 80.0;
        assert!(close(layer_ops(&pp, &s64), expected));
        let send = op(&pp.breakdown(&s64), Op::PipelineSend);
        assert!(close(send.seconds, 7.0 * (2e-6 + 16.0 * 8192.0 * 2.0 / 300e9)));
        // Embedding and LM head are charged once on the whole batch, as without pipelining.
        assert!(close(op(&pp.breakdown(&s64), Op::LmHead).seconds, op(&full.breakdown(&s64), Op::LmHead).seconds));
        // Each GPU waits out 3 of the 7 slots of every per-layer operator and send (its stage
        // holds no micro-batch then); the embedding and LM head run once, with no bubble.
        let bubble: f64 = pp.breakdown(&s64).iter().map(|c| c.bubble_seconds).sum();
        assert!(close(bubble, 3.0 / 7.0 * (layer_ops(&pp, &s64) + send.seconds)));
        assert!(close(pp.iteration(&s64).bubble_seconds, bubble));
        assert_eq!(full.iteration(&s64).bubble_seconds, 0.0);
        // More micro-batches shrink the bubble: 16 slots of 4 decodes instead of 7 of 16.
        let pp16 = CostModel::new(llama2_70b(), a100(), ideal(), 1).unwrap().with_pipeline(4, Some(16)).unwrap();
        assert!(pp16.iteration_seconds(&s64) > 0.0);
        assert_eq!(pp.gpus(), 4);
        // No more micro-batches than sequences: one decode passes once through the 4 stages
        // (4 slots of all 80 layers' worth, 20 each), two decodes under 16 micro-batches run as 2
        // (5 slots of one decode through 20 layers), not as fractions of a sequence.
        let mut s1 = BatchShape::default();
        s1.add_decode(1000);
        assert!(close(layer_ops(&pp16, &s1), layer_ops(&full, &s1)));
        assert!(close(op(&pp16.breakdown(&s1), Op::PipelineSend).seconds, 4.0 * (2e-6 + 8192.0 * 2.0 / 300e9)));
        let mut s2 = s1;
        s2.add_decode(1000);
        assert!(close(layer_ops(&pp16, &s2), 5.0 * layer_ops(&full, &s1) * 20.0 / 80.0));
    }

    #[test]
    fn parallel_blocks_all_reduce_once_per_layer() {
        let seq = CostModel::new(opt_66b(), h100(), ideal(), 8).unwrap();
        let par = CostModel::new(crate::model::ModelSpec { parallel_attention: true, ..opt_66b() }, h100(), ideal(), 8).unwrap();
        let mut s = BatchShape::default();
        for _ in 0..32 {
            s.add_decode(1000);
        }
        let (a, b) = (op(&seq.breakdown(&s), Op::AllReduce), op(&par.breakdown(&s), Op::AllReduce));
        assert!(close(b.seconds, 0.5 * a.seconds) && close(b.bytes, 0.5 * a.bytes));
        // One ring all-reduce of 32 x 9216 x 2 bytes over 8 GPUs per layer, 64 layers.
        let msg = 32.0 * 9216.0 * 2.0;
        assert!(close(b.bytes, 64.0 * 2.0 * 7.0 / 8.0 * msg));
    }
}
