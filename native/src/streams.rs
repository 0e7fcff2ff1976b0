//! The streams world (`consumer-streams`, WASI 0.3 style): one `stream<u8>`
//! per started chunked read, written by the host at the pace Python chooses.
//!
//! For each correlation-id the instance keeps a `Feed`, shared by three
//! parties inside the store:
//! - `Writer`, the host end of the guest's `data` stream (a `StreamProducer`):
//!   when the guest reads, it copies the bytes of the write in progress
//!   straight into the guest's read buffer; with none, it waits.
//! - `Ender`, the host end of the guest's `end` future: it resolves once the
//!   host has said how the stream ended.
//! - the `Consume` task: the one `consume` call, spawned into the store; it
//!   records the guest's result in the feed.
//!
//! The instance thread drives the store (`drive`) only while it has something
//! to wait for: a write to be taken, or the call to return. Between batches
//! the guest's task stays suspended inside the store on its read, holding no
//! host bytes. A wait is bounded by the call's budget (call_timeout of guest
//! time, host time given back) also when the guest is blocked rather than
//! running: the epoch callback cannot see that case, `block_on` does.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::component::{
    Accessor, AccessorTask, Destination, FutureProducer, FutureReader, StreamProducer, StreamReader, StreamResult,
    TypedFunc,
};
use wasmtime::{Store, StoreContextMut};

use crate::component::StreamEnd;
use crate::instance::{pread_full, read_error};
use crate::state::{host_time, State};

/// `consume(correlation-id, size, data, end) -> result<_, string>`.
pub type ConsumeFunc = TypedFunc<(u64, Option<u64>, StreamReader<u8>, FutureReader<StreamEnd>), (Result<(), String>,)>;

/// How the guest's `consume` call came out: its verdict, or the error (a trap) that stopped it.
pub type Done = Result<Result<(), String>, wasmtime::Error>;

/// The bytes of the write in progress, for one drive only (so a stream holds no host
/// memory between writes): borrowed from the caller of `drive` (a Python bytes object
/// the batch keeps alive), or `len` bytes of file `fd` at `offset` that the producer
/// `pread`s straight into the guest's read buffer (a direct read: one copy).
#[derive(Clone, Copy)]
struct Src {
    ptr: usize,
    len: usize,
    fd: i32,
    offset: u64,
}

impl Default for Src {
    fn default() -> Self {
        Src { ptr: 0, len: 0, fd: -1, offset: 0 }
    }
}

#[derive(Default)]
pub struct Feed {
    /// The write in progress (at most one chunk) and how much of it the guest took.
    src: Src,
    pos: usize,
    /// A direct read of the write in progress failed: the write is over, not taken.
    pub read_error: Option<String>,
    /// The host has no more bytes for this stream: the next read sees its end.
    closed: bool,
    /// How the stream ended, once the host says so (resolves `end`).
    end: Option<StreamEnd>,
    /// The guest closed its reader.
    reader_gone: bool,
    pub done: Option<Done>,
    write_waker: Option<Waker>,
    end_waker: Option<Waker>,
    drive_waker: Option<Waker>,
}

pub type Shared = Arc<Mutex<Feed>>;

pub fn lock(s: &Shared) -> MutexGuard<'_, Feed> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

impl Feed {
    /// Hands the guest the next write. `bytes` must stay valid and unchanged until
    /// `forget` (stream_write calls it before it returns, on every path).
    pub fn put(&mut self, bytes: &[u8]) {
        self.src = Src { ptr: bytes.as_ptr() as usize, len: bytes.len(), ..Src::default() };
        self.pos = 0;
        wake(self.write_waker.take());
    }

    /// Hands the guest the next write: `len` bytes of `fd` at `offset`, read when the
    /// guest reads, into its own buffer.
    pub fn put_file(&mut self, fd: i32, offset: u64, len: usize) {
        self.src = Src { ptr: 0, len, fd, offset };
        self.pos = 0;
        self.read_error = None;
        wake(self.write_waker.take());
    }

    /// The write is over (taken, or not to be taken): its bytes are no longer used.
    pub fn forget(&mut self) {
        self.src = Src::default();
        self.pos = 0;
    }

    fn rest(&self) -> &[u8] {
        if self.pos >= self.src.len || self.src.fd >= 0 {
            return &[];
        }
        // SAFETY: `put` was given a slice that stays valid until `forget`, which resets
        // `src` before the slice's owner lets it go (see `put`).
        let all = unsafe { std::slice::from_raw_parts(self.src.ptr as *const u8, self.src.len) };
        &all[self.pos..]
    }

    /// The host's end of the stream: no more bytes, and `end` says how.
    pub fn finish(&mut self, end: StreamEnd) {
        self.forget();
        self.closed = true;
        if self.end.is_none() {
            self.end = Some(end);
        }
        wake(self.write_waker.take());
        wake(self.end_waker.take());
    }

    pub fn taken(&self) -> bool {
        self.pos >= self.src.len
    }

    pub fn reader_gone(&self) -> bool {
        self.reader_gone
    }
}

/// The host end of the guest's `data` stream.
pub struct Writer(pub Shared);

impl Drop for Writer {
    fn drop(&mut self) {
        let mut f = lock(&self.0);
        f.reader_gone = true;
        wake(f.drive_waker.take());
    }
}

impl StreamProducer<State> for Writer {
    type Item = u8;
    type Buffer = Option<u8>;

    fn poll_produce<'a>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        store: StoreContextMut<'a, State>,
        dst: Destination<'a, u8, Option<u8>>,
        finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let shared = self.0.clone();
        let mut f = lock(&shared);
        let left = f.src.len.saturating_sub(f.pos);
        if left > 0 {
            let clock = &store.data().clock;
            let (waited, ticks) = (clock.waited.clone(), clock.ticks.clone());
            let mut d = dst.as_direct(store, left);
            let room = d.remaining();
            let n = room.len().min(left);
            if n > 0 {
                if f.src.fd >= 0 {
                    // a direct read, straight into the guest's buffer (host time)
                    let at = f.src.offset + f.pos as u64;
                    let got = host_time(&waited, &ticks, || pread_full(f.src.fd, &mut room[..n], at));
                    if let Some(e) = read_error(got, at, n as u64) {
                        // the write is over, nothing of this read is given: the read waits
                        // for what the host does next (the stream's end, failed)
                        f.read_error = Some(e);
                        f.pos = f.src.len;
                        f.write_waker = Some(cx.waker().clone());
                        wake(f.drive_waker.take());
                        return Poll::Pending;
                    }
                } else {
                    room[..n].copy_from_slice(&f.rest()[..n]);
                }
                d.mark_written(n);
                f.pos += n;
                if f.taken() {
                    wake(f.drive_waker.take());
                }
            }
            // n == 0: a zero-length read, told that bytes are ready
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        if f.closed {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        if finish {
            return Poll::Ready(Ok(StreamResult::Cancelled));
        }
        f.write_waker = Some(cx.waker().clone());
        wake(f.drive_waker.take()); // the guest waits for the next write: the host's turn
        Poll::Pending
    }
}

/// The host end of the guest's `end` future.
pub struct Ender(pub Shared);

impl FutureProducer<State> for Ender {
    type Item = StreamEnd;

    fn poll_produce(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        _store: StoreContextMut<'_, State>,
        finish: bool,
    ) -> Poll<wasmtime::Result<Option<StreamEnd>>> {
        let mut f = lock(&self.0);
        if let Some(e) = f.end.clone() {
            return Poll::Ready(Ok(Some(e)));
        }
        if finish {
            return Poll::Ready(Ok(None));
        }
        f.end_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The one `consume` call of a stream, as a task of the store.
pub struct Consume {
    pub func: ConsumeFunc,
    pub feed: Shared,
    pub cid: u64,
    pub size: Option<u64>,
    pub data: StreamReader<u8>,
    pub end: FutureReader<StreamEnd>,
}

impl AccessorTask<State> for Consume {
    async fn run(self, acc: &Accessor<State>) -> wasmtime::Result<()> {
        let Consume { func, feed, cid, size, data, end } = self;
        let r = func.call_concurrent(acc, (cid, size, data, end)).await;
        let mut f = lock(&feed);
        f.done = Some(r.map(|(v,)| v));
        wake(f.drive_waker.take());
        Ok(())
    }
}

/// Starts the `consume` call of a new stream: its feed, its stream and future, its task.
pub fn start(store: &mut Store<State>, func: ConsumeFunc, cid: u64, size: Option<u64>) -> wasmtime::Result<Shared> {
    let feed: Shared = Arc::new(Mutex::new(Feed::default()));
    let data = StreamReader::new(&mut *store, Writer(feed.clone()))?;
    let end = FutureReader::new(&mut *store, Ender(feed.clone()))?;
    store.spawn(Consume { func, feed: feed.clone(), cid, size, data, end })?;
    Ok(feed)
}

/// What a drive waited for came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The write in progress was taken whole.
    Taken,
    /// The guest closed its reader first.
    ReaderGone,
    /// The consume call returned (or failed).
    Returned,
}

/// What the guest does when the budget runs out: `Expired`, or the store's error.
pub enum Stop {
    Expired,
    Error(wasmtime::Error),
}

/// The budget of a drive: `timeout` ticks, less the host time given back in `waited`.
pub struct Budget {
    pub ticks: Arc<AtomicU64>,
    pub waited: Arc<AtomicU64>,
    pub start: u64,
    pub timeout: u64,
}

impl Budget {
    fn expired(&self) -> bool {
        let now = self.ticks.load(Ordering::Relaxed);
        now.saturating_sub(self.start).saturating_sub(self.waited.load(Ordering::Relaxed)) >= self.timeout
    }
}

/// Runs the store's event loop until the write in progress is taken (`write`) or the
/// call returns, within the budget.
pub fn drive(store: &mut Store<State>, feed: &Shared, write: bool, budget: &Budget) -> Result<Progress, Stop> {
    let fut = store.run_concurrent(async |_acc| {
        std::future::poll_fn(|cx| {
            let mut f = lock(feed);
            // a write taken whole counts even when the call returned right after it
            if write && f.taken() {
                return Poll::Ready(Progress::Taken);
            }
            if f.done.is_some() {
                return Poll::Ready(Progress::Returned);
            }
            if write && f.reader_gone {
                return Poll::Ready(Progress::ReaderGone);
            }
            f.drive_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    });
    match block_on(fut, budget) {
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => Err(Stop::Error(e)),
        None => Err(Stop::Expired),
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// How long the epoch clock may stand still before a wait stops counting on it (the
/// engine's clock stopped: the daemon is closing).
const CLOCK_STOPPED: Duration = Duration::from_secs(2);

/// Polls `fut` on this thread until it is ready, or None once the budget is spent (or
/// the epoch clock stopped advancing, so the budget never could be).
fn block_on<F: Future>(fut: F, budget: &Budget) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let mut seen = (budget.ticks.load(Ordering::Relaxed), Instant::now());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        if budget.expired() {
            return None;
        }
        let now = budget.ticks.load(Ordering::Relaxed);
        if now != seen.0 {
            seen = (now, Instant::now());
        } else if seen.1.elapsed() >= CLOCK_STOPPED {
            return None;
        }
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_hands_over_one_write_and_its_end() {
        let mut f = Feed::default();
        assert!(f.taken());
        let bytes = b"abc".to_vec();
        f.put(&bytes);
        assert!(!f.taken());
        assert_eq!(f.rest(), b"abc");
        f.pos = 2;
        assert_eq!(f.rest(), b"c");
        f.pos = 3;
        assert!(f.taken() && f.rest().is_empty());
        f.put(b"wxyz");
        f.forget();
        assert!(f.taken() && f.rest().is_empty());
        f.finish(StreamEnd::Cancelled);
        f.finish(StreamEnd::Completed); // an end is told once
        assert!(f.taken() && f.closed && matches!(f.end, Some(StreamEnd::Cancelled)));
    }

    #[test]
    fn block_on_gives_up_when_the_budget_is_spent() {
        let ticks = Arc::new(AtomicU64::new(0));
        let b = Budget { ticks: ticks.clone(), waited: Arc::new(AtomicU64::new(0)), start: 0, timeout: 2 };
        let t = ticks.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t.store(5, Ordering::Relaxed);
        });
        assert!(block_on(std::future::pending::<()>(), &b).is_none());
        h.join().unwrap();
        assert_eq!(block_on(async { 7 }, &b), Some(7));
        // a clock that stands still (the engine stopped) does not hold a wait for ever
        let still =
            Budget { ticks: Arc::new(AtomicU64::new(0)), waited: Arc::new(AtomicU64::new(0)), start: 0, timeout: 9 };
        let t0 = Instant::now();
        assert!(block_on(std::future::pending::<()>(), &still).is_none());
        assert!(t0.elapsed() >= CLOCK_STOPPED);
    }
}
