//! Built-in routers as a Python class: the same Rust objects the simulator calls natively.

use crate::errors::{from_json, to_py};
use fleetwise_core::request::Request;
use fleetwise_core::router::{InstanceLoad, Router, RouterConfig};
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
        let loads: Vec<InstanceLoad> = (0..n).map(|i| InstanceLoad { outstanding_tokens: outstanding_tokens[i], waiting: waiting[i], running: running[i] }).collect();
        Ok(self.inner.route(&Request::new(0, prompt_tokens.max(1), 1), &loads))
    }
}
