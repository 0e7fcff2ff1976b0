//! The Python classes `Engine` (the process's wasmtime engine, its epoch
//! clock and its compile cache) and `Guest` (a loaded, checked guest).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use crate::api_instance::Instance;
use crate::engine;
use crate::errors::LoadError;
use crate::guest;

#[pyclass(frozen, module = "chunkd._native", name = "Engine")]
pub struct Engine {
    engine: wasmtime::Engine,
    clock: Mutex<engine::Clock>,
    ticks: Arc<AtomicU64>,
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
        self.ticks.load(Ordering::Relaxed)
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
                crate::load::load(&engine, &label, &path, cache.as_deref())
            }))
        });
        match r {
            Ok(Ok(g)) => Ok(Guest { inner: Arc::new(g) }),
            Ok(Err(msg)) => Err(LoadError::new_err(msg)),
            Err(_) => Err(LoadError::new_err("the native loader panicked")),
        }
    }

    /// A new, not yet started instance of `guest`; `host` answers its imports.
    fn instance(&self, guest: &Guest, host: Py<PyAny>, memory_bytes: usize, timeout_ticks: u64) -> Instance {
        Instance::new(guest.inner.clone(), host, self.ticks.clone(), memory_bytes, timeout_ticks.max(1))
    }
}

/// A loaded, checked guest: a component or a core module, ready to instantiate.
#[pyclass(frozen, module = "chunkd._native", name = "Guest")]
pub struct Guest {
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
