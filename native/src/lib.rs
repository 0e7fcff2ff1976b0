//! chunkd's native host core: all wasm execution, on the `wasmtime` crate.
//!
//! Python keeps the asyncio daemon, the sources, the budget, the scheduler,
//! the API and the cluster; this crate owns the engine, its epoch clock,
//! loading and checking guests (with the compile cache), and every call into
//! a guest. docs/native-core.md gives the module map and the rule of its
//! layers (a module uses only modules of the layers below its own).

use pyo3::prelude::*;

// the Python boundary
mod api_engine;
mod api_instance;
// batches, over the guest kinds
mod batch;
mod kinds;
// what the kinds are built on
mod abi;
mod component_link;
mod core_link;
mod drive;
mod feed;
mod load;
mod outpipe;
// the ground: no chunkd module below these but each other's
mod chunks;
mod engine;
mod errors;
mod fileio;
mod guest;
mod host;
mod output;
mod sigs;
mod state;
mod wit;

/// The wasmtime release the core is built on (from Cargo.lock, by build.rs).
const WASMTIME_VERSION: &str = env!("CHUNKD_WASMTIME_VERSION");

/// WebAssembly text to binary (the wat crate, as wasmtime parses .wat guests).
#[pyfunction]
fn wat2wasm<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let bin = wat::parse_str(text).map_err(|e| errors::LoadError::new_err(e.to_string()))?;
    Ok(pyo3::types::PyBytes::new(py, &bin))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_function(wrap_pyfunction!(wat2wasm, m)?)?;
    m.add_class::<api_engine::Engine>()?;
    m.add_class::<api_engine::Guest>()?;
    m.add_class::<api_instance::Instance>()?;
    m.add_class::<api_instance::CallResult>()?;
    m.add("LoadError", py.get_type::<errors::LoadError>())?;
    m.add("GuestFault", py.get_type::<errors::GuestFault>())?;
    m.add("GuestTrapped", py.get_type::<errors::GuestTrapped>())?;
    m.add("GuestTimedOut", py.get_type::<errors::GuestTimedOut>())?;
    m.add("NativePanic", py.get_type::<errors::NativePanic>())?;
    m.add("InstanceBroken", py.get_type::<errors::InstanceBroken>())?;
    m.add("WASMTIME_VERSION", WASMTIME_VERSION)?;
    Ok(())
}
