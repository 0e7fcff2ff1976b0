//! The Python class `Instance`: one instance of one guest, and the typed
//! boundary of its calls (`#[derive(FromPyObject)]` arguments, `CallResult`,
//! one exception class per fault, errors.rs).
//!
//! Every call runs with the GIL released, under `catch_unwind` (a panic in
//! here breaks the instance and fails its job; the process goes on), with a
//! fresh epoch budget per guest call. A trap or a timeout breaks the
//! instance: the pool replaces it (chunkd/pool.py).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyBaseException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::batch::{self, Item, ItemResult};
use crate::chunks::{At, FileRun, Source};
use crate::component_link::StreamEnd;
use crate::errors::{panic_text, Fault};
use crate::guest::Guest;
use crate::kinds::{self, Answer, Gate, GuestKind, Setup};

/// A run of file chunks as Python describes it (chunkd.host.instance.DirectRun).
#[derive(FromPyObject)]
struct RunArg {
    #[pyo3(attribute)]
    fd: i32,
    #[pyo3(attribute)]
    offset: u64,
    #[pyo3(attribute)]
    chunk_size: u64,
    #[pyo3(attribute)]
    count: u64,
    #[pyo3(attribute)]
    last_length: u64,
    #[pyo3(attribute)]
    hint_offset: u64,
    #[pyo3(attribute)]
    hint_length: u64,
}

/// A chunk's bytes or a run. Extracted by hand: a derived enum would build (and drop) a
/// Python error for every run item that is not bytes, on the hot path.
enum DataArg {
    Bytes(Py<PyBytes>),
    Run(RunArg),
}

impl<'py> FromPyObject<'py> for DataArg {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        match ob.downcast::<PyBytes>() {
            Ok(b) => Ok(DataArg::Bytes(b.clone().unbind())),
            Err(_) => Ok(DataArg::Run(ob.extract()?)),
        }
    }
}

/// (handle, correlation-id, current-chunk, total-chunks, bytes | DirectRun).
#[derive(FromPyObject)]
struct CallArg(u32, u64, u64, u64, DataArg);

/// A Python bytes object's buffer, valid while this holds the object: bytes are
/// immutable, and the object is released only with this (after the batch).
struct Pinned {
    _obj: Py<PyBytes>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the buffer is immutable and owned by `_obj`, which this keeps alive.
unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

impl Pinned {
    fn new(py: Python<'_>, obj: Py<PyBytes>) -> Pinned {
        let b = obj.bind(py).as_bytes();
        let (ptr, len) = (b.as_ptr(), b.len());
        Pinned { _obj: obj, ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: see the type.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

enum Data {
    Bytes(Pinned),
    Run(RunArg),
}

/// The result of one item of a batch: its answer, how many chunks it delivered
/// (handle-chunk calls that returned, stream writes taken whole), and their duration.
#[pyclass(frozen, module = "chunkd._native", name = "CallResult")]
pub struct CallResult(ItemResult);

#[pymethods]
impl CallResult {
    /// The guest's bool (a run's: its last call's), or None.
    #[getter]
    fn answer(&self) -> Option<bool> {
        match self.0.answer {
            Answer::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The direct read's error, when one stopped the item.
    #[getter]
    fn source_error(&self) -> Option<String> {
        match &self.0.answer {
            Answer::SourceError(e) => Some(e.clone()),
            _ => None,
        }
    }

    #[getter]
    fn made(&self) -> u64 {
        self.0.made
    }

    #[getter]
    fn seconds(&self) -> f64 {
        self.0.seconds
    }

    fn __repr__(&self) -> String {
        format!("CallResult({:?}, made={}, seconds={:.6})", self.0.answer, self.0.made, self.0.seconds)
    }
}

struct Inner {
    live: Option<Box<dyn GuestKind>>,
    stopped: HashSet<u32>,
    broken: Option<String>,
    panic_after: Option<u64>,
}

impl Inner {
    fn live(&mut self) -> Result<&mut dyn GuestKind, Fault> {
        if let Some(b) = &self.broken {
            return Err(Fault::Broken(b.clone()));
        }
        match self.live.as_deref_mut() {
            Some(k) => Ok(k),
            None => Err(Fault::Broken("instance is closed".into())),
        }
    }

    /// A fault breaks the instance (but one that says it is broken already).
    fn fail(&mut self, f: Fault) -> Fault {
        if !matches!(f, Fault::Broken(_)) {
            self.broken = Some(f.word().to_string());
        }
        f
    }

    /// After a panic: the store it unwound through is never used again.
    fn panicked(&mut self, p: Box<dyn std::any::Any + Send>) -> Fault {
        let text = panic_text(p);
        self.broken = Some(format!("panic: {text}"));
        self.live = None;
        Fault::Panic(text)
    }
}

#[pyclass(frozen, module = "chunkd._native", name = "Instance")]
pub struct Instance {
    inner: Mutex<Inner>,
    halt: Arc<AtomicBool>,
    guest: Arc<Guest>,
    setup: Setup,
    timeout_ticks: AtomicU64,
}

impl Instance {
    pub fn new(guest: Arc<Guest>, host: Py<PyAny>, ticks: Arc<AtomicU64>, memory_bytes: usize, timeout: u64) -> Self {
        Instance {
            inner: Mutex::new(Inner { live: None, stopped: HashSet::new(), broken: None, panic_after: None }),
            halt: Arc::new(AtomicBool::new(false)),
            guest,
            setup: Setup { host: Arc::new(host), ticks, memory_bytes, timeout },
            timeout_ticks: AtomicU64::new(timeout.max(1)),
        }
    }

    fn timeout(&self) -> u64 {
        self.timeout_ticks.load(Ordering::Relaxed)
    }

    /// Runs `f` on the locked instance, without the GIL, catching panics.
    fn with_inner<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Inner) -> Result<R, Fault> + Send,
    ) -> PyResult<R> {
        let r = py.allow_threads(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let inner = &mut *guard;
            match catch_unwind(AssertUnwindSafe(|| f(inner))) {
                Ok(r) => r.map_err(|f| inner.fail(f)),
                Err(p) => Err(inner.panicked(p)),
            }
        });
        r.map_err(Fault::into_pyerr)
    }
}

fn end_of(kind: u8, reason: String) -> StreamEnd {
    match kind {
        0 => StreamEnd::Completed,
        1 => StreamEnd::Cancelled,
        _ => StreamEnd::Failed(reason),
    }
}

/// A batch's results and the exception of the fault that stopped it.
type BatchOut = (Vec<CallResult>, Option<Py<PyBaseException>>);

#[pymethods]
impl Instance {
    /// Instantiates the guest (its start functions count against call_timeout).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let setup = Setup { timeout: self.timeout(), ..self.setup.clone() };
        self.with_inner(py, |inner| {
            inner.live = Some(kinds::instantiate(&self.guest, &setup)?);
            Ok(())
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.guest.kind()
    }

    #[getter]
    fn has_events(&self) -> bool {
        self.guest.has_events
    }

    /// The guest-time budget of every later call, in epoch ticks (a reload's call_timeout).
    fn set_timeout_ticks(&self, ticks: u64) {
        self.timeout_ticks.store(ticks.max(1), Ordering::Relaxed);
    }

    /// Skip the rest of the batch in flight (and of queued ones) while set.
    fn set_halt(&self, on: bool) {
        self.halt.store(on, Ordering::Relaxed);
    }

    fn invoke(&self, py: Python<'_>, args: Vec<String>) -> PyResult<(bool, String)> {
        let timeout = self.timeout();
        self.with_inner(py, move |inner| inner.live()?.invoke(timeout, args))
    }

    /// Several deliveries in order, in one native call: a bytes item is one chunk, a
    /// run one per chunk (read from its fd here). Returns one CallResult per item
    /// reached and the exception of the fault that stopped the batch, if any.
    fn run_batch(&self, py: Python<'_>, calls: Vec<CallArg>, fresh: bool) -> BatchOut {
        let data: Vec<(At, Data)> = calls
            .into_iter()
            .map(|CallArg(handle, cid, first, total, d)| {
                let at = At { handle, cid, first, total };
                (
                    at,
                    match d {
                        DataArg::Bytes(b) => Data::Bytes(Pinned::new(py, b)),
                        DataArg::Run(r) => Data::Run(r),
                    },
                )
            })
            .collect();
        let items: Vec<Item<'_>> = data
            .iter()
            .map(|(at, d)| match d {
                Data::Bytes(p) => Item { at: *at, src: Source::Mem(p.bytes()), hint: None },
                Data::Run(r) => Item {
                    at: *at,
                    src: Source::File(FileRun {
                        fd: r.fd,
                        offset: r.offset,
                        chunk_size: r.chunk_size,
                        count: r.count,
                        last_length: r.last_length,
                    }),
                    hint: (r.hint_length > 0).then_some((r.fd, r.hint_offset, r.hint_length)),
                },
            })
            .collect();
        let timeout = self.timeout();
        let (results, fault) = py.allow_threads(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let inner = &mut *guard;
            let mut out = Vec::with_capacity(items.len());
            let r = catch_unwind(AssertUnwindSafe(|| {
                let Inner { live, stopped, broken, panic_after } = &mut *inner;
                if let Some(b) = broken {
                    return Some(Fault::Broken(b.clone()));
                }
                let Some(kind) = live.as_deref_mut() else {
                    return Some(Fault::Broken("instance is closed".into()));
                };
                let mut gate = Gate { timeout, halt: &self.halt, panic_after };
                batch::run(kind, &mut gate, stopped, &items, fresh, &mut out)
            }));
            let fault = match r {
                Ok(f) => f.map(|f| inner.fail(f)),
                Err(p) => {
                    if let Some(last) = out.last_mut() {
                        last.answer = Answer::Nothing; // the item the panic stopped in
                    }
                    Some(inner.panicked(p))
                }
            };
            (out, fault)
        });
        drop(items);
        drop(data);
        (results.into_iter().map(CallResult).collect(), fault.map(|f| f.into_pyerr().into_value(py)))
    }

    /// stream-ended(correlation-id, end): kind 0 completed, 1 cancelled, 2 failed(reason).
    /// The streams world: `end` resolves, `data` closes, and the `consume` call is waited
    /// for; returns the error it returned, if it did.
    fn stream_ended(&self, py: Python<'_>, cid: u64, kind: u8, reason: String) -> PyResult<Option<String>> {
        let timeout = self.timeout();
        self.with_inner(py, move |inner| inner.live()?.stream_ended(timeout, cid, end_of(kind, reason)))
    }

    /// Drops the store (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.with_inner(py, |inner| {
            inner.live = None;
            Ok(())
        })
    }

    /// Test hook: panic inside the native batch after `calls` more guest calls.
    fn inject_panic(&self, py: Python<'_>, calls: u64) -> PyResult<()> {
        self.with_inner(py, move |inner| {
            inner.panic_after = Some(calls);
            Ok(())
        })
    }
}
