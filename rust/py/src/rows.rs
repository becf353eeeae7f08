//! The rows that cross between the core and the Python policy bridges (`fleetwise.policy.bridge`
//! and friends), as named objects both ways: the core's state goes out as frozen classes with named
//! fields, and the bridges' answers come back as dicts read by key.

use fleetwise_core::router::InstanceLoad;
use pyo3::prelude::*;

/// A request as the core hands it to a policy bridge: the fields of `fleetwise.policy.RequestView`.
#[pyclass(name = "RequestRow", module = "fleetwise._core", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct RequestRow {
    /// The core's request index.
    pub id: u32,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Output tokens the request generates.
    pub max_output_tokens: u32,
    /// Tokens with KV in the cache (prompt and generated).
    pub computed_tokens: u32,
    /// Tokens generated so far.
    pub generated_tokens: u32,
    /// Prompt tokens found in the prefix cache on admission.
    pub cached_tokens: u32,
    /// Arrival time, seconds.
    pub arrival: f64,
    /// Times it was preempted.
    pub preemptions: u32,
    /// Hashes of the prompt's leading blocks (only for routing and decode choices; empty otherwise).
    pub prefix_hashes: Vec<u64>,
}

#[pymethods]
impl RequestRow {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// An instance's load as the core hands it to a policy bridge (the core's `InstanceLoad`).
#[pyclass(name = "LoadRow", module = "fleetwise._core", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct LoadRow {
    /// Prompt plus generated tokens of unfinished requests sent to it.
    pub outstanding_tokens: u64,
    /// Requests queued for admission.
    pub waiting: u32,
    /// Requests holding KV.
    pub running: u32,
    /// Prompt tokens of the request being placed that it holds in its prefix cache.
    pub cached_prefix_tokens: u64,
    /// KV blocks in use.
    pub kv_used_blocks: u32,
    /// KV blocks in all.
    pub kv_total_blocks: u32,
}

impl From<&InstanceLoad> for LoadRow {
    fn from(l: &InstanceLoad) -> Self {
        LoadRow { outstanding_tokens: l.outstanding_tokens, waiting: l.waiting, running: l.running, cached_prefix_tokens: l.cached_prefix_tokens, kv_used_blocks: l.kv_used_blocks, kv_total_blocks: l.kv_total_blocks }
    }
}

#[pymethods]
impl LoadRow {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// The loads of several instances handed to a policy bridge as one object: a row is made only when
/// indexed, so a call's cost does not grow with the instance count unless the policy reads them all.
#[pyclass(name = "LoadTable", module = "fleetwise._core", frozen, sequence)]
#[derive(Debug, Clone)]
pub struct LoadTable {
    loads: Vec<InstanceLoad>,
}

impl From<&[InstanceLoad]> for LoadTable {
    fn from(loads: &[InstanceLoad]) -> Self {
        LoadTable { loads: loads.to_vec() }
    }
}

#[pymethods]
impl LoadTable {
    fn __len__(&self) -> usize {
        self.loads.len()
    }

    fn __getitem__(&self, index: isize) -> PyResult<LoadRow> {
        let n = self.loads.len() as isize;
        let i = if index < 0 { index + n } else { index };
        if !(0..n).contains(&i) {
            return Err(pyo3::exceptions::PyIndexError::new_err(format!("load row {index} of {n}")));
        }
        Ok(LoadRow::from(&self.loads[i as usize]))
    }

    fn __repr__(&self) -> String {
        format!("LoadTable({} instances)", self.loads.len())
    }
}

/// An idle prefix-cache entry as the core offers it to a prefix cache bridge.
#[pyclass(name = "IdlePrefixRow", module = "fleetwise._core", frozen, get_all)]
#[derive(Debug, Clone)]
pub struct IdlePrefixRow {
    /// The block hash.
    pub hash: u64,
    /// When it was last released (a counter of cache events).
    pub last_use: u64,
    /// Requests that found it cached.
    pub hits: u32,
}

#[pymethods]
impl IdlePrefixRow {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// A router bridge's answer: `{"entry": position among the entry instances, "decode": position
/// among the decode instances or None}`.
#[derive(Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct RouteAnswer {
    /// Where the request is admitted (and prefilled).
    pub entry: usize,
    /// Where it decodes after a separate prefill.
    pub decode: Option<usize>,
}

/// A scheduler bridge's answer: the fields of `fleetwise.policy.StepPlan` by name, orders as core
/// request indices (None: the engine's order).
#[derive(Debug, FromPyObject)]
#[pyo3(from_item_all)]
pub struct PlanAnswer {
    /// Most tokens this iteration.
    pub token_budget: u32,
    /// Most sequences this iteration.
    pub max_num_seqs: u32,
    /// Order of the running requests.
    pub running_order: Option<Vec<u32>>,
    /// Order of admission.
    pub waiting_order: Option<Vec<u32>>,
    /// Order of preemption victims.
    pub victim_order: Option<Vec<u32>>,
    /// Most prompt tokens of one request this iteration.
    pub max_prefill_chunk: Option<u32>,
}
