//! The streams world's way out: the host side of `write-blob`. The guest
//! hands the host the readable end of a `stream<u8>`; `Pipe` consumes it
//! straight from the guest's write buffer (`Source::as_direct`), at most
//! max-chunk-size bytes a time, and hands each piece to Python's output
//! (`write`), which returns only when the sink took it: the stream's own
//! backpressure, and the host never buffers more than one piece.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use wasmtime::component::{Source, StreamConsumer, StreamResult};
use wasmtime::StoreContextMut;

use crate::host::{call_host, unit_or_err, StreamErr};
use crate::state::State;

/// How a pipe stands: the sink's error, if it refused bytes, and whether the guest
/// closed its end (the consumer was dropped).
#[derive(Default)]
pub struct PipeState {
    pub error: Option<StreamErr>,
    pub closed: bool,
    waker: Option<Waker>,
}

pub type SharedPipe = Arc<Mutex<PipeState>>;

pub fn lock(p: &SharedPipe) -> MutexGuard<'_, PipeState> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl PipeState {
    /// Ready once the guest closed its end or the sink failed.
    pub fn poll_over(&mut self, cx: &Context<'_>) -> Poll<()> {
        if self.closed || self.error.is_some() {
            return Poll::Ready(());
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

pub struct Pipe {
    pub state: SharedPipe,
    pub handle: u32,
    pub cap: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.closed = true;
        s.wake();
    }
}

impl StreamConsumer<State> for Pipe {
    type Item = u8;

    fn poll_consume(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        store: StoreContextMut<State>,
        source: Source<'_, u8>,
        _finish: bool,
    ) -> Poll<wasmtime::Result<StreamResult>> {
        let (host, clock) = (store.data().host.clone(), store.data().clock.clone());
        let mut src = source.as_direct(store);
        let avail = src.remaining();
        if avail.is_empty() {
            return Poll::Ready(Ok(StreamResult::Completed));
        }
        let n = avail.len().min(self.cap.max(1));
        let piece = &avail[..n];
        let r = call_host(&host, &clock, "write-blob", |py, h| {
            unit_or_err(&h.call_method1("write", (self.handle, PyBytes::new(py, piece)))?)
        });
        match r {
            Ok(Ok(())) => {
                src.mark_read(n);
                Poll::Ready(Ok(StreamResult::Completed))
            }
            Ok(Err(e)) => self.refuse(e),
            Err(msg) => self.refuse(StreamErr::Failed(msg)),
        }
    }
}

impl Pipe {
    /// The sink refused the bytes: no more are taken, and write-blob says why.
    fn refuse(&self, e: StreamErr) -> Poll<wasmtime::Result<StreamResult>> {
        let mut s = lock(&self.state);
        s.error = Some(e);
        s.wake();
        Poll::Ready(Ok(StreamResult::Dropped))
    }
}
