//! The calls from wasm into Python's host services: only where they must
//! (opening a blob, a pull `read`, starting a chunked read, a drop, guest
//! output); never per chunk. Each takes the GIL for the call only, and its
//! time is host time (given back to the guest call's budget).
//!
//! Python answers in neutral values (chunkd/host/native_instance.py,
//! NativeHost): an int or None for success, `(discriminant, message)` for a
//! stream-error.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::state::{CallClock, State};

/// The `stream-error` variant of wit/streams.wit, independent of how it crosses.
#[derive(Debug, Clone)]
pub enum StreamErr {
    Closed,
    Invalid(String),
    Failed(String),
}

impl StreamErr {
    pub fn discriminant(&self) -> u8 {
        match self {
            StreamErr::Closed => 0,
            StreamErr::Invalid(_) => 1,
            StreamErr::Failed(_) => 2,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StreamErr::Closed => "",
            StreamErr::Invalid(m) | StreamErr::Failed(m) => m,
        }
    }

    pub fn from_py(v: &Bound<'_, PyAny>) -> PyResult<StreamErr> {
        let t = v.downcast::<PyTuple>()?;
        let disc: u8 = t.get_item(0)?.extract()?;
        let msg: String = t.get_item(1)?.extract()?;
        Ok(match disc {
            0 => StreamErr::Closed,
            1 => StreamErr::Invalid(msg),
            _ => StreamErr::Failed(msg),
        })
    }
}

/// One call into the host services, as host time; a Python exception is its message.
pub fn call_host<R>(
    host: &Py<PyAny>,
    clock: &CallClock,
    what: &str,
    f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<R>,
) -> Result<R, String> {
    let r = clock.host_time(|| Python::with_gil(|py| f(py, host.bind(py)).map_err(|e| e.to_string())));
    r.map_err(|e| format!("host import {what} failed: {e}"))
}

fn call<R>(
    state: &mut State,
    what: &str,
    f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<R>,
) -> wasmtime::Result<R> {
    match call_host(&state.host, &state.clock, what, f) {
        Ok(v) => Ok(v),
        Err(msg) => {
            state.host_error = Some(msg.clone());
            Err(wasmtime::format_err!(msg))
        }
    }
}

/// `None` for success, else the stream-error Python answered.
pub fn unit_or_err(r: &Bound<'_, PyAny>) -> PyResult<Result<(), StreamErr>> {
    if r.is_none() {
        Ok(Ok(()))
    } else {
        Ok(Err(StreamErr::from_py(r)?))
    }
}

pub fn open(state: &mut State, container: &str, name: &str) -> wasmtime::Result<Result<u32, StreamErr>> {
    call(state, "open", |_py, h| {
        let r = h.call_method1("open", (container, name))?;
        if r.is_instance_of::<PyTuple>() {
            Ok(Err(StreamErr::from_py(&r)?))
        } else {
            Ok(Ok(r.extract::<u32>()?))
        }
    })
}

pub fn size(state: &mut State, handle: u32) -> wasmtime::Result<Option<u64>> {
    call(state, "size", |_py, h| h.call_method1("size", (handle,))?.extract::<Option<u64>>())
}

/// A pull read: the bytes, or the stream-error.
pub fn read(state: &mut State, handle: u32, len: u64) -> wasmtime::Result<Result<Vec<u8>, StreamErr>> {
    call(state, "read", |_py, h| {
        let r = h.call_method1("read", (handle, len))?;
        if let Ok(b) = r.downcast::<PyBytes>() {
            Ok(Ok(b.as_bytes().to_vec()))
        } else {
            Ok(Err(StreamErr::from_py(&r)?))
        }
    })
}

pub fn start_chunking(state: &mut State, handle: u32, chunk: u64, cid: u64) -> wasmtime::Result<Result<(), StreamErr>> {
    let r = call(state, "start-chunking-read", |_py, h| {
        let r = h.call_method1("start_chunking", (handle, chunk, cid))?;
        if r.is_none() {
            Ok(Ok(()))
        } else {
            Ok(Err(StreamErr::from_py(&r)?))
        }
    })?;
    if r.is_ok() {
        state.started.insert(cid, handle); // the streams world: whose size `consume` is told
    }
    Ok(r)
}

pub fn drop_stream(state: &mut State, handle: u32) -> wasmtime::Result<()> {
    call(state, "resource-drop", |_py, h| {
        h.call_method1("drop", (handle,))?;
        Ok(())
    })
}

/// Guest output (stdout = 1, stderr = 2): Python splits it into capped lines.
pub fn output(host: &Py<PyAny>, fd: u8, data: &[u8]) -> PyResult<()> {
    Python::with_gil(|py| {
        host.bind(py).call_method1("output", (fd, PyBytes::new(py, data)))?;
        Ok(())
    })
}

/// `blobs.create`: the output's handle, or the stream-error.
pub fn create_output(state: &mut State, container: &str, name: &str) -> wasmtime::Result<Result<u32, StreamErr>> {
    call(state, "create", |_py, h| {
        let r = h.call_method1("create", (container, name))?;
        if r.is_instance_of::<PyTuple>() {
            Ok(Err(StreamErr::from_py(&r)?))
        } else {
            Ok(Ok(r.extract::<u32>()?))
        }
    })
}

/// `output-stream.write`: blocks (as host time) while the output drains to its sink.
pub fn write_output(state: &mut State, handle: u32, data: &[u8]) -> wasmtime::Result<Result<(), StreamErr>> {
    call(state, "output-stream.write", |py, h| unit_or_err(&h.call_method1("write", (handle, PyBytes::new(py, data)))?))
}

pub fn finish_output(state: &mut State, handle: u32) -> wasmtime::Result<Result<(), StreamErr>> {
    call(state, "output-stream.finish", |_py, h| unit_or_err(&h.call_method1("finish", (handle,))?))
}

pub fn drop_output(state: &mut State, handle: u32) -> wasmtime::Result<()> {
    call(state, "output-stream drop", |_py, h| {
        h.call_method1("drop_output", (handle,))?;
        Ok(())
    })
}

/// The most bytes one `write` may carry (max-chunk-size), for the streams world's pipe.
pub fn output_cap(state: &mut State) -> wasmtime::Result<usize> {
    call(state, "output cap", |_py, h| h.call_method0("output_cap")?.extract::<usize>())
}
