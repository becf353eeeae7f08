//! fleetwise._core: thin pyo3 bindings over fleetwise-core.
//!
//! Configuration crosses as JSON (validated by pydantic on the Python side and by serde here);
//! workload and result columns cross as numpy arrays in one call each.

mod cost;
mod errors;
mod plugins;
mod policies;
mod rows;
mod schema;
mod simulate;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<cost::PyCostModel>()?;
    m.add_class::<policies::PyRouter>()?;
    m.add_class::<policies::PyScheduler>()?;
    m.add_function(wrap_pyfunction!(simulate::simulate, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::expert_cache_hits, m)?)?;
    m.add_function(wrap_pyfunction!(simulate::acceptance_classes, m)?)?;
    m.add_class::<simulate::PySimControl>()?;
    m.add_class::<rows::RequestRow>()?;
    m.add_class::<rows::LoadRow>()?;
    m.add_class::<rows::LoadTable>()?;
    m.add_class::<rows::IdlePrefixRow>()?;
    m.add_function(wrap_pyfunction!(schema::resolve_config, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
