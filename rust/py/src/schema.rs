//! `resolve_config`: the scenario JSON as the core reads it, for checking that Python's schema
//! and the core's serde structs agree field for field.

use crate::errors::from_json;
use fleetwise_core::sim::SimConfig;
use pyo3::prelude::*;

/// Deserialises `config_json` into the core's `SimConfig` and serialises it back: every field the
/// core knows, with serde's defaults filled in and unknown fields refused (a ConfigError).
#[pyfunction]
pub fn resolve_config(config_json: &str) -> PyResult<String> {
    let config: SimConfig = from_json("scenario", config_json)?;
    serde_json::to_string(&config).map_err(|e| crate::errors::ConfigError::new_err(format!("scenario: {e}")))
}
