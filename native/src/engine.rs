//! The one wasmtime engine of the process and its epoch clock.
//!
//! The engine has the component model (with its async ABI, for the streams
//! world) and epoch interruption on. A thread of
//! its own advances the epoch every `tick` (10 ms): a guest call's budget is
//! counted in those ticks (see `state::CallClock`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine};

pub struct Clock {
    pub ticks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Clock {
    pub fn start(engine: &Engine, tick: Duration) -> std::io::Result<Clock> {
        let ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, t, s) = (engine.clone(), ticks.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("chunkd-epoch".into()).spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                t.fetch_add(1, Ordering::Relaxed);
                e.increment_epoch();
            }
        })?;
        Ok(Clock { ticks, stop, thread: Some(thread) })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn make_engine() -> wasmtime::Result<Engine> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    // the streams world: async exports, stream<u8> and future (the component-model async ABI)
    cfg.wasm_component_model_async(true);
    cfg.concurrency_support(true);
    cfg.epoch_interruption(true);
    Engine::new(&cfg)
}
