//! What one store holds: the Python host services, the call clock, the
//! memory limits, and (for components) the locked-down WASI context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreContextMut, StoreLimits, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The budget of the guest call in progress, in epoch ticks. Time the guest
/// spends blocked in a host import (`waited`) is given back: call_timeout
/// counts guest time only. The epoch callback checks the budget lazily; a
/// clone shares the same counters, so a wait outside the store (the streams
/// world's `block_on`) sees the budget the store sees, also when a stream
/// write re-arms it from inside the store.
#[derive(Clone)]
pub struct CallClock {
    pub ticks: Arc<AtomicU64>,
    pub waited: Arc<AtomicU64>,
    start: Arc<AtomicU64>,
    timeout: Arc<AtomicU64>,
}

impl CallClock {
    pub fn new(ticks: Arc<AtomicU64>, timeout: u64) -> CallClock {
        CallClock {
            ticks,
            waited: Arc::new(AtomicU64::new(0)),
            start: Arc::new(AtomicU64::new(0)),
            timeout: Arc::new(AtomicU64::new(timeout)),
        }
    }

    pub fn now(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// A new guest call (or stream write) of `timeout` ticks starts now.
    pub fn begin(&self, timeout: u64) {
        self.timeout.store(timeout, Ordering::Relaxed);
        self.restart();
    }

    /// The same budget again, from now (the next write of one trip).
    pub fn restart(&self) {
        self.start.store(self.now(), Ordering::Relaxed);
        self.waited.store(0, Ordering::Relaxed);
    }

    /// Ticks of guest time left in this call (0: the budget is spent).
    pub fn left(&self) -> u64 {
        let used = self
            .now()
            .saturating_sub(self.start.load(Ordering::Relaxed))
            .saturating_sub(self.waited.load(Ordering::Relaxed));
        self.timeout.load(Ordering::Relaxed).saturating_sub(used)
    }

    /// Runs `f` as host time: its ticks are given back to the call's budget.
    pub fn host_time<R>(&self, f: impl FnOnce() -> R) -> R {
        host_time(&self.waited, &self.ticks, f)
    }
}

/// Runs `f` as host time: its ticks are given back to the call's budget.
pub fn host_time<R>(waited: &AtomicU64, ticks: &AtomicU64, f: impl FnOnce() -> R) -> R {
    let t0 = ticks.load(Ordering::Relaxed);
    let r = f();
    let dt = ticks.load(Ordering::Relaxed).saturating_sub(t0);
    if dt > 0 {
        waited.fetch_add(dt, Ordering::Relaxed);
    }
    r
}

pub struct State {
    /// The Python object whose methods answer the chunkd imports
    /// (chunkd.host.native_instance.NativeHost).
    pub host: Arc<Py<PyAny>>,
    pub clock: CallClock,
    pub limits: StoreLimits,
    pub wasi: Option<WasiCtx>,
    pub table: ResourceTable,
    /// A Python exception raised by a host callback, kept to explain the trap it caused.
    pub host_error: Option<String>,
    /// correlation-id -> stream handle of each chunked read started (the streams world).
    pub started: std::collections::HashMap<u64, u32>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: self.wasi.as_mut().expect("a component store has a WASI context"), table: &mut self.table }
    }
}

/// The epoch callback: interrupt once the call's guest time is spent, else
/// sleep until it could be.
pub fn on_deadline(ctx: StoreContextMut<'_, State>) -> wasmtime::Result<UpdateDeadline> {
    let left = ctx.data().clock.left();
    if left == 0 {
        Ok(UpdateDeadline::Interrupt)
    } else {
        Ok(UpdateDeadline::Continue(left))
    }
}

/// Begins a guest call of `timeout` ticks on `store`: the clock and the epoch deadline.
pub fn begin(store: &mut wasmtime::Store<State>, timeout: u64) {
    store.data().clock.begin(timeout);
    store.set_epoch_deadline(timeout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_time_is_given_back_to_the_call() {
        let ticks = Arc::new(AtomicU64::new(100));
        let c = CallClock::new(ticks.clone(), 50);
        c.begin(50);
        ticks.store(130, Ordering::Relaxed); // 30 ticks of guest time
        assert_eq!(c.left(), 20);
        c.host_time(|| ticks.store(170, Ordering::Relaxed)); // 40 ticks in the host
        assert_eq!(c.left(), 20);
        let shared = c.clone();
        ticks.store(200, Ordering::Relaxed);
        assert_eq!(shared.left(), 0);
        shared.restart(); // a clone re-arms the one budget
        assert_eq!(c.left(), 50);
    }
}
