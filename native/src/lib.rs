//! chunkd's native host core: all wasm execution, on the `wasmtime` crate.
//!
//! Python keeps the asyncio daemon, the sources, the budget, the scheduler,
//! the API and the cluster; this module owns the engine, its epoch clock,
//! loading and checking guests (with the compile cache), and every call into
//! a guest. See docs/architecture.md ("The native host core").

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

mod component;
mod core;
mod engine;
mod guest;
mod host;
mod instance;
mod output;
mod state;
mod streams;
mod wit;

create_exception!(_native, LoadError, PyException, "A guest that cannot be loaded, or is not a chunkd consumer.");
create_exception!(
    _native,
    GuestFault,
    PyException,
    "A guest call that went wrong: args are (kind, reason), kind one of trap, timeout, panic, broken."
);

/// The process's wasmtime engine, its epoch clock and its compile cache.
#[pyclass(frozen, module = "chunkd._native", name = "Engine")]
struct Engine {
    engine: wasmtime::Engine,
    clock: Mutex<engine::Clock>,
    ticks: Arc<std::sync::atomic::AtomicU64>,
    cache_dir: Option<PathBuf>,
    #[pyo3(get)]
    tick_s: f64,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (cache_dir=None, tick_s=0.01))]
    fn new(cache_dir: Option<PathBuf>, tick_s: f64) -> PyResult<Engine> {
        let engine = engine::make_engine().map_err(|e| LoadError::new_err(format!("cannot make the engine: {e}")))?;
        let clock = engine::Clock::start(&engine, Duration::from_secs_f64(tick_s))
            .map_err(|e| LoadError::new_err(format!("cannot start the epoch clock: {e}")))?;
        let ticks = clock.ticks.clone();
        let cache_dir = cache_dir.and_then(|d| std::fs::create_dir_all(&d).ok().map(|_| d));
        Ok(Engine { engine, clock: Mutex::new(clock), ticks, cache_dir, tick_s })
    }

    /// Epoch ticks since the engine started.
    #[getter]
    fn ticks(&self) -> u64 {
        self.ticks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the epoch clock (no call can time out after this).
    fn stop(&self) {
        self.clock.lock().unwrap_or_else(|p| p.into_inner()).stop();
    }

    /// Loads and checks a guest; raises LoadError with a message that names it.
    fn load(&self, py: Python<'_>, label: String, path: PathBuf) -> PyResult<Guest> {
        let engine = self.engine.clone();
        let cache = self.cache_dir.clone();
        let r = py.allow_threads(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                guest::load(&engine, &label, &path, cache.as_deref())
            }))
        });
        match r {
            Ok(Ok(g)) => Ok(Guest { inner: Arc::new(g) }),
            Ok(Err(msg)) => Err(LoadError::new_err(msg)),
            Err(_) => Err(LoadError::new_err("the native loader panicked")),
        }
    }

    /// A new, not yet started instance of `guest`; `host` answers its imports.
    fn instance(&self, guest: &Guest, host: Py<PyAny>, memory_bytes: usize, timeout_ticks: u64) -> instance::Instance {
        instance::Instance::new(guest.inner.clone(), host, self.ticks.clone(), memory_bytes, timeout_ticks.max(1))
    }
}

/// A loaded, checked guest: a component or a core module, ready to instantiate.
#[pyclass(frozen, module = "chunkd._native", name = "Guest")]
struct Guest {
    inner: Arc<guest::Guest>,
}

#[pymethods]
impl Guest {
    /// "component" or "core".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    #[getter]
    fn world(&self) -> &'static str {
        self.inner.world
    }
    #[getter]
    fn has_events(&self) -> bool {
        self.inner.has_events
    }
    #[getter]
    fn imports(&self) -> Vec<String> {
        self.inner.imports.clone()
    }
    /// Whether the compiled code came from the compile cache.
    #[getter(from_cache)]
    fn cached(&self) -> bool {
        self.inner.from_cache
    }
}

/// WebAssembly text to binary (the wat crate, as wasmtime parses .wat guests).
#[pyfunction]
fn wat2wasm<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    let bin = wat::parse_str(text).map_err(|e| LoadError::new_err(e.to_string()))?;
    Ok(pyo3::types::PyBytes::new(py, &bin))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(wat2wasm, m)?)?;
    m.add_class::<Engine>()?;
    m.add_class::<Guest>()?;
    m.add_class::<instance::Instance>()?;
    m.add_class::<instance::CallResult>()?;
    m.add("LoadError", m.py().get_type::<LoadError>())?;
    m.add("GuestFault", m.py().get_type::<GuestFault>())?;
    m.add("WASMTIME_VERSION", "48.0.8")?;
    Ok(())
}
