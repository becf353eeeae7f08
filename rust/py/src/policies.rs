//! Built-in routers and schedulers as Python classes: the same Rust objects the simulator
//! calls natively.

use crate::errors::{from_json, to_py};
use fleetwise_core::kv::BlockManager;
use fleetwise_core::request::{Request, Status};
use fleetwise_core::router::{InstanceLoad, Router, RouterConfig};
use fleetwise_core::scheduler::{Batch, Scheduler, Queues, SchedulerConfig};
use crate::plugins::PyBatchScheduler;
use pyo3::prelude::*;

/// A built-in router, configured by its scenario JSON (`{"kind": ...}`).
#[pyclass(name = "Router", module = "fleetwise._core")]
pub struct PyRouter {
    inner: Box<dyn Router>,
}

#[pymethods]
impl PyRouter {
    /// Builds the router `config_json` describes for `instances` instances; `seed` feeds random routers.
    #[new]
    #[pyo3(signature = (config_json, instances, seed=0))]
    fn new(config_json: &str, instances: usize, seed: u64) -> PyResult<Self> {
        let cfg: RouterConfig = from_json("router", config_json)?;
        Ok(PyRouter { inner: cfg.build(seed, instances).map_err(to_py)? })
    }

    /// Picks an instance for a request of `prompt_tokens`, given each instance's outstanding
    /// tokens, waiting and running counts (lists of equal length).
    #[pyo3(signature = (prompt_tokens, outstanding_tokens, waiting=None, running=None))]
    fn route(&mut self, prompt_tokens: u32, outstanding_tokens: Vec<u64>, waiting: Option<Vec<u32>>, running: Option<Vec<u32>>) -> PyResult<usize> {
        let n = outstanding_tokens.len();
        if n == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("route needs at least one instance"));
        }
        let waiting = waiting.unwrap_or_else(|| vec![0; n]);
        let running = running.unwrap_or_else(|| vec![0; n]);
        if waiting.len() != n || running.len() != n {
            return Err(pyo3::exceptions::PyValueError::new_err("outstanding_tokens, waiting and running must have equal lengths"));
        }
        let loads: Vec<InstanceLoad> = (0..n).map(|i| InstanceLoad { outstanding_tokens: outstanding_tokens[i], waiting: waiting[i], running: running[i], ..Default::default() }).collect();
        self.inner.route(&Request::new(0, prompt_tokens.max(1), 1), &loads).map_err(to_py)
    }
}

/// A built-in scheduler driven step by step from Python, exactly as an instance drives it
/// in the simulator: add requests, ask for the next batch, report it done.
#[pyclass(name = "Scheduler", module = "fleetwise._core")]
pub struct PyScheduler {
    inner: Box<dyn Scheduler>,
    kv: BlockManager,
    queues: Queues,
    reqs: Vec<Request>,
    ids: Vec<u64>,
    batch: Batch,
}

#[pymethods]
impl PyScheduler {
    /// A scheduler from its scenario JSON (`{"kind": "vllm", ...}`) over a KV cache of
    /// `num_blocks` blocks of `block_size` tokens, keeping `watermark` blocks free on admission;
    /// `block_bytes` (one block's bytes on one GPU) sizes the swap space in blocks. `planner`, a
    /// Python scheduler bridge (`fleetwise.policy.bridge.SchedulerBridge`), plans each step within
    /// the configuration's limits, exactly as in the simulator. `context_tokens` is the model's
    /// context (its `max_position_embeddings`), which Orca's `max-len` reservation reserves.
    #[new]
    #[pyo3(signature = (config_json, num_blocks, block_size=16, watermark=None, block_bytes=2 << 20, planner=None, context_tokens=8192))]
    fn new(config_json: &str, num_blocks: u32, block_size: u32, watermark: Option<u32>, block_bytes: u64, planner: Option<Py<PyAny>>, context_tokens: u32) -> PyResult<Self> {
        let cfg: SchedulerConfig = from_json("scheduler", config_json)?;
        if block_size == 0 {
            return Err(crate::errors::ConfigError::new_err("block_size must be at least 1"));
        }
        let watermark = watermark.unwrap_or_else(|| fleetwise_core::instance::kv_watermark(num_blocks));
        let inner = match planner {
            Some(bridge) => Box::new(cfg.vllm_v1_loop(Box::new(PyBatchScheduler::new(bridge, Default::default())), context_tokens)) as Box<dyn Scheduler>,
            None => cfg.build(block_bytes, context_tokens).map_err(to_py)?,
        };
        Ok(PyScheduler { inner, kv: BlockManager::new(num_blocks, block_size, watermark), queues: Queues::default(), reqs: Vec::new(), ids: Vec::new(), batch: Batch::default() })
    }

    /// Queues request `request_id` with `prompt` input tokens and `output` tokens to generate,
    /// arriving at `arrival` seconds (what a policy sees as its arrival).
    #[pyo3(signature = (request_id, prompt, output, arrival=0.0))]
    fn add(&mut self, request_id: u64, prompt: u32, output: u32, arrival: f64) -> PyResult<()> {
        if prompt == 0 || output == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err("prompt and output must be at least 1"));
        }
        if !(arrival >= 0.0 && arrival.is_finite()) {
            return Err(pyo3::exceptions::PyValueError::new_err("arrival must be a finite number of seconds >= 0"));
        }
        let mut r = Request::new((arrival * 1e9).round() as u64, prompt, output);
        r.status = Status::Waiting;
        self.queues.waiting.push_back(self.reqs.len() as u32);
        self.reqs.push(r);
        self.ids.push(request_id);
        Ok(())
    }

    /// Forms the next batch: a list of `(request_id, tokens)`; empty when there is nothing to run.
    /// Requests preempted while forming it are listed by `preempted()`.
    fn schedule(&mut self) -> PyResult<Vec<(u64, u32)>> {
        self.batch.clear();
        self.inner.schedule(&mut self.queues, &mut self.reqs, &mut self.kv, &mut self.batch);
        if let Some(e) = self.inner.take_error() {
            return Err(to_py(e));
        }
        Ok(self.batch.items.iter().map(|it| (self.ids[it.req as usize], it.tokens)).collect())
    }

    /// Marks the last batch as run: advances tokens and returns `(request_id, finished)` for every
    /// request that sampled a token.
    fn complete(&mut self) -> Vec<(u64, bool)> {
        let mut sampled = Vec::new();
        for it in &self.batch.items {
            let r = &mut self.reqs[it.req as usize];
            if r.status == Status::Finished {
                continue; // aborted while its batch ran
            }
            r.computed += it.tokens;
            if r.computed != r.known_tokens() {
                continue;
            }
            r.generated += 1;
            let done = r.generated == r.output;
            if done {
                self.kv.release(r.blocks);
                r.blocks = 0;
                r.status = Status::Finished;
            }
            sampled.push((self.ids[it.req as usize], done));
        }
        let reqs = &self.reqs;
        self.queues.running.retain(|&i| reqs[i as usize].status == Status::Running);
        self.batch.clear();
        sampled
    }

    /// Aborts request `request_id` (its client went away), as vLLM does: it leaves its queue, its
    /// KV blocks are freed and it never samples again, even from a batch already formed. Returns
    /// False if it had already finished or was never added.
    fn abort(&mut self, request_id: u64) -> bool {
        let Some(idx) = self.ids.iter().rposition(|&id| id == request_id) else { return false };
        fleetwise_core::scheduler::abort(idx as u32, &mut self.queues, &mut self.reqs, &mut self.kv, self.inner.as_mut())
    }

    /// Request ids waiting for admission, in service order.
    fn waiting(&self) -> Vec<u64> {
        self.queues.waiting.iter().map(|&i| self.ids[i as usize]).collect()
    }

    /// Request ids holding KV, oldest admission first.
    fn running(&self) -> Vec<u64> {
        self.queues.running.iter().map(|&i| self.ids[i as usize]).collect()
    }

    /// Number of requests preempted while forming the last batch.
    fn preempted(&self) -> u32 {
        self.batch.preempted
    }

    /// KV blocks in use.
    fn used_blocks(&self) -> u32 {
        self.kv.used()
    }

    /// KV blocks free.
    fn free_blocks(&self) -> u32 {
        self.kv.free()
    }
}
