//! How things go wrong, typed on both sides of the boundary: `Fault` inside the
//! crate, one Python exception class per kind of fault outside (all subclasses
//! of `GuestFault`), and `LoadError` for a guest that cannot be loaded.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use wasmtime::Trap;

use crate::state::State;

create_exception!(_native, LoadError, PyException, "A guest that cannot be loaded, or is not a chunkd consumer.");
create_exception!(_native, GuestFault, PyException, "A guest call that went wrong; args are (reason,).");
create_exception!(_native, GuestTrapped, GuestFault, "The guest trapped (or a host import it called failed).");
create_exception!(_native, GuestTimedOut, GuestFault, "The guest ran past call_timeout of guest time.");
create_exception!(_native, NativePanic, GuestFault, "The native host core panicked; the instance is discarded.");
create_exception!(_native, InstanceBroken, GuestFault, "The instance broke earlier, or is closed.");

/// How a call went wrong: the Python side words the message.
#[derive(Debug, Clone)]
pub enum Fault {
    Trap(String),
    Timeout,
    Panic(String),
    Broken(String),
}

impl Fault {
    /// The word the instance remembers it broke with.
    pub fn word(&self) -> &'static str {
        match self {
            Fault::Trap(_) => "trap",
            Fault::Timeout => "timeout",
            Fault::Panic(_) => "panic",
            Fault::Broken(_) => "broken",
        }
    }

    pub fn into_pyerr(self) -> PyErr {
        match self {
            Fault::Trap(r) => GuestTrapped::new_err(r),
            Fault::Timeout => GuestTimedOut::new_err(""),
            Fault::Panic(r) => NativePanic::new_err(r),
            Fault::Broken(r) => InstanceBroken::new_err(r),
        }
    }

    /// Out of a wasmtime error: an interrupt is a timeout; a trap keeps wasmtime's own
    /// words (said once: Python adds "trapped in ..."); a failed host import its message.
    pub fn of(e: &wasmtime::Error, state: &mut State) -> Fault {
        if let Some(t) = e.downcast_ref::<Trap>() {
            if *t == Trap::Interrupt {
                return Fault::Timeout;
            }
            return Fault::Trap(t.to_string());
        }
        if let Some(h) = state.host_error.take() {
            return Fault::Trap(h);
        }
        Fault::Trap(e.root_cause().to_string())
    }
}

/// The text of a caught panic.
pub fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// The first line of an error's full text (wasmtime's own errors run to many).
pub fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or("invalid").to_string()
}
