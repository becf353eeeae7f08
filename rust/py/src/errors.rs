//! The single mapping of the core's `Error` onto the Python exception hierarchy.

use fleetwise_core::error::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(fleetwise._core, FleetwiseError, PyException, "Base class of every fleetwise error caused by user input.");
create_exception!(fleetwise._core, ConfigError, FleetwiseError, "A scenario or configuration value is invalid.");
create_exception!(fleetwise._core, CapacityError, FleetwiseError, "A model, request or cache does not fit in the memory available.");
create_exception!(fleetwise._core, TraceError, FleetwiseError, "A trace or workload file is malformed.");
create_exception!(fleetwise._core, PolicyError, FleetwiseError, "A user's policy raised or answered something the engine cannot apply.");
create_exception!(fleetwise._core, SimulationError, FleetwiseError, "The simulation could not proceed.");

/// Converts a core error into the matching Python exception.
pub fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Config { .. } => ConfigError::new_err(msg),
        Error::Capacity { .. } => CapacityError::new_err(msg),
        Error::Trace { .. } => TraceError::new_err(msg),
        Error::Simulation { .. } => SimulationError::new_err(msg),
        Error::Policy { .. } => PolicyError::new_err(msg),
        Error::Interrupted => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FleetwiseError", py.get_type::<FleetwiseError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("CapacityError", py.get_type::<CapacityError>())?;
    m.add("TraceError", py.get_type::<TraceError>())?;
    m.add("SimulationError", py.get_type::<SimulationError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    Ok(())
}

/// Parses a JSON configuration string produced by the Python side.
pub fn from_json<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> PyResult<T> {
    serde_json::from_str(json).map_err(|e| ConfigError::new_err(format!("{what}: {e}")))
}
