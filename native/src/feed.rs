//! The streams world's plumbing inside the store: one `Feed` per started
//! chunked read, shared by three parties:
//! - `Writer`, the host end of the guest's `data` stream (a `StreamProducer`):
//!   when the guest reads, it puts the bytes of the write in progress straight
//!   into the guest's read buffer (`Destination::as_direct`): copied from the
//!   bytes Python holds, or `pread` from the file; with none, it waits.
//! - `Ender`, the host end of the guest's `end` future: it resolves once the
//!   host has said how the stream ended.
//! - `Consume`, the one `consume` call, a task spawned into the store; it
//!   records the guest's result in the feed.
//!
//! A write in progress is lent for one trip only (`lend`, undone by the
//! `Lent` guard's drop on every path, a panic's included), so a stream holds no
//! host bytes between trips. A trip carries several chunks of a batch: the
//! writer moves from one chunk to the next itself, re-arming the call's budget
//! for each (call_timeout per chunk) and stopping before a chunk when the
//! batch is halted.

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use wasmtime::component::{
    Accessor, AccessorTask, Destination, FutureProducer, FutureReader, StreamProducer, StreamReader, StreamResult,
    TypedFunc,
};
use wasmtime::{Store, StoreContextMut};

use crate::chunks::Source;
use crate::component_link::StreamEnd;
use crate::fileio::read_exact_at;
use crate::state::State;

/// `consume(correlation-id, size, data, end) -> result<_, string>`.
pub type ConsumeFunc = TypedFunc<(u64, Option<u64>, StreamReader<u8>, FutureReader<StreamEnd>), (Result<(), String>,)>;

/// How the guest's `consume` call came out: its verdict, or the error (a trap) that stopped it.
pub type Done = Result<Result<(), String>, wasmtime::Error>;

/// The write in progress: `count` chunks, from bytes at `ptr` (one chunk) or from file `fd`.
#[derive(Clone, Copy)]
struct Src {
    ptr: usize,
    fd: i32,
    offset: u64,
    chunk_size: u64,
    count: u64,
    last_length: u64,
}

impl Src {
    fn of(src: &Source<'_>) -> Src {
        match src {
            Source::Mem(b) => {
                let n = b.len() as u64;
                Src { ptr: b.as_ptr() as usize, fd: -1, offset: 0, chunk_size: n, count: 1, last_length: n }
            }
            Source::File(r) => Src {
                ptr: 0,
                fd: r.fd,
                offset: r.offset,
                chunk_size: r.chunk_size,
                count: r.count,
                last_length: r.last_length,
            },
        }
    }

    fn len_of(&self, j: u64) -> usize {
        (if j + 1 < self.count { self.chunk_size } else { self.last_length }) as usize
    }
}

#[derive(Default)]
pub struct Feed {
    /// The write in progress, the chunk being written, how much of it the guest took,
    /// and how many of its chunks it took whole.
    src: Option<Src>,
    chunk: u64,
    pos: usize,
    taken: u64,
    /// The batch's halt flag: asked before each chunk of a trip but its first.
    halt: Option<Arc<AtomicBool>>,
    /// The trip stopped before a chunk: the batch was halted.
    held: bool,
    /// A direct read of the write in progress failed: the write is over, not taken.
    read_error: Option<String>,
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

/// A write lent to a feed for one trip; dropping it takes the write back.
pub struct Lent<'a> {
    feed: &'a Shared,
    _bytes: PhantomData<&'a [u8]>,
}

impl Lent<'_> {
    /// Chunks taken whole so far, and the direct read that failed, if one did.
    pub fn result(&self) -> (u64, Option<String>) {
        let mut f = lock(self.feed);
        (f.taken, f.read_error.take())
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        lock(self.feed).forget();
    }
}

/// Hands the guest the next write: `src`'s chunks, read when the guest reads, into its
/// own buffer. The bytes of `src` are borrowed for as long as the guard lives.
pub fn lend<'a>(feed: &'a Shared, src: &Source<'a>, halt: &Arc<AtomicBool>) -> Lent<'a> {
    let mut f = lock(feed);
    f.forget();
    let s = Src::of(src);
    f.src = Some(s);
    f.halt = Some(halt.clone());
    f.skip_empty(&s);
    wake(f.write_waker.take());
    Lent { feed, _bytes: PhantomData }
}

impl Feed {
    /// The write is over (taken, or not to be taken): its bytes are no longer used.
    fn forget(&mut self) {
        self.src = None;
        (self.chunk, self.pos, self.taken, self.held, self.halt) = (0, 0, 0, false, None);
    }

    /// An empty chunk (an empty blob's one) is taken as it is lent.
    fn skip_empty(&mut self, s: &Src) {
        while self.chunk < s.count && s.len_of(self.chunk) == 0 {
            self.chunk += 1;
            self.taken += 1;
        }
    }

    /// Every chunk of the write in progress was taken whole (or there is none).
    pub fn all_taken(&self) -> bool {
        self.src.is_none_or(|s| self.taken >= s.count)
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

    pub fn reader_gone(&self) -> bool {
        self.reader_gone
    }

    pub fn held(&self) -> bool {
        self.held
    }

    pub fn read_failed(&self) -> bool {
        self.read_error.is_some()
    }

    /// Parks the writer until the host's next move, and tells the driver it is its turn.
    fn park(&mut self, cx: &Context<'_>) {
        self.write_waker = Some(cx.waker().clone());
        wake(self.drive_waker.take());
    }

    pub fn set_drive_waker(&mut self, w: &Waker) {
        self.drive_waker = Some(w.clone());
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
        if let (Some(s), false) = (f.src, f.read_error.is_some()) {
            if f.chunk < s.count {
                if f.pos == 0 && f.chunk > 0 {
                    // the next chunk of the trip: asked like the next guest call of a batch
                    if f.halt.as_ref().is_some_and(|h| h.load(Ordering::Relaxed)) {
                        f.held = true;
                        f.park(cx);
                        return Poll::Pending;
                    }
                    store.data().clock.restart();
                }
                let clock = store.data().clock.clone();
                let len = s.len_of(f.chunk);
                let left = len - f.pos;
                let mut d = dst.as_direct(store, left);
                let room = d.remaining();
                let n = room.len().min(left);
                if n > 0 {
                    let at = f.pos;
                    if s.fd >= 0 {
                        // a direct read, straight into the guest's buffer (host time)
                        let off = s.offset + f.chunk * s.chunk_size + at as u64;
                        if let Some(e) = clock.host_time(|| read_exact_at(s.fd, &mut room[..n], off)) {
                            // the write is over, nothing of this read is given: the read
                            // waits for what the host does next (the stream's end, failed)
                            f.read_error = Some(e);
                            f.park(cx);
                            return Poll::Pending;
                        }
                    } else {
                        // SAFETY: the bytes were lent by `lend`, whose guard outlives the
                        // trip and takes them back (`forget`) before they can go away.
                        let all = unsafe { std::slice::from_raw_parts(s.ptr as *const u8, len) };
                        room[..n].copy_from_slice(&all[at..at + n]);
                    }
                    d.mark_written(n);
                    f.pos += n;
                    if f.pos == len {
                        (f.chunk, f.pos, f.taken) = (f.chunk + 1, 0, f.taken + 1);
                        f.skip_empty(&s);
                        if f.taken >= s.count {
                            wake(f.drive_waker.take());
                        }
                    }
                }
                // n == 0: a zero-length read, told that bytes are ready
                return Poll::Ready(Ok(StreamResult::Completed));
            }
        }
        if f.closed {
            return Poll::Ready(Ok(StreamResult::Dropped));
        }
        if finish {
            return Poll::Ready(Ok(StreamResult::Cancelled));
        }
        f.park(cx); // the guest waits for the next write: the host's turn
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
struct Consume {
    func: ConsumeFunc,
    feed: Shared,
    cid: u64,
    size: Option<u64>,
    data: StreamReader<u8>,
    end: FutureReader<StreamEnd>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunks::FileRun;

    #[test]
    fn a_lent_write_is_taken_back_on_drop() {
        let feed: Shared = Arc::new(Mutex::new(Feed::default()));
        let halt = Arc::new(AtomicBool::new(false));
        assert!(lock(&feed).all_taken());
        {
            let bytes = b"abc".to_vec();
            let lent = lend(&feed, &Source::Mem(&bytes), &halt);
            assert!(!lock(&feed).all_taken());
            assert_eq!(lent.result(), (0, None));
        }
        assert!(lock(&feed).src.is_none()); // forgotten with the guard
                                            // an empty blob's one chunk is taken as it is lent
        let empty = FileRun { fd: 0, offset: 0, chunk_size: 4, count: 1, last_length: 0 };
        let lent = lend(&feed, &Source::File(empty), &halt);
        assert_eq!(lent.result().0, 1);
        assert!(lock(&feed).all_taken());
        drop(lent);
        let mut f = lock(&feed);
        f.finish(StreamEnd::Cancelled);
        f.finish(StreamEnd::Completed); // an end is told once
        assert!(f.all_taken() && f.closed && matches!(f.end, Some(StreamEnd::Cancelled)));
    }

    #[test]
    fn a_panic_while_lent_still_takes_the_write_back() {
        let feed: Shared = Arc::new(Mutex::new(Feed::default()));
        let halt = Arc::new(AtomicBool::new(false));
        let bytes = vec![7u8; 16];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lent = lend(&feed, &Source::Mem(&bytes), &halt);
            panic!("inside a trip");
        }));
        assert!(r.is_err());
        assert!(lock(&feed).src.is_none());
    }
}
