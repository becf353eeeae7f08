//! `CostModel`: the core's roofline cost model for one instance, callable from Python.

use crate::errors::{from_json, to_py};
use fleetwise_core::calibration::Efficiency;
use fleetwise_core::cost::{expected_tokens_per_step, BatchShape, CostModel, InstanceSpec, Quantization, SpecSeq, SpeculativeConfig, Speculator};
use fleetwise_core::hardware::{GpuSpec, PimSpec};
use fleetwise_core::offload::OffloadSpec;
use fleetwise_core::memory::{MemoryConfig, MemoryPlan};
use fleetwise_core::model::ModelSpec;
use fleetwise_core::time::secs_to_ns;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The roofline cost model of one instance (a model on `tp` GPUs of one kind).
///
/// `prefills` are `(tokens, cached_tokens, samples)` triples (a chunk of `tokens` after
/// `cached_tokens` already in the KV cache; `samples` when it ends the prompt) and `decodes` the
/// context length of each decoding sequence, including the token being processed.
#[pyclass(name = "CostModel", module = "fleetwise._core", frozen)]
pub struct PyCostModel {
    inner: CostModel,
    spec: InstanceSpec,
}

/// The batch of `prefills` and `decodes` as `cost` sees it (attention within its model's window).
fn shape(cost: &CostModel, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> BatchShape {
    let mut s = cost.empty_shape();
    for (q, c, samples) in prefills {
        s.add_prefill(q, c, samples);
    }
    for ctx in decodes {
        s.add_decode(ctx);
    }
    s
}

#[pymethods]
impl PyCostModel {
    /// Builds a cost model from JSON specs of the model, GPU and calibration, on `tp` x `pp`
    /// GPUs (`microbatches` per iteration with pipelining; default pp), optionally power-capped,
    /// optionally quantized (`quantization_json`: the core's `Quantization`; default none).
    #[new]
    #[pyo3(signature = (model_json, gpu_json, calibration_json, tp, pp=1, microbatches=None, power_cap_watts=None, gpus_per_node=8, pim_json=None, offload_json=None, ep=1, quantization_json=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(model_json: &str, gpu_json: &str, calibration_json: &str, tp: u32, pp: u32, microbatches: Option<u32>, power_cap_watts: Option<f64>, gpus_per_node: u32, pim_json: Option<&str>, offload_json: Option<&str>, ep: u32, quantization_json: Option<&str>) -> PyResult<Self> {
        let quantization: Quantization = quantization_json.map(|j| from_json("quantization", j)).transpose()?.unwrap_or_default();
        let pim: Option<PimSpec> = pim_json.map(|j| from_json("pim", j)).transpose()?;
        let offload: Option<OffloadSpec> = offload_json.map(|j| from_json("offload", j)).transpose()?;
        let model: ModelSpec = from_json("model", model_json)?;
        let gpu: GpuSpec = from_json("gpu", gpu_json)?;
        let eff: Efficiency = from_json("calibration", calibration_json)?;
        let spec = InstanceSpec { model, gpu, efficiency: eff, tp, pp, microbatches, ep, gpus_per_node, pim, offload, power_cap_watts, quantization };
        let cm = CostModel::build(&spec).map_err(to_py)?;
        Ok(PyCostModel { inner: cm, spec })
    }

    /// Predicted duration of one iteration, seconds.
    #[pyo3(signature = (prefills=vec![], decodes=vec![]))]
    fn iteration_seconds(&self, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> f64 {
        self.inner.iteration_seconds(&shape(&self.inner, prefills, decodes))
    }

    /// `iteration_seconds(decodes=[c])` for every context c = 1 ..= `longest`: one sequence
    /// decoding alone, tabulated in one call (the idealized runtime's decode table).
    fn solo_decode_seconds(&self, longest: u64) -> Vec<f64> {
        (1..=longest).map(|c| self.inner.iteration_seconds(&shape(&self.inner, vec![], vec![c]))).collect()
    }

    /// `iteration_seconds(prefills=[(p, 0, True)])` for every prompt length p of `lengths`: one
    /// whole prompt prefilled alone, in one call (the idealized runtime's prefill table).
    fn solo_prefill_seconds(&self, lengths: Vec<u64>) -> Vec<f64> {
        lengths.into_iter().map(|p| self.inner.iteration_seconds(&shape(&self.inner, vec![(p, 0, true)], vec![]))).collect()
    }

    /// Predicted duration of one iteration in integer nanoseconds, rounded exactly as the simulator does.
    #[pyo3(signature = (prefills=vec![], decodes=vec![]))]
    fn iteration_ns(&self, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> u64 {
        secs_to_ns(self.inner.iteration_seconds(&shape(&self.inner, prefills, decodes)))
    }

    /// Per-stage times of a batch through an asynchronous pipeline, integer ns (rounded as the
    /// simulator does), stage 1 first; one stage without pipelining.
    #[pyo3(signature = (prefills=vec![], decodes=vec![]))]
    fn stage_ns(&self, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> Vec<u64> {
        self.inner.stage_costs(&shape(&self.inner, prefills, decodes)).seconds.iter().map(|&s| secs_to_ns(s)).collect()
    }

    /// Per-operator breakdown: a list of dicts with op, flops, bytes, seconds, compute_bound.
    #[pyo3(signature = (prefills=vec![], decodes=vec![]))]
    fn breakdown<'py>(&self, py: Python<'py>, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .breakdown(&shape(&self.inner, prefills, decodes))
            .into_iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("op", serde_json::to_value(c.op).unwrap().as_str().unwrap_or(""))?;
                d.set_item("flops", c.flops)?;
                d.set_item("bytes", c.bytes)?;
                d.set_item("seconds", c.seconds)?;
                d.set_item("compute_bound", c.compute_bound)?;
                d.set_item("on_pim", c.on_pim)?;
                d.set_item("bubble_seconds", c.bubble_seconds)?;
                Ok(d)
            })
            .collect()
    }

    /// Peak activation bytes on one GPU for an iteration of `tokens` tokens, `sampled` of them sampled.
    fn activation_bytes(&self, tokens: u64, sampled: u64) -> u64 {
        self.inner.activation_bytes(tokens, sampled)
    }

    /// The memory plan of one GPU as a dict; raises CapacityError when the model does not fit.
    fn memory_plan<'py>(&self, py: Python<'py>, memory_json: &str, max_tokens: u64, max_seqs: u64) -> PyResult<Bound<'py, PyDict>> {
        let cfg: MemoryConfig = from_json("memory", memory_json)?;
        let plan = MemoryPlan::new(&self.inner, &cfg, max_tokens, max_seqs).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("usable_bytes", plan.usable_bytes)?;
        d.set_item("weight_bytes", plan.weight_bytes)?;
        d.set_item("activation_bytes", plan.activation_bytes)?;
        d.set_item("kv_bytes", plan.kv_bytes)?;
        d.set_item("kv_bytes_per_token", plan.kv_bytes_per_token)?;
        d.set_item("block_size", plan.block_size)?;
        d.set_item("num_blocks", plan.num_blocks)?;
        Ok(d)
    }

    /// Weight bytes of the whole model (all GPUs), quantized layers at their quantized width.
    fn weight_bytes(&self) -> u64 {
        self.inner.model_weight_bytes()
    }

    /// Weight bytes on one GPU (its pipeline stage, its tensor-parallel shard).
    fn weight_bytes_per_gpu(&self) -> u64 {
        self.inner.weight_bytes_per_gpu()
    }

    /// KV-cache bytes per token on one GPU.
    fn kv_bytes_per_token(&self) -> u64 {
        self.inner.kv_bytes_per_token_per_gpu()
    }

    /// One speculative decoding step (`speculative_json`: the core's `SpeculativeConfig`) of
    /// `decodes` sequences, each at the given context (including the token being processed) and
    /// proposing k tokens (under a batch-size table, its k for this many sequences; under adaptive
    /// verification, the k verified that gives these decodes the most tokens per second; with
    /// k = 0 the plain decode and the proposer's steps; with varying draft lengths, the
    /// expectation over the lengths): (step seconds, the verify pass's seconds, expected tokens
    /// per sequence per step, k).
    fn speculative_step(&self, speculative_json: &str, decodes: Vec<u64>) -> PyResult<(f64, f64, f64, u32)> {
        let cfg: SpeculativeConfig = from_json("speculative", speculative_json)?;
        let sp = Speculator::build(&cfg, &self.spec).map_err(to_py)?;
        // Steady at this batch size: the k a dynamic table gives after a step of as many
        // requests, or adaptive verification's for these decodes (under acceptance classes, the
        // decodes apportioned to the classes by their shares; k is the most any verifies).
        let classes = sp.apportioned_classes(decodes.len());
        let cached: Vec<(u64, usize)> = decodes.iter().zip(classes).map(|(&c, class)| (c.saturating_sub(1), class)).collect();
        let granted = sp.steady_k(&self.inner, &cached);
        let k = granted.iter().copied().max().unwrap_or_else(|| sp.k_after(0));
        // Varying draft lengths: the expectation over a step whose proposals all hold one length
        // (exact at one decode), each length by its probability.
        let (mut step, mut verify, mut tokens) = (0.0, 0.0, 0.0);
        for (len, p) in sp.draft_length_probabilities().into_iter().enumerate().filter(|&(_, p)| p > 0.0) {
            let ks: Vec<u32> = granted.iter().map(|&j| j.min(len as u32 + 1)).collect();
            let seqs: Vec<SpecSeq> = cached.iter().zip(&ks).map(|(&(c, _), &k)| SpecSeq { cached: c, k }).collect();
            let rest = self.inner.empty_shape();
            let (shape, chunks) = sp.verify_shape(&rest, &seqs);
            verify += p * self.inner.iteration_verify(&shape, &chunks).seconds;
            let top = ks.iter().copied().max().unwrap_or(k);
            tokens += p * if ks.iter().all(|&j| j == top) {
                sp.expected_tokens(sp.depth(top))
            } else {
                cached.iter().zip(&ks).map(|(&(_, c), &j)| expected_tokens_per_step(&sp.class_rates(c)[..sp.depth(j) as usize])).sum::<f64>() / ks.len() as f64
            };
            step += p * sp.step(&self.inner, &rest, &seqs).seconds;
        }
        Ok((step, verify, tokens, k))
    }

    /// The proposer's memory on each GPU: (weight bytes, KV bytes per token), as an instance
    /// that speculates takes them out of its KV cache.
    fn speculative_memory(&self, speculative_json: &str) -> PyResult<(u64, u64)> {
        let cfg: SpeculativeConfig = from_json("speculative", speculative_json)?;
        let sp = Speculator::build(&cfg, &self.spec).map_err(to_py)?;
        Ok((sp.weight_bytes_per_gpu, sp.kv_bytes_per_token_per_gpu))
    }

    /// One speculative step in integer nanoseconds, rounded as the simulator does: `prefills` and
    /// `decodes` run plainly beside `speculating` sequences, each `(cached tokens, draft tokens)`
    /// (with none speculating and no prefill chunk, the plain iteration's time; prefill chunks
    /// run through the proposer too).
    #[pyo3(signature = (speculative_json, prefills=vec![], decodes=vec![], speculating=vec![]))]
    fn speculative_step_ns(&self, speculative_json: &str, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>, speculating: Vec<(u64, u32)>) -> PyResult<u64> {
        let cfg: SpeculativeConfig = from_json("speculative", speculative_json)?;
        let sp = Speculator::build(&cfg, &self.spec).map_err(to_py)?;
        let rest = shape(&self.inner, prefills, decodes);
        let seqs: Vec<SpecSeq> = speculating.into_iter().map(|(cached, k)| SpecSeq { cached, k }).collect();
        if sp.runs_plain(&rest, &seqs) {
            return Ok(secs_to_ns(self.inner.iteration_seconds(&rest)));
        }
        Ok(secs_to_ns(sp.step(&self.inner, &rest, &seqs).seconds))
    }

    /// Busy power of one GPU, watts, for an iteration of the given batch: as the simulator charges
    /// it, at the compute-bound share of the time its kernels run; the stall on streamed weights
    /// (`weight_stall_seconds`) is idle time, not part of that share.
    #[pyo3(signature = (prefills=vec![], decodes=vec![]))]
    fn busy_watts(&self, prefills: Vec<(u64, u64, bool)>, decodes: Vec<u64>) -> f64 {
        let it = self.inner.iteration(&shape(&self.inner, prefills, decodes));
        if it.active_seconds() > 0.0 { self.inner.power().busy_watts(it.compute_share()) } else { self.inner.power().idle }
    }
}
