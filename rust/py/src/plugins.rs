//! A user's Python policies (router, scheduler, prefix cache, expert cache, decode choice) plugged
//! into the core: the core calls back into Python through bridge objects (`fleetwise.policy.bridge`
//! and friends) that turn the rows of `rows.rs` into view objects and decisions back into named
//! answers.

use fleetwise_core::error::{Error, Result};
use fleetwise_core::moe::ExpertCachePolicy;
use fleetwise_core::prefix::{IdleEntry, PrefixEvictor};
use fleetwise_core::request::Request;
use fleetwise_core::router::{InstanceLoad, Router};
use fleetwise_core::scheduler::{BatchScheduler, StepPlan, StepState};
use fleetwise_core::sim::DecodeChoice;
use crate::rows::{IdlePrefixRow, LoadRow, LoadTable, PlanAnswer, RequestRow, RouteAnswer};
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

/// The first Python exception a policy raised, kept to become the `__cause__` of the PolicyError.
pub type ErrorSlot = Arc<Mutex<Option<PyErr>>>;

fn failed(slot: &ErrorSlot, what: &str, err: PyErr) -> Error {
    let text = err.to_string();
    let message = match text.strip_prefix("PolicyAnswerError: ") {
        // The bridge's own check of the answer (fleetwise.policy.bridge): it says what was wrong.
        Some(rest) => format!("{what}: {rest}"),
        None => format!("{what} raised {text}"),
    };
    let mut s = slot.lock().expect("error slot");
    if s.is_none() {
        *s = Some(err);
    }
    Error::Policy { message }
}

/// What a bridge calls its policy in messages (its `label` attribute), else `default`.
fn label_of(bridge: &Py<PyAny>, default: &str) -> String {
    Python::with_gil(|py| bridge.getattr(py, "label").and_then(|l| l.extract::<String>(py)).unwrap_or_else(|_| default.to_string()))
}

/// The row of request `index` (`req`) with `cached_tokens` of its prompt cached and `hashes`.
fn request_row(index: u32, req: &Request, cached_tokens: u32, hashes: Vec<u64>) -> RequestRow {
    RequestRow {
        id: index,
        prompt_tokens: req.prompt,
        max_output_tokens: req.output,
        computed_tokens: req.computed,
        generated_tokens: req.generated,
        cached_tokens,
        arrival: req.arrival as f64 * 1e-9,
        preemptions: req.preemptions,
        prefix_hashes: hashes,
    }
}

fn load_rows(loads: &[InstanceLoad]) -> Vec<LoadRow> {
    loads.iter().map(LoadRow::from).collect()
}

/// A Python router bridge: `bridge.route(request, entry_loads, decode_loads)` (a `RequestRow`
/// whose `id` the bridge numbers itself, and two `LoadTable`s) returns a `RouteAnswer`.
pub struct PyRouterPlugin {
    bridge: Py<PyAny>,
    slot: ErrorSlot,
    label: String,
}

impl PyRouterPlugin {
    /// Wraps `bridge`; a Python exception it raises lands in `slot`.
    pub fn new(bridge: Py<PyAny>, slot: ErrorSlot) -> Self {
        let label = label_of(&bridge, "the router policy");
        PyRouterPlugin { bridge, slot, label }
    }
}

impl Router for PyRouterPlugin {
    fn route(&mut self, req: &Request, loads: &[InstanceLoad]) -> Result<usize> {
        self.route_pair(req, loads, &[]).map(|p| p.0)
    }

    fn route_pair(&mut self, req: &Request, entry: &[InstanceLoad], decoders: &[InstanceLoad]) -> Result<(usize, Option<usize>)> {
        let row = request_row(0, req, 0, req.hashes.to_vec());
        Python::with_gil(|py| {
            self.bridge
                .call_method1(py, "route", (row, LoadTable::from(entry), LoadTable::from(decoders)))
                .and_then(|r| r.extract::<RouteAnswer>(py))
                .map(|a| (a.entry, a.decode))
                .map_err(|err| failed(&self.slot, &format!("{}: route()", self.label), err))
        })
    }
}

/// A Python scheduler bridge: `bridge.plan(waiting, running, free, total, block_size, step, now)`
/// (`RequestRow`s, KV block counts, the step and the clock) returns a `PlanAnswer`.
pub struct PyBatchScheduler {
    bridge: Py<PyAny>,
    slot: ErrorSlot,
    label: String,
}

impl PyBatchScheduler {
    /// Wraps `bridge`; a Python exception it raises lands in `slot`.
    pub fn new(bridge: Py<PyAny>, slot: ErrorSlot) -> Self {
        let label = label_of(&bridge, "the scheduler policy");
        PyBatchScheduler { bridge, slot, label }
    }
}

impl BatchScheduler for PyBatchScheduler {
    fn plan(&mut self, s: &StepState) -> Result<StepPlan> {
        let tpe = s.kv.prefix_cache().map_or(0, |c| c.tokens_per_entry());
        let row = |&i: &u32| -> RequestRow {
            let r = &s.reqs[i as usize];
            request_row(i, r, r.cache_refs * tpe, Vec::new())
        };
        let waiting: Vec<RequestRow> = s.queues.waiting.iter().map(row).collect();
        let running: Vec<RequestRow> = s.queues.running.iter().map(row).collect();
        let (free, total, block) = (s.kv.free(), s.kv.total(), s.kv.block_size());
        Python::with_gil(|py| {
            let p: PlanAnswer = self
                .bridge
                .call_method1(py, "plan", (waiting, running, free, total, block, s.step, s.now as f64 * 1e-9))
                .and_then(|r| r.extract(py))
                .map_err(|err| failed(&self.slot, &format!("{}: plan()", self.label), err))?;
            Ok(StepPlan { token_budget: p.token_budget, max_num_seqs: p.max_num_seqs, running_order: p.running_order, waiting_order: p.waiting_order, victim_order: p.victim_order, max_prefill_chunk: p.max_prefill_chunk })
        })
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// A Python prefix-cache bridge: `bridge.victim(idle)` with `IdlePrefixRow`s (least recently
/// released first) returns the hash to evict.
pub struct PyEvictor {
    bridge: Py<PyAny>,
    slot: ErrorSlot,
    label: String,
}

impl PyEvictor {
    /// Wraps `bridge`; a Python exception it raises lands in `slot`.
    pub fn new(bridge: Py<PyAny>, slot: ErrorSlot) -> Self {
        let label = label_of(&bridge, "the prefix cache policy");
        PyEvictor { bridge, slot, label }
    }
}

impl PrefixEvictor for PyEvictor {
    fn victim(&mut self, idle: &[IdleEntry]) -> Result<u64> {
        let rows: Vec<IdlePrefixRow> = idle.iter().map(|e| IdlePrefixRow { hash: e.hash, last_use: e.last_use, hits: e.hits }).collect();
        Python::with_gil(|py| self.bridge.call_method1(py, "victim", (rows,)).and_then(|r| r.extract::<u64>(py)).map_err(|err| failed(&self.slot, &format!("{}: victim()", self.label), err)))
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// A Python expert cache bridge of one GPU (`fleetwise.policy.expert_cache.ExpertCacheBridge`):
/// `bridge.resident_all()` lists each layer's resident experts at the start, and
/// `bridge.lookup(layer, hits, misses)` applies one layer's lookups to the policy and returns the
/// layer's resident experts after them. The core reads residency from that mirror, so asking
/// whether an expert is cached costs no call into Python.
pub struct PyExpertCache {
    bridge: Py<PyAny>,
    slot: ErrorSlot,
    label: String,
    resident: Vec<Vec<bool>>,
}

impl PyExpertCache {
    /// Wraps `bridge` for the `layers` layers of `experts` experts of one GPU; a Python exception
    /// it raises lands in `slot`.
    pub fn new(bridge: Py<PyAny>, slot: ErrorSlot, layers: u32, experts: u32) -> Result<Self> {
        let label = label_of(&bridge, "the expert cache policy");
        let rows: Vec<Vec<u32>> = Python::with_gil(|py| bridge.call_method0(py, "resident_all").and_then(|r| r.extract(py))).map_err(|err| failed(&slot, &format!("{label}: resident()"), err))?;
        if rows.len() != layers as usize {
            return Err(Error::Policy { message: format!("{label}: resident_all() gave {} layers, not {layers}", rows.len()) });
        }
        let mut cache = PyExpertCache { bridge, slot, label, resident: vec![vec![false; experts as usize]; layers as usize] };
        for (layer, row) in rows.into_iter().enumerate() {
            cache.mirror(layer, row)?;
        }
        Ok(cache)
    }

    /// Makes `experts` the resident set of `layer`.
    fn mirror(&mut self, layer: usize, experts: Vec<u32>) -> Result<()> {
        let n = self.resident[layer].len();
        let set = &mut self.resident[layer];
        set.iter_mut().for_each(|r| *r = false);
        for e in experts {
            match set.get_mut(e as usize) {
                Some(r) => *r = true,
                None => return Err(Error::Policy { message: format!("{}: layer {layer} lists expert {e} resident; this GPU's experts are 0..{n}", self.label) }),
            }
        }
        Ok(())
    }
}

impl ExpertCachePolicy for PyExpertCache {
    fn contains(&self, layer: u32, expert: u16) -> bool {
        self.resident[layer as usize][expert as usize]
    }

    fn lookup(&mut self, layer: u32, hits: &[u16], misses: &[u16]) -> Result<()> {
        let row: Vec<u32> = Python::with_gil(|py| self.bridge.call_method1(py, "lookup", (layer, hits.to_vec(), misses.to_vec())).and_then(|r| r.extract(py)))
            .map_err(|err| failed(&self.slot, &format!("{}: lookup of layer {layer}", self.label), err))?;
        self.mirror(layer as usize, row)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// A Python decode choice bridge (`fleetwise.policy.decode_choice.DecodeChoiceBridge`):
/// `bridge.choose(request, decoders, loads, preferred)` (a `RequestRow`, the decode instances'
/// cluster indices and `LoadRow`s, the router's pick) returns the decode instances to try for the
/// prefilled request, best first.
pub struct PyDecodeChoice {
    bridge: Py<PyAny>,
    slot: ErrorSlot,
    label: String,
}

impl PyDecodeChoice {
    /// Wraps `bridge`; a Python exception it raises lands in `slot`.
    pub fn new(bridge: Py<PyAny>, slot: ErrorSlot) -> Self {
        let label = label_of(&bridge, "the decode choice policy");
        PyDecodeChoice { bridge, slot, label }
    }
}

impl DecodeChoice for PyDecodeChoice {
    fn candidates(&mut self, index: u32, req: &Request, decoders: &[u32], loads: &[InstanceLoad], preferred: Option<u32>) -> Result<Vec<u32>> {
        // The request has just been prefilled on a prefill instance; cached prompt tokens are that
        // instance's business and not shown.
        let row = request_row(index, req, 0, req.hashes.to_vec());
        Python::with_gil(|py| {
            self.bridge
                .call_method1(py, "choose", (row, decoders.to_vec(), load_rows(loads), preferred))
                .and_then(|r| r.extract::<Vec<u32>>(py))
                .map_err(|err| failed(&self.slot, &format!("{}: choose()", self.label), err))
        })
    }
}
