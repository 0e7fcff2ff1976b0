//! The three guest kinds behind one trait. `instantiate` is the one place that
//! tells them apart; batching, the gate (halt and the panic test hook) and the
//! per-call loop are written once here and in batch.rs, above the kinds.
//!
//! - `component`: a component of world consumer: one typed handle-chunk call
//!   per chunk (a file chunk is read into the instance's buffer, then lowered);
//! - `streams`: a component of world consumer-streams: one `stream<u8>` per
//!   chunked read, several writes of a batch in one trip through the store;
//! - `core`: a core module: chunkd performs the canonical ABI (abi.rs), and a
//!   file chunk is read straight into guest memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use wasmtime::{Store, StoreLimitsBuilder};

pub use crate::chunks::{At, Chunk, Source};
use crate::component_link::{wasi_ctx, StreamEnd};
use crate::errors::Fault;
use crate::guest::{Code, Guest};
use crate::state::{begin, on_deadline, CallClock, State};

mod component;
mod core;
mod streams;

/// What one item of a batch came to.
#[derive(Clone, Debug, Default)]
pub enum Answer {
    /// The guest's bool: its last call's (every call before it said true). The streams
    /// world: true when every write was taken whole, false when the guest closed its
    /// reader or returned first.
    Bool(bool),
    /// A direct read failed: the guest was not called for that chunk.
    SourceError(String),
    /// Nothing more was delivered (skipped, halted, or the guest trapped in it).
    #[default]
    Nothing,
}

/// What each guest call of a batch asks first: the batch is halted (an operator cancel,
/// cluster fencing), or a panic is injected here (a test hook).
pub struct Gate<'a> {
    pub timeout: u64,
    pub halt: &'a Arc<AtomicBool>,
    pub panic_after: &'a mut Option<u64>,
}

impl Gate<'_> {
    pub fn halted(&self) -> bool {
        self.halt.load(Ordering::Relaxed)
    }

    /// How many of the next `want` guest calls may go before the next ask; panics where
    /// the test hook says.
    pub fn allow(&mut self, want: u64) -> u64 {
        match self.panic_after {
            Some(0) => {
                *self.panic_after = None;
                panic!("injected panic (test hook) inside a native batch");
            }
            Some(n) => want.min(*n),
            None => want,
        }
    }

    /// `n` guest calls went.
    pub fn took(&mut self, n: u64) {
        if let Some(left) = self.panic_after.as_mut() {
            *left = left.saturating_sub(n);
        }
    }
}

/// How one guest call of a per-call kind came out.
pub enum Step {
    Answered(bool),
    /// The direct read of its chunk failed: the guest was not called.
    Source(String),
}

/// The per-call kinds' delivery: one guest call per chunk, in order, the gate asked
/// before each; `made` counts the calls that returned.
pub fn per_call<'s>(
    gate: &mut Gate<'_>,
    src: &'s Source<'s>,
    made: &mut u64,
    mut call: impl FnMut(u64, Chunk<'s>) -> Result<Step, Fault>,
) -> Result<Answer, Fault> {
    let mut answer = Answer::Nothing;
    for j in 0..src.count() {
        if gate.halted() {
            return Ok(Answer::Nothing);
        }
        gate.allow(1);
        gate.took(1);
        match call(j, src.chunk(j))? {
            Step::Answered(b) => {
                *made += 1;
                answer = Answer::Bool(b);
                if !b {
                    break;
                }
            }
            Step::Source(e) => return Ok(Answer::SourceError(e)),
        }
    }
    Ok(answer)
}

/// One live instance of a guest, of one kind.
pub trait GuestKind: Send {
    /// `invoke(args)`: (ok, the string it returned).
    fn invoke(&mut self, timeout: u64, args: Vec<String>) -> Result<(bool, String), Fault>;

    /// Delivers `src` to the guest (`at` says where), `made` counting the chunks it
    /// took (handle-chunk calls that returned; stream writes taken whole).
    fn deliver(&mut self, gate: &mut Gate<'_>, at: At, src: &Source<'_>, made: &mut u64) -> Result<Answer, Fault>;

    /// Tells how a stream ended (stream-ended, or the streams world's `end` future);
    /// the streams world returns the error its `consume` call returned, if it did.
    fn stream_ended(&mut self, timeout: u64, cid: u64, end: StreamEnd) -> Result<Option<String>, Fault>;
}

/// What a new instance is made with.
#[derive(Clone)]
pub struct Setup {
    pub host: Arc<Py<PyAny>>,
    pub ticks: Arc<AtomicU64>,
    pub memory_bytes: usize,
    pub timeout: u64,
}

/// A new store for `guest`, its guest instantiated (start functions count against the
/// timeout), as the kind the guest is.
pub fn instantiate(guest: &Guest, setup: &Setup) -> Result<Box<dyn GuestKind>, Fault> {
    let clock = CallClock::new(setup.ticks.clone(), setup.timeout);
    let wasi = match guest.code {
        Code::Component { .. } | Code::Streams { .. } => Some(wasi_ctx(setup.host.clone(), clock.clone())),
        Code::Core { .. } => None,
    };
    let state = State {
        host: setup.host.clone(),
        clock,
        limits: StoreLimitsBuilder::new().memory_size(setup.memory_bytes).trap_on_grow_failure(true).build(),
        wasi,
        table: wasmtime::component::ResourceTable::new(),
        host_error: None,
        started: HashMap::new(),
    };
    let mut store = Store::new(guest.engine(), state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(on_deadline);
    begin(&mut store, setup.timeout);
    match &guest.code {
        Code::Component { pre } => Ok(Box::new(component::ComponentKind::new(store, pre)?)),
        Code::Streams { pre } => Ok(Box::new(streams::StreamsKind::new(store, pre)?)),
        Code::Core { pre, initialize, has_post_handle, has_post_invoke } => Ok(Box::new(core::CoreKind::new(
            store,
            pre,
            guest.has_events,
            core::Optional { initialize: *initialize, post_handle: *has_post_handle, post_invoke: *has_post_invoke },
        )?)),
    }
}

/// Looks up `iface`'s function `name` in a component instance.
pub(crate) fn find_export(
    store: &mut Store<State>,
    inst: &wasmtime::component::Instance,
    iface: &str,
    name: &str,
) -> Option<wasmtime::component::Func> {
    let i = inst.get_export_index(&mut *store, None, iface)?;
    let f = inst.get_export_index(&mut *store, Some(&i), name)?;
    inst.get_func(&mut *store, f)
}

/// The fault of an error out of a store.
pub(crate) fn fault(e: wasmtime::Error, store: &mut Store<State>) -> Fault {
    Fault::of(&e, store.data_mut())
}
