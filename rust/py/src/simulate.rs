//! `simulate`: one call runs the whole simulation; columns come back as numpy arrays.

use crate::errors::{from_json, to_py};
use fleetwise_core::moe::{replay_hits, CachePolicy, ExpertCacheFactory, ExpertCachePolicy, RoutingTrace};
use fleetwise_core::request::Request;
use fleetwise_core::request_columns::RequestColumns;
use fleetwise_core::sim::{simulate_streaming, Control, Plugins, SimConfig, Workload};
use crate::plugins::{ErrorSlot, PyBatchScheduler, PyDecodeChoice, PyEvictor, PyExpertCache, PyRouterPlugin};
use fleetwise_core::prefix::PrefixEvictor;
use fleetwise_core::scheduler::BatchScheduler;
use std::collections::HashMap;
use std::sync::Arc;
use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Follows and cancels a running `simulate` call from another thread.
#[pyclass(name = "SimControl", module = "fleetwise._core", frozen)]
#[derive(Default)]
pub struct PySimControl {
    inner: Arc<Control>,
}

#[pymethods]
impl PySimControl {
    /// A fresh control.
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Asks the simulation to stop soon; `simulate` then raises KeyboardInterrupt.
    fn cancel(&self) {
        self.inner.cancel();
    }

    /// Requests that have arrived in the simulation so far.
    fn arrived(&self) -> u64 {
        self.inner.arrived()
    }
}

/// Runs the simulation described by `config_json` on the given columns (arrival times in ns,
/// sorted; prompt and output tokens) and returns a dict of result columns and facts. The GIL is
/// released while it runs (and taken back for each call into a Python policy); `control` lets
/// another thread follow and cancel it. `router` is a Python router bridge replacing the configured
/// router; `planners` maps a pool index to a factory `f(instance) -> scheduler bridge`, and
/// `evictors` to a factory of prefix-cache bridges, `expert_caches` to a factory
/// `f(instance, rank, layers, experts, capacity) -> expert cache bridge` of one GPU's caches;
/// `decode_choice`, a Python decode choice bridge, picks the decode instance of each handoff;
/// `given_classes` maps a pool index to each request's acceptance class in that pool (255: drawn).
#[pyfunction]
#[pyo3(signature = (config_json, arrival_ns, prompt_tokens, output_tokens, control=None, hash_offsets=None, hash_values=None, routing_offsets=None, routing_experts=None, routing_shape=None, router=None, planners=None, evictors=None, expert_caches=None, decode_choice=None, given_classes=None))]
#[allow(clippy::too_many_arguments)]
pub fn simulate<'py>(
    py: Python<'py>,
    config_json: &str,
    arrival_ns: PyReadonlyArray1<'py, i64>,
    prompt_tokens: PyReadonlyArray1<'py, i64>,
    output_tokens: PyReadonlyArray1<'py, i64>,
    control: Option<&PySimControl>,
    hash_offsets: Option<PyReadonlyArray1<'py, i64>>,
    hash_values: Option<PyReadonlyArray1<'py, i64>>,
    routing_offsets: Option<PyReadonlyArray1<'py, i64>>,
    routing_experts: Option<PyReadonlyArray1<'py, i64>>,
    routing_shape: Option<(u32, u32)>,
    router: Option<Py<PyAny>>,
    planners: Option<HashMap<usize, Py<PyAny>>>,
    evictors: Option<HashMap<usize, Py<PyAny>>>,
    expert_caches: Option<HashMap<usize, Py<PyAny>>>,
    decode_choice: Option<Py<PyAny>>,
    given_classes: Option<HashMap<usize, PyReadonlyArray1<'py, u8>>>,
) -> PyResult<Bound<'py, PyDict>> {
    let config: SimConfig = from_json("scenario", config_json)?;
    let to_u32 = |name: &str, a: &PyReadonlyArray1<'py, i64>| -> PyResult<Vec<u32>> {
        a.as_array()
            .iter()
            .enumerate()
            .map(|(i, &v)| u32::try_from(v).map_err(|_| crate::errors::ConfigError::new_err(format!("{name}[{i}] = {v} is out of range"))))
            .collect()
    };
    let workload = Workload {
        arrival: arrival_ns
            .as_array()
            .iter()
            .enumerate()
            .map(|(i, &v)| u64::try_from(v).map_err(|_| crate::errors::ConfigError::new_err(format!("arrival_ns[{i}] = {v} is negative"))))
            .collect::<PyResult<Vec<u64>>>()?,
        prompt: to_u32("prompt_tokens", &prompt_tokens)?,
        output: to_u32("output_tokens", &output_tokens)?,
        hashes: match (&hash_offsets, &hash_values) {
            (Some(o), Some(v)) => {
                let (o, v) = (o.as_array(), v.as_array());
                let n = prompt_tokens.as_array().len();
                if o.len() != n + 1 {
                    return Err(crate::errors::ConfigError::new_err("hash_offsets must have one more entry than there are requests"));
                }
                (0..n)
                    .map(|i| {
                        let (a, b) = (o[i] as usize, o[i + 1] as usize);
                        if a > b || b > v.len() {
                            return Err(crate::errors::ConfigError::new_err(format!("hash_offsets[{i}..{}] = {a}..{b} out of range", i + 1)));
                        }
                        Ok(v.slice(numpy::ndarray::s![a..b]).iter().map(|&x| x as u64).collect())
                    })
                    .collect::<PyResult<Vec<Vec<u64>>>>()?
            }
            _ => Vec::new(),
        },
        routing: match (&routing_offsets, &routing_experts, routing_shape) {
            (Some(o), Some(e), Some((layers, k))) => {
                let bad = |what: &str| crate::errors::ConfigError::new_err(format!("routing trace: {what}"));
                let offsets = o.as_array().iter().map(|&v| u64::try_from(v).map_err(|_| bad("negative offset"))).collect::<PyResult<Vec<u64>>>()?;
                let experts = e.as_array().iter().map(|&v| u16::try_from(v).map_err(|_| bad("expert id out of range"))).collect::<PyResult<Vec<u16>>>()?;
                Some(Arc::new(RoutingTrace { layers, k, offsets, experts }))
            }
            (None, None, None) => None,
            _ => return Err(crate::errors::ConfigError::new_err("routing_offsets, routing_experts and routing_shape go together")),
        },
        given_classes: given_classes.unwrap_or_default().into_iter().map(|(p, a)| (p, a.as_array().iter().copied().collect())).collect(),
    };
    let control = control.map(|c| c.inner.clone()).unwrap_or_default();
    let slot: ErrorSlot = Default::default();
    let mut plugins = Plugins {
        router: router.map(|r| Box::new(PyRouterPlugin::new(r, slot.clone())) as _),
        decode_choice: decode_choice.map(|c| Box::new(PyDecodeChoice::new(c, slot.clone())) as _),
        ..Plugins::default()
    };
    for (pool, factory) in planners.unwrap_or_default() {
        plugins.batch_schedulers.insert(pool, per_instance(factory, slot.clone(), "scheduler", |b, s| Box::new(PyBatchScheduler::new(b, s)) as Box<dyn BatchScheduler>));
    }
    for (pool, factory) in evictors.unwrap_or_default() {
        plugins.evictors.insert(pool, per_instance(factory, slot.clone(), "prefix cache", |b, s| Box::new(PyEvictor::new(b, s)) as Box<dyn PrefixEvictor>));
    }
    for (pool, factory) in expert_caches.unwrap_or_default() {
        plugins.expert_caches.insert(pool, per_gpu_expert_cache(factory, slot.clone()));
    }
    let mut slots: Vec<Request> = Vec::new();
    let mut columns = RequestColumns::default();
    let result = py.allow_threads(|| simulate_streaming(&config, &workload, &control, plugins, &mut slots, &mut columns));
    drop(workload);
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            let stopped = matches!(e, fleetwise_core::error::Error::Policy { .. } | fleetwise_core::error::Error::Simulation { .. });
            let err = to_py(e);
            if let Some(cause) = slot.lock().expect("error slot").take() {
                err.set_cause(py, Some(cause));
            }
            if stopped && !columns.is_empty() {
                // What finished before the run stopped: the request columns, as in a result.
                let partial = PyDict::new(py);
                request_columns(columns, &partial)?;
                err.value(py).setattr("partial", partial)?;
            }
            return Err(err);
        }
    };
    let d = PyDict::new(py);
    drop(slots);
    request_columns(columns, &d)?;
    d.set_item("rejections", out.rejections)?;
    let itl = PyDict::new(py);
    itl.set_item("count", out.itl.count())?;
    itl.set_item("mean", out.itl.mean())?;
    itl.set_item("max", out.itl.max())?;
    for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)] {
        itl.set_item(k, out.itl.quantile(q))?;
    }
    d.set_item("itl", itl)?;
    d.set_item("instances_json", serde_json::to_string(&out.instances).unwrap_or_default())?;
    d.set_item("events", out.events)?;
    d.set_item("end_time_ns", out.end_time)?;
    if let Some(services) = &out.mixed_pool {
        d.set_item("mixed_pool", services.iter().map(|s| s.name()).collect::<Vec<&str>>())?;
    }
    if let Some(log) = out.iterations {
        let it = PyDict::new(py);
        it.set_item("instance", log.instance.into_pyarray(py))?;
        it.set_item("start_ns", log.start.into_pyarray(py))?;
        it.set_item("end_ns", log.end.into_pyarray(py))?;
        it.set_item("prefill_tokens", log.prefill_tokens.into_pyarray(py))?;
        it.set_item("decode_seqs", log.decode_seqs.into_pyarray(py))?;
        it.set_item("kv_blocks", log.kv_blocks.into_pyarray(py))?;
        it.set_item("waiting", log.waiting.into_pyarray(py))?;
        it.set_item("running", log.running.into_pyarray(py))?;
        d.set_item("iterations", it)?;
    }
    Ok(d)
}

/// The per-request result columns (numpy arrays, moved from the columns without a copy) into `d`:
/// times int64 (-1: never), `instance` and `prefill_instance` uint32 (`u32::MAX`: none),
/// `preemptions` and `generated_tokens` uint32, `status` uint8 (`Status::code`).
fn request_columns(c: RequestColumns, d: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = d.py();
    let RequestColumns { first_token_ns: first, first_scheduled_ns: scheduled, completion_ns: done, instance: inst, preemptions: pre, status, generated_tokens: generated, prefill_instance: prefill_inst, kv_transfer_ns: transfer_ns } = c;
    d.set_item("first_token_ns", first.into_pyarray(py))?;
    d.set_item("first_scheduled_ns", scheduled.into_pyarray(py))?;
    d.set_item("completion_ns", done.into_pyarray(py))?;
    d.set_item("instance", inst.into_pyarray(py))?;
    d.set_item("preemptions", pre.into_pyarray(py))?;
    d.set_item("status", status.into_pyarray(py))?;
    d.set_item("generated_tokens", generated.into_pyarray(py))?;
    d.set_item("prefill_instance", prefill_inst.into_pyarray(py))?;
    d.set_item("kv_transfer_ns", transfer_ns.into_pyarray(py))?;
    Ok(())
}

/// A core factory of one policy object per instance: calls the Python `factory(instance)` for a
/// bridge and wraps it with `wrap`; an exception becomes a policy error naming `what`.
fn per_instance<T: ?Sized + 'static>(factory: Py<PyAny>, slot: ErrorSlot, what: &'static str, wrap: fn(Py<PyAny>, ErrorSlot) -> Box<T>) -> Box<dyn Fn(usize) -> fleetwise_core::error::Result<Box<T>> + Send + Sync> {
    Box::new(move |instance| {
        Python::with_gil(|py| factory.call1(py, (instance,)))
            .map(|bridge| wrap(bridge, slot.clone()))
            .map_err(|e| fleetwise_core::error::Error::Policy { message: format!("creating the {what} policy of instance {instance} raised {e}") })
    })
}

/// A core factory of one GPU's expert cache policy: calls the Python `factory(instance, rank,
/// layers, experts, capacity)` for a bridge; an exception becomes a policy error.
fn per_gpu_expert_cache(factory: Py<PyAny>, slot: ErrorSlot) -> ExpertCacheFactory {
    Box::new(move |instance, site| {
        let bridge = Python::with_gil(|py| factory.call1(py, (instance, site.rank, site.layers, site.experts, site.capacity)))
            .map_err(|e| fleetwise_core::error::Error::Policy { message: format!("creating the expert cache policy of instance {instance} raised {e}") })?;
        Ok(Box::new(PyExpertCache::new(bridge, slot.clone(), site.layers, site.experts)?) as Box<dyn ExpertCachePolicy>)
    })
}

/// Hits of one layer's expert cache of `capacity` of `num_experts` experts over `accesses` (expert
/// ids in order) under `policy` (lru, lfu, static); a static cache holds the most `popularity`
/// experts (default: the lowest ids).
#[pyfunction]
#[pyo3(signature = (policy, num_experts, capacity, accesses, popularity=None))]
pub fn expert_cache_hits(policy: &str, num_experts: u32, capacity: u32, accesses: Vec<i64>, popularity: Option<Vec<f64>>) -> PyResult<u64> {
    let policy: CachePolicy = match from_json("policy", &format!("\"{policy}\""))? {
        CachePolicy::Policy => return Err(crate::errors::ConfigError::new_err("policy: a built-in expert cache (lru, lfu, static); replay a policy object with fleetwise.policy.expert_cache.replay")),
        p => p,
    };
    if num_experts == 0 || num_experts > u16::MAX as u32 {
        return Err(crate::errors::ConfigError::new_err(format!("num_experts must be in 1..=65535, got {num_experts}")));
    }
    let ids = accesses
        .iter()
        .enumerate()
        .map(|(i, &a)| if a >= 0 && (a as u64) < num_experts as u64 { Ok(a as u16) } else { Err(crate::errors::ConfigError::new_err(format!("accesses[{i}] = {a} is not an expert id in [0, {num_experts})"))) })
        .collect::<PyResult<Vec<u16>>>()?;
    let pop = popularity.unwrap_or_else(|| (0..num_experts).map(|e| (num_experts - e) as f64).collect());
    if pop.len() != num_experts as usize {
        return Err(crate::errors::ConfigError::new_err(format!("popularity needs {num_experts} entries, got {}", pop.len())));
    }
    Ok(replay_hits(policy, num_experts, capacity, &pop, &ids))
}

/// The acceptance class (an index into `shares`) of each of a run's `n` requests, in the run
/// seeded with `seed`, as the core assigns it (`cost/acceptance_classes.rs`): the class `given`
/// names (by request; 255: none), else drawn by share. The request table's `acceptance_class`
/// column.
#[pyfunction]
#[pyo3(signature = (seed, shares, n, given=None))]
pub fn acceptance_classes<'py>(py: Python<'py>, seed: u64, shares: Vec<f64>, n: u32, given: Option<PyReadonlyArray1<'py, u8>>) -> PyResult<Bound<'py, numpy::PyArray1<u8>>> {
    let mut classes = fleetwise_core::cost::RequestClasses::new(seed, shares);
    if let Some(given) = given {
        classes = classes.with_given(given.as_array().iter().copied().collect()).map_err(crate::errors::to_py)?;
    }
    Ok((0..n).map(|r| classes.class_of(r) as u8).collect::<Vec<u8>>().into_pyarray(py))
}
