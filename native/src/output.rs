//! A component's WASI stdout and stderr: every write goes to Python's
//! `NativeHost.output` (which cuts capped lines and throttles), as host time.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use pyo3::prelude::*;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::state::CallClock;

#[derive(Clone)]
pub struct GuestOut {
    pub fd: u8,
    pub host: Arc<Py<PyAny>>,
    pub clock: CallClock,
}

impl GuestOut {
    fn emit(&self, data: &[u8]) -> io::Result<()> {
        self.clock
            .host_time(|| crate::host::output(&self.host, self.fd, data))
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl IsTerminal for GuestOut {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOut {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOut {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.emit(&bytes).map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!(e)))
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOut {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOut {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(self.emit(buf).map(|_| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
