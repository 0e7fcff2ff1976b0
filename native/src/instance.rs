//! One instance of one guest: its store, its exports, and the calls into it.
//!
//! Every call runs with the GIL released, under `catch_unwind` (a panic in
//! here breaks the instance and fails its job; the process goes on), with a
//! fresh epoch budget per guest call. A trap or a timeout breaks the
//! instance: the pool replaces it (chunkd/pool.py).

use std::collections::{HashMap, HashSet};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use wasmtime::component::{Func, Resource};
use wasmtime::{Store, StoreLimitsBuilder, Trap};

use crate::component::{self, InputStream, StreamEnd};
use crate::core::{span_err, CoreExports, BORROW_BIT};
use crate::guest::{Code, Guest};
use crate::state::{host_time, on_deadline, CallClock, State};
use crate::streams::{self, ConsumeFunc, Progress, Shared, Stop};
use crate::wit;

/// How a call went wrong: the Python side words the message.
#[derive(Debug, Clone)]
pub enum Fault {
    Trap(String),
    Timeout,
    Panic(String),
    Broken(String),
}

impl Fault {
    pub fn parts(&self) -> (&'static str, String) {
        match self {
            Fault::Trap(r) => ("trap", r.clone()),
            Fault::Timeout => ("timeout", String::new()),
            Fault::Panic(r) => ("panic", r.clone()),
            Fault::Broken(r) => ("broken", r.clone()),
        }
    }
}

enum Live {
    Component {
        store: Store<State>,
        handle: Func,
        invoke: Func,
        ended: Option<Func>,
    },
    Core {
        store: Store<State>,
        ex: Box<CoreExports>,
    },
    /// The streams world: one `consume` call per stream, fed by its `Feed`.
    Streams {
        store: Store<State>,
        invoke: Func,
        consume: ConsumeFunc,
        feeds: HashMap<u64, Shared>,
    },
}

/// One chunk's bytes: held by Python (a bytes object kept alive for the call), or
/// `count` consecutive chunks the instance reads from `fd` itself.
enum Data {
    Bytes { ptr: usize, len: usize },
    Run(Run),
}

#[derive(Clone, Copy)]
struct Run {
    fd: i32,
    offset: u64,
    chunk_size: u64,
    count: u64,
    last_length: u64,
    hint_offset: u64,
    hint_length: u64,
}

struct Item {
    handle: u32,
    cid: u64,
    current: u64,
    total: u64,
    data: Data,
}

/// What one item of a batch came to.
#[derive(Clone, Debug, Default)]
enum Answer {
    Bool(bool),
    /// a direct read failed: the guest was not called for that chunk
    SourceError(String),
    /// nothing more was delivered (skipped, halted, or the guest trapped in it)
    #[default]
    Nothing,
}

/// The result of one item of a batch: its answer, how many handle-chunk calls
/// returned, and their total duration.
#[pyclass(frozen, module = "chunkd._native", name = "CallResult")]
#[derive(Clone)]
pub struct CallResult {
    answer: Answer,
    #[pyo3(get)]
    made: u64,
    #[pyo3(get)]
    seconds: f64,
}

#[pymethods]
impl CallResult {
    /// The guest's bool (a run's: its last call's), or None.
    #[getter]
    fn answer(&self) -> Option<bool> {
        match self.answer {
            Answer::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The direct read's error, when one stopped the item.
    #[getter]
    fn source_error(&self) -> Option<String> {
        match &self.answer {
            Answer::SourceError(e) => Some(e.clone()),
            _ => None,
        }
    }

    fn __repr__(&self) -> String {
        format!("CallResult({:?}, made={}, seconds={:.6})", self.answer, self.made, self.seconds)
    }
}

struct Inner {
    live: Option<Live>,
    buf: Vec<u8>,
    stopped: HashSet<u32>,
    broken: Option<String>,
    panic_after: Option<u64>,
}

#[pyclass(frozen, module = "chunkd._native", name = "Instance")]
pub struct Instance {
    inner: Mutex<Inner>,
    halt: Arc<AtomicBool>,
    guest: Arc<Guest>,
    host: Arc<Py<PyAny>>,
    ticks: Arc<AtomicU64>,
    memory_bytes: usize,
    timeout_ticks: AtomicU64,
}

fn reason_of(e: &wasmtime::Error, state: &mut State) -> Fault {
    if let Some(t) = e.downcast_ref::<Trap>() {
        if *t == Trap::Interrupt {
            return Fault::Timeout;
        }
        return Fault::Trap(format!("wasm trap: {t}"));
    }
    if let Some(h) = state.host_error.take() {
        return Fault::Trap(h);
    }
    Fault::Trap(e.root_cause().to_string())
}

fn begin(store: &mut Store<State>, timeout: u64) {
    store.data_mut().clock.timeout = timeout;
    store.data_mut().clock.begin();
    store.set_epoch_deadline(timeout);
}

pub(crate) fn pread_full(fd: i32, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0usize;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let r = unsafe {
            libc::pread(fd, rest.as_mut_ptr() as *mut libc::c_void, rest.len(), (offset + got as u64) as libc::off_t)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    Ok(got)
}

fn advise(fd: i32, offset: u64, len: u64) {
    // SAFETY: a hint only; errors are ignored.
    unsafe {
        libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED);
    }
}

/// A direct read's failure, worded as the Python side words SourceError.
pub(crate) fn read_error(got: io::Result<usize>, offset: u64, n: u64) -> Option<String> {
    match got {
        Ok(g) if g as u64 == n => None,
        Ok(g) => Some(format!("blob changed size: got {g} bytes at offset {offset}, expected {n}")),
        Err(e) => Some(format!("read failed at offset {offset}: {}", e)),
    }
}

enum Step {
    Answered(bool),
    Source(String),
    /// The streams world: the guest closed its reader, or returned, before taking the
    /// chunk whole (not delivered; the stream stops as if it answered false).
    Closed,
}

/// The budget of the streams call in progress (see streams::drive), begun now.
fn budget(store: &mut Store<State>, timeout: u64) -> streams::Budget {
    begin(store, timeout);
    let c = &store.data().clock;
    streams::Budget { ticks: c.ticks.clone(), waited: c.waited.clone(), start: c.start, timeout }
}

/// The feed of `cid`'s stream; its `consume` call is started here the first time.
fn feed_of(
    store: &mut Store<State>,
    consume: ConsumeFunc,
    feeds: &mut HashMap<u64, Shared>,
    cid: u64,
) -> Result<Shared, Fault> {
    if let Some(f) = feeds.get(&cid) {
        return Ok(f.clone());
    }
    let size = match store.data().started.get(&cid).copied() {
        Some(h) => crate::host::size(store.data_mut(), h).map_err(|e| reason_of(&e, store.data_mut()))?,
        None => None,
    };
    let feed = streams::start(store, consume, cid, size).map_err(|e| reason_of(&e, store.data_mut()))?;
    feeds.insert(cid, feed.clone());
    Ok(feed)
}

/// A fault out of a drive.
fn stop_fault(stop: Stop, store: &mut Store<State>) -> Fault {
    match stop {
        Stop::Expired => Fault::Timeout,
        Stop::Error(e) => reason_of(&e, store.data_mut()),
    }
}

/// The trap a finished `consume` call ended in, if it did.
fn call_fault(feed: &Shared, store: &mut Store<State>) -> Option<Fault> {
    let mut f = streams::lock(feed);
    if matches!(f.done, Some(Err(_))) {
        if let Some(Err(e)) = f.done.take() {
            f.done = Some(Ok(Err("the call failed".into())));
            drop(f);
            return Some(reason_of(&e, store.data_mut()));
        }
    }
    None
}

/// What one stream write carries: bytes the caller holds, or a file range the stream's
/// producer reads straight into the guest's buffer.
enum Write<'a> {
    Mem(&'a [u8]),
    File { fd: i32, offset: u64, len: usize },
}

/// One write into `cid`'s stream: the store runs until the guest took it whole. The feed
/// borrows the bytes for this call only (forgotten before it returns, on every path).
fn stream_write(
    store: &mut Store<State>,
    consume: ConsumeFunc,
    feeds: &mut HashMap<u64, Shared>,
    timeout: u64,
    cid: u64,
    data: Write<'_>,
) -> Result<Step, Fault> {
    let feed = feed_of(store, consume, feeds, cid)?;
    {
        let mut f = streams::lock(&feed);
        if f.done.is_some() || f.reader_gone() {
            drop(f);
            return match call_fault(&feed, store) {
                Some(fault) => Err(fault),
                None => Ok(Step::Closed),
            };
        }
        match data {
            Write::Mem(bytes) => f.put(bytes),
            Write::File { fd, offset, len } => f.put_file(fd, offset, len),
        }
    }
    let b = budget(store, timeout);
    let r = streams::drive(store, &feed, true, &b);
    let read_failed = {
        let mut f = streams::lock(&feed);
        f.forget();
        f.read_error.take()
    };
    if let Some(fault) = call_fault(&feed, store) {
        return Err(fault);
    }
    if let Some(e) = read_failed {
        return Ok(Step::Source(e));
    }
    match r {
        Ok(Progress::Taken) => Ok(Step::Answered(true)),
        Ok(Progress::ReaderGone | Progress::Returned) => Ok(Step::Closed),
        Err(stop) => Err(stop_fault(stop, store)),
    }
}

/// The end of `cid`'s stream: `end` resolves, the data stream closes, and the store runs
/// until `consume` returns. A stream that ended before its first write still gets its
/// call (an empty stream, then its end). Returns the guest's error, if it returned one.
fn stream_end(
    store: &mut Store<State>,
    consume: ConsumeFunc,
    feeds: &mut HashMap<u64, Shared>,
    timeout: u64,
    cid: u64,
    end: StreamEnd,
) -> Result<Option<String>, Fault> {
    let feed = feed_of(store, consume, feeds, cid)?;
    feeds.remove(&cid);
    store.data_mut().started.remove(&cid);
    streams::lock(&feed).finish(end);
    let b = budget(store, timeout);
    let r = streams::drive(store, &feed, false, &b);
    if let Some(fault) = call_fault(&feed, store) {
        return Err(fault);
    }
    match r {
        Ok(_) => {}
        Err(stop) => return Err(stop_fault(stop, store)),
    }
    let verdict = match streams::lock(&feed).done.take() {
        Some(Ok(Err(msg))) => Some(msg),
        _ => None,
    };
    Ok(verdict)
}

impl Inner {
    fn live(&mut self) -> Result<&mut Live, Fault> {
        if let Some(b) = &self.broken {
            return Err(Fault::Broken(b.clone()));
        }
        self.live.as_mut().ok_or_else(|| Fault::Broken("instance is closed".into()))
    }

    fn fail(&mut self, f: Fault) -> Fault {
        if !matches!(f, Fault::Broken(_)) {
            self.broken = Some(f.parts().0.to_string());
        }
        f
    }

    fn tick_panic(&mut self) {
        if let Some(n) = self.panic_after.as_mut() {
            if *n == 0 {
                self.panic_after = None;
                panic!("injected panic (test hook) inside a native batch");
            }
            *n -= 1;
        }
    }

    /// One handle-chunk call (the streams world: one write) with `data` from Python's bytes.
    fn call_bytes(&mut self, timeout: u64, it: &Item, data: &[u8]) -> Result<Step, Fault> {
        self.tick_panic();
        let live = self.live()?;
        let r = match live {
            Live::Streams { store, consume, feeds, .. } => {
                stream_write(store, *consume, feeds, timeout, it.cid, Write::Mem(data))
            }
            Live::Component { store, handle, .. } => {
                begin(store, timeout);
                let f = handle.typed::<(Resource<InputStream>, u64, u64, u64, &[u8]), (bool,)>(&*store);
                match f.and_then(|f| {
                    f.call(&mut *store, (Resource::new_borrow(it.handle), it.cid, it.current, it.total, data))
                }) {
                    Ok((b,)) => Ok(Step::Answered(b)),
                    Err(e) => Err(reason_of(&e, store.data_mut())),
                }
            }
            Live::Core { store, ex } => {
                begin(store, timeout);
                let r = core_handle(
                    store,
                    ex,
                    (it.handle, it.cid, it.current, it.total),
                    |store, ex, n| {
                        let p = ex.realloc.call(&mut *store, (0, 0, 1, n as i32))? as u32;
                        let mem = ex.memory.data_mut(&mut *store);
                        let dst =
                            mem.get_mut(p as usize..p as usize + data.len()).ok_or_else(|| span_err(p.into(), n))?;
                        dst.copy_from_slice(data);
                        Ok(Ok(p))
                    },
                    data.len() as u64,
                );
                r.map_err(|e| reason_of(&e, store.data_mut()))
            }
        };
        r.map_err(|f| self.fail(f))
    }

    /// One handle-chunk call whose `n` bytes the instance reads from `fd` at `offset`.
    fn call_direct(
        &mut self,
        timeout: u64,
        it: &Item,
        chunk: u64,
        fd: i32,
        offset: u64,
        n: u64,
    ) -> Result<Step, Fault> {
        self.tick_panic();
        let mut buf = std::mem::take(&mut self.buf);
        let live = self.live()?;
        let r = match live {
            Live::Streams { store, consume, feeds, .. } => {
                // read by the stream's producer straight into the guest's read buffer
                stream_write(store, *consume, feeds, timeout, it.cid, Write::File { fd, offset, len: n as usize })
            }
            Live::Component { store, handle, .. } => {
                if buf.len() < n as usize {
                    buf.resize(n as usize, 0);
                }
                let st = store.data();
                let got =
                    host_time(&st.clock.waited, &st.clock.ticks, || pread_full(fd, &mut buf[..n as usize], offset));
                if let Some(e) = read_error(got, offset, n) {
                    Ok(Step::Source(e))
                } else {
                    begin(store, timeout);
                    let f = handle.typed::<(Resource<InputStream>, u64, u64, u64, &[u8]), (bool,)>(&*store);
                    match f.and_then(|f| {
                        f.call(
                            &mut *store,
                            (Resource::new_borrow(it.handle), it.cid, chunk, it.total, &buf[..n as usize]),
                        )
                    }) {
                        Ok((b,)) => Ok(Step::Answered(b)),
                        Err(e) => Err(reason_of(&e, store.data_mut())),
                    }
                }
            }
            Live::Core { store, ex } => {
                begin(store, timeout);
                let r = core_handle(
                    store,
                    ex,
                    (it.handle, it.cid, chunk, it.total),
                    |store, ex, n| {
                        let p = ex.realloc.call(&mut *store, (0, 0, 1, n as i32))? as u32;
                        let (waited, ticks) = (store.data().clock.waited.clone(), store.data().clock.ticks.clone());
                        let mem = ex.memory.data_mut(&mut *store);
                        let dst =
                            mem.get_mut(p as usize..p as usize + n as usize).ok_or_else(|| span_err(p.into(), n))?;
                        let got = host_time(&waited, &ticks, || pread_full(fd, dst, offset));
                        Ok(match read_error(got, offset, n) {
                            None => Ok(p),
                            Some(e) => Err(e),
                        })
                    },
                    n,
                );
                r.map_err(|e| reason_of(&e, store.data_mut()))
            }
        };
        self.buf = buf;
        r.map_err(|f| self.fail(f))
    }

    /// Runs the batch, pushing one CallResult per item reached onto `out` as it goes (a
    /// run's entry is pushed first and counts its calls as they return), so that what was
    /// delivered before a panic is still known.
    fn run_batch(
        &mut self,
        timeout: u64,
        halt: &AtomicBool,
        items: &[Item],
        fresh: bool,
        out: &mut Vec<CallResult>,
    ) -> Option<Fault> {
        if fresh {
            self.stopped.clear();
        }
        for it in items {
            if self.stopped.contains(&it.handle) || halt.load(Ordering::Relaxed) {
                out.push(CallResult { answer: Answer::Nothing, made: 0, seconds: 0.0 });
                continue;
            }
            let t0 = Instant::now();
            match &it.data {
                Data::Bytes { ptr, len } => {
                    // SAFETY: the bytes object is kept alive by the caller for the whole batch
                    // and Python bytes are immutable.
                    let data = unsafe { std::slice::from_raw_parts(*ptr as *const u8, *len) };
                    match self.call_bytes(timeout, it, data) {
                        Ok(step) => {
                            let (more, made) = match step {
                                Step::Answered(b) => (b, 1),
                                _ => (false, 0), // the streams world: not taken whole
                            };
                            out.push(CallResult {
                                answer: Answer::Bool(more),
                                made,
                                seconds: t0.elapsed().as_secs_f64(),
                            });
                            if !more {
                                self.stopped.insert(it.handle);
                            }
                        }
                        Err(f) => return Some(f),
                    }
                }
                Data::Run(run) => {
                    if run.hint_length > 0 {
                        advise(run.fd, run.hint_offset, run.hint_length);
                    }
                    out.push(CallResult { answer: Answer::Nothing, made: 0, seconds: 0.0 });
                    let slot = out.len() - 1;
                    let mut answer = Answer::Nothing;
                    let mut fault = None;
                    for j in 0..run.count {
                        if halt.load(Ordering::Relaxed) {
                            answer = Answer::Nothing;
                            break;
                        }
                        let n = if j + 1 < run.count { run.chunk_size } else { run.last_length };
                        let offset = run.offset + j * run.chunk_size;
                        match self.call_direct(timeout, it, it.current + j, run.fd, offset, n) {
                            Ok(Step::Answered(b)) => {
                                out[slot].made += 1;
                                answer = Answer::Bool(b);
                                if !b {
                                    break;
                                }
                            }
                            Ok(Step::Source(e)) => {
                                answer = Answer::SourceError(e);
                                break;
                            }
                            Ok(Step::Closed) => {
                                answer = Answer::Bool(false);
                                break;
                            }
                            Err(f) => {
                                answer = Answer::Nothing;
                                fault = Some(f);
                                break;
                            }
                        }
                    }
                    let stop = matches!(answer, Answer::Bool(false) | Answer::SourceError(_));
                    out[slot].answer = answer;
                    out[slot].seconds = t0.elapsed().as_secs_f64();
                    if fault.is_some() {
                        return fault;
                    }
                    if stop {
                        self.stopped.insert(it.handle);
                    }
                }
            }
        }
        None
    }
}

/// handle-chunk on a core guest: `fill` puts the chunk's `n` bytes into guest memory
/// (returning their pointer, or a source error), then the call and its post-return.
/// (stream handle, correlation-id, current-chunk, total-chunks) of one handle-chunk call.
type At = (u32, u64, u64, u64);

fn core_handle(
    store: &mut Store<State>,
    ex: &CoreExports,
    (handle, cid, current, total): At,
    fill: impl FnOnce(&mut Store<State>, &CoreExports, u64) -> wasmtime::Result<Result<u32, String>>,
    n: u64,
) -> wasmtime::Result<Step> {
    let p = match fill(store, ex, n)? {
        Ok(p) => p,
        Err(e) => return Ok(Step::Source(e)),
    };
    let r = ex.handle.call(
        &mut *store,
        ((handle | BORROW_BIT) as i32, cid as i64, current as i64, total as i64, p as i32, n as i32),
    )?;
    if let Some(post) = &ex.post_handle {
        post.call(&mut *store, r)?;
    }
    Ok(Step::Answered(r != 0))
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

fn extract_items(py: Python<'_>, items: &Bound<'_, PyList>) -> PyResult<(Vec<Item>, Vec<Py<PyBytes>>)> {
    let mut out = Vec::with_capacity(items.len());
    let mut keep = Vec::new();
    for obj in items.iter() {
        let t = obj.downcast::<PyTuple>()?;
        let handle: u32 = t.get_item(0)?.extract()?;
        let cid: u64 = t.get_item(1)?.extract()?;
        let current: u64 = t.get_item(2)?.extract()?;
        let total: u64 = t.get_item(3)?.extract()?;
        let d = t.get_item(4)?;
        let data = if let Ok(b) = d.downcast::<PyBytes>() {
            let s = b.as_bytes();
            let data = Data::Bytes { ptr: s.as_ptr() as usize, len: s.len() };
            keep.push(b.clone().unbind());
            data
        } else {
            let g = |name: &str| -> PyResult<u64> { d.getattr(name)?.extract::<u64>() };
            Data::Run(Run {
                fd: d.getattr("fd")?.extract::<i32>()?,
                offset: g("offset")?,
                chunk_size: g("chunk_size")?,
                count: g("count")?,
                last_length: g("last_length")?,
                hint_offset: g("hint_offset")?,
                hint_length: g("hint_length")?,
            })
        };
        out.push(Item { handle, cid, current, total, data });
    }
    let _ = py;
    Ok((out, keep))
}

use crate::GuestFault;

fn raise(f: Fault) -> PyErr {
    let (kind, reason) = f.parts();
    GuestFault::new_err((kind, reason))
}

impl Instance {
    pub fn new(
        guest: Arc<Guest>,
        host: Py<PyAny>,
        ticks: Arc<AtomicU64>,
        memory_bytes: usize,
        timeout_ticks: u64,
    ) -> Instance {
        Instance {
            inner: Mutex::new(Inner {
                live: None,
                buf: Vec::new(),
                stopped: HashSet::new(),
                broken: None,
                panic_after: None,
            }),
            halt: Arc::new(AtomicBool::new(false)),
            guest,
            host: Arc::new(host),
            ticks,
            memory_bytes,
            timeout_ticks: AtomicU64::new(timeout_ticks),
        }
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
                Ok(r) => r,
                Err(p) => {
                    let text = panic_text(p);
                    inner.broken = Some(format!("panic: {text}"));
                    inner.live = None; // a store a panic unwound through is not used again
                    Err(Fault::Panic(text))
                }
            }
        });
        r.map_err(raise)
    }

    fn instantiate(&self, inner: &mut Inner) -> Result<(), Fault> {
        let waited = Arc::new(AtomicU64::new(0));
        let wasi = match self.guest.code {
            Code::Component { .. } => Some(component::wasi_ctx(self.host.clone(), waited.clone(), self.ticks.clone())),
            Code::Core { .. } => None,
        };
        let state = State {
            host: self.host.clone(),
            clock: CallClock { ticks: self.ticks.clone(), timeout: self.timeout_ticks.load(Ordering::Relaxed), start: 0, waited },
            limits: StoreLimitsBuilder::new().memory_size(self.memory_bytes).trap_on_grow_failure(true).build(),
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            host_error: None,
            started: HashMap::new(),
        };
        let engine = match &self.guest.code {
            Code::Component { pre } => pre.engine().clone(),
            Code::Core { pre, .. } => pre.module().engine().clone(),
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(on_deadline);
        begin(&mut store, self.timeout_ticks.load(Ordering::Relaxed));
        let fail = |e: wasmtime::Error, store: &mut Store<State>| reason_of(&e, store.data_mut());
        let live = match &self.guest.code {
            Code::Component { pre } => {
                let inst = match pre.instantiate(&mut store) {
                    Ok(i) => i,
                    Err(e) => return Err(fail(e, &mut store)),
                };
                let find = |store: &mut Store<State>, iface: &str, name: &str| -> Option<Func> {
                    let i = inst.get_export_index(&mut *store, None, iface)?;
                    let f = inst.get_export_index(&mut *store, Some(&i), name)?;
                    inst.get_func(&mut *store, f)
                };
                let invoke = find(&mut store, wit::TRIGGER_IFACE, "invoke");
                if self.guest.world == wit::CONSUMER_STREAMS {
                    let consume = find(&mut store, wit::CONSUMER_IFACE, "consume");
                    let typed = consume.map(|c| c.typed(&store));
                    match (typed, invoke) {
                        (Some(Ok(consume)), Some(invoke)) => {
                            Live::Streams { store, invoke, consume, feeds: HashMap::new() }
                        }
                        _ => return Err(Fault::Trap("the component lost its exports".into())),
                    }
                } else {
                    let handle = find(&mut store, wit::HANDLER_IFACE, "handle-chunk");
                    let ended = find(&mut store, wit::EVENTS_IFACE, "stream-ended");
                    match (handle, invoke) {
                        (Some(handle), Some(invoke)) => Live::Component { store, handle, invoke, ended },
                        _ => return Err(Fault::Trap("the component lost its exports".into())),
                    }
                }
            }
            Code::Core { pre, initialize, has_post_handle, has_post_invoke } => {
                let inst = match pre.instantiate(&mut store) {
                    Ok(i) => i,
                    Err(e) => return Err(fail(e, &mut store)),
                };
                let mut bind = || -> wasmtime::Result<CoreExports> {
                    let s = &mut store;
                    Ok(CoreExports {
                        memory: inst.get_memory(&mut *s, "memory").ok_or_else(|| wasmtime::format_err!("no memory"))?,
                        realloc: inst.get_typed_func(&mut *s, "cabi_realloc")?,
                        handle: inst.get_typed_func(&mut *s, wit::EXPORT_HANDLE)?,
                        post_handle: if *has_post_handle {
                            Some(inst.get_typed_func(&mut *s, &format!("cabi_post_{}", wit::EXPORT_HANDLE))?)
                        } else {
                            None
                        },
                        invoke: inst.get_typed_func(&mut *s, wit::EXPORT_INVOKE)?,
                        post_invoke: if *has_post_invoke {
                            Some(inst.get_typed_func(&mut *s, &format!("cabi_post_{}", wit::EXPORT_INVOKE))?)
                        } else {
                            None
                        },
                        ended: if self.guest.has_events {
                            Some(inst.get_typed_func(&mut *s, wit::EXPORT_ENDED)?)
                        } else {
                            None
                        },
                    })
                };
                let ex = match bind() {
                    Ok(ex) => ex,
                    Err(e) => return Err(fail(e, &mut store)),
                };
                if *initialize {
                    let init = inst.get_typed_func::<(), ()>(&mut store, "_initialize");
                    if let Err(e) = init.and_then(|f| f.call(&mut store, ())) {
                        return Err(fail(e, &mut store));
                    }
                }
                Live::Core { store, ex: Box::new(ex) }
            }
        };
        inner.live = Some(live);
        Ok(())
    }
}

fn core_invoke(store: &mut Store<State>, ex: &CoreExports, args: &[String]) -> wasmtime::Result<(bool, String)> {
    let n = args.len() as i32;
    let arr = ex.realloc.call(&mut *store, (0, 0, 4, 8 * n))? as u32;
    for (i, a) in args.iter().enumerate() {
        let b = a.as_bytes();
        let p = ex.realloc.call(&mut *store, (0, 0, 1, b.len() as i32))? as u32;
        let mem = ex.memory.data_mut(&mut *store);
        mem.get_mut(p as usize..p as usize + b.len())
            .ok_or_else(|| span_err(p.into(), b.len() as u64))?
            .copy_from_slice(b);
        let slot = arr as usize + 8 * i;
        let rec = mem.get_mut(slot..slot + 8).ok_or_else(|| span_err(slot as u64, 8))?;
        rec[..4].copy_from_slice(&p.to_le_bytes());
        rec[4..].copy_from_slice(&(b.len() as u32).to_le_bytes());
    }
    let ret = ex.invoke.call(&mut *store, (arr as i32, n))? as u32;
    let mem = ex.memory.data(&*store);
    let rec = mem.get(ret as usize..ret as usize + 12).ok_or_else(|| span_err(ret.into(), 12))?;
    let disc = rec[0];
    if disc > 1 {
        wasmtime::bail!("invoke returned result discriminant {disc}");
    }
    let sp = u32::from_le_bytes(rec[4..8].try_into().unwrap()) as usize;
    let sn = u32::from_le_bytes(rec[8..12].try_into().unwrap()) as usize;
    let text = mem.get(sp..sp + sn).ok_or_else(|| span_err(sp as u64, sn as u64))?;
    let text = String::from_utf8(text.to_vec())
        .map_err(|_| wasmtime::format_err!("guest passed a string that is not UTF-8"))?;
    if let Some(post) = &ex.post_invoke {
        post.call(&mut *store, ret as i32)?;
    }
    Ok((disc == 0, text))
}

/// A batch's results and the (kind, reason) of the fault that stopped it.
type BatchOut = (Vec<CallResult>, Option<(String, String)>);

#[pymethods]
impl Instance {
    /// Instantiates the guest (its start functions count against call_timeout).
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        self.with_inner(py, |inner| {
            let r = self.instantiate(inner);
            r.map_err(|f| inner.fail(f))
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
        let timeout = self.timeout_ticks.load(Ordering::Relaxed);
        self.with_inner(py, move |inner| {
            let r = match inner.live()? {
                Live::Streams { store, invoke, consume, feeds } => {
                    // streams a job left open (its end never told): cancelled, their calls
                    // returned, before the next job's invoke
                    let stale: Vec<u64> = feeds.keys().copied().collect();
                    let mut r = Ok(());
                    for cid in stale {
                        if let Err(f) = stream_end(store, *consume, feeds, timeout, cid, StreamEnd::Cancelled) {
                            r = Err(f);
                            break;
                        }
                    }
                    r.and_then(|_| {
                        begin(store, timeout);
                        let f = invoke.typed::<(Vec<String>,), (Result<String, String>,)>(&*store);
                        match f.and_then(|f| f.call(&mut *store, (args,))) {
                            Ok((Ok(s),)) => Ok((true, s)),
                            Ok((Err(s),)) => Ok((false, s)),
                            Err(e) => Err(reason_of(&e, store.data_mut())),
                        }
                    })
                }
                Live::Component { store, invoke, .. } => {
                    begin(store, timeout);
                    let f = invoke.typed::<(Vec<String>,), (Result<String, String>,)>(&*store);
                    match f.and_then(|f| f.call(&mut *store, (args,))) {
                        Ok((Ok(s),)) => Ok((true, s)),
                        Ok((Err(s),)) => Ok((false, s)),
                        Err(e) => Err(reason_of(&e, store.data_mut())),
                    }
                }
                Live::Core { store, ex } => {
                    begin(store, timeout);
                    core_invoke(store, ex, &args).map_err(|e| reason_of(&e, store.data_mut()))
                }
            };
            r.map_err(|f| inner.fail(f))
        })
    }

    /// Several handle-chunk calls in order, in one native call: a bytes item is one
    /// call, a run one call per chunk (read from its fd here). Returns one CallResult
    /// per item reached and the fault that stopped the batch, if any.
    fn run_batch(&self, py: Python<'_>, items: &Bound<'_, PyList>, fresh: bool) -> PyResult<BatchOut> {
        let (items, keep) = extract_items(py, items)?;
        let timeout = self.timeout_ticks.load(Ordering::Relaxed);
        let halt = self.halt.clone();
        let r = py.allow_threads(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let inner = &mut *guard;
            let mut out = Vec::with_capacity(items.len());
            match catch_unwind(AssertUnwindSafe(|| inner.run_batch(timeout, &halt, &items, fresh, &mut out))) {
                Ok(fault) => (out, fault),
                Err(p) => {
                    let text = panic_text(p);
                    inner.broken = Some(format!("panic: {text}"));
                    inner.live = None;
                    if let Some(last) = out.last_mut() {
                        last.answer = Answer::Nothing; // the item the panic stopped in
                    }
                    (out, Some(Fault::Panic(text)))
                }
            }
        });
        drop(keep);
        let (results, fault) = r;
        Ok((
            results,
            fault.map(|f| {
                let (k, r) = f.parts();
                (k.to_string(), r)
            }),
        ))
    }

    /// stream-ended(correlation-id, end): kind 0 completed, 1 cancelled, 2 failed(reason).
    /// The streams world: `end` resolves, `data` closes, and the `consume` call is waited
    /// for; returns the error it returned, if it did.
    fn stream_ended(&self, py: Python<'_>, cid: u64, kind: u8, reason: String) -> PyResult<Option<String>> {
        let timeout = self.timeout_ticks.load(Ordering::Relaxed);
        self.with_inner(py, move |inner| {
            let r = match inner.live()? {
                Live::Streams { store, consume, feeds, .. } => {
                    let end = match kind {
                        0 => StreamEnd::Completed,
                        1 => StreamEnd::Cancelled,
                        _ => StreamEnd::Failed(reason),
                    };
                    return stream_end(store, *consume, feeds, timeout, cid, end).map_err(|f| inner.fail(f));
                }
                Live::Component { store, ended: Some(f), .. } => {
                    begin(store, timeout);
                    let end = match kind {
                        0 => StreamEnd::Completed,
                        1 => StreamEnd::Cancelled,
                        _ => StreamEnd::Failed(reason),
                    };
                    let typed = f.typed::<(u64, StreamEnd), ()>(&*store);
                    typed.and_then(|t| t.call(&mut *store, (cid, end))).map_err(|e| reason_of(&e, store.data_mut()))
                }
                Live::Core { store, ex } if ex.ended.is_some() => {
                    begin(store, timeout);
                    let r = (|| -> wasmtime::Result<()> {
                        let (p, n) = if kind == 2 {
                            let b = reason.as_bytes();
                            let p = ex.realloc.call(&mut *store, (0, 0, 1, b.len() as i32))? as u32;
                            let mem = ex.memory.data_mut(&mut *store);
                            mem.get_mut(p as usize..p as usize + b.len())
                                .ok_or_else(|| span_err(p.into(), b.len() as u64))?
                                .copy_from_slice(b);
                            (p as i32, b.len() as i32)
                        } else {
                            (0, 0)
                        };
                        ex.ended.as_ref().unwrap().call(&mut *store, (cid as i64, kind as i32, p, n))
                    })();
                    r.map_err(|e| reason_of(&e, store.data_mut()))
                }
                _ => Ok(()),
            };
            r.map(|_| None).map_err(|f| inner.fail(f))
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn direct_reads_are_exact_or_say_why() {
        let mut f = tempfile_with(b"0123456789");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut buf = [0u8; 4];
        assert_eq!(read_error(pread_full(fd, &mut buf, 3), 3, 4), None);
        assert_eq!(&buf, b"3456");
        let short = read_error(pread_full(fd, &mut buf, 8), 8, 4).unwrap();
        assert_eq!(short, "blob changed size: got 2 bytes at offset 8, expected 4");
        let bad = read_error(pread_full(-1, &mut buf, 0), 0, 4).unwrap();
        assert!(bad.starts_with("read failed at offset 0: "), "{bad}");
        f.flush().unwrap();
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        let p = std::env::temp_dir().join(format!("chunkd-native-read-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }
}
