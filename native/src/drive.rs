//! Driving a store's event loop from the instance thread, for the streams
//! world: `drive` runs it until the write in progress is taken whole, the
//! trip is held by a halt, or the `consume` call returns; `block_on` bounds
//! every such wait by the call's budget (call_timeout of guest time, host time
//! given back), also when the guest is blocked rather than running, which the
//! epoch callback cannot see.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::feed::{lock, Shared};
use crate::state::{CallClock, State};

/// What a drive waited for came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The write in progress was taken whole.
    Taken,
    /// The trip stopped before a chunk: the batch is halted.
    Held,
    /// A direct read of the write failed.
    ReadFailed,
    /// The guest closed its reader first.
    ReaderGone,
    /// The consume call returned (or failed).
    Returned,
}

/// Why a drive stopped short: the budget ran out, or the store failed.
pub enum Stop {
    Expired,
    Error(wasmtime::Error),
}

/// Runs the store's event loop until the write in progress is over (`write`) or the
/// call returns, within the budget of `clock`.
pub fn drive(store: &mut Store<State>, feed: &Shared, write: bool) -> Result<Progress, Stop> {
    let clock = store.data().clock.clone();
    let fut = store.run_concurrent(async |_acc| {
        std::future::poll_fn(|cx| {
            let mut f = lock(feed);
            if write && f.read_failed() {
                return Poll::Ready(Progress::ReadFailed);
            }
            // a write taken whole counts even when the call returned right after it
            if write && f.all_taken() {
                return Poll::Ready(Progress::Taken);
            }
            if write && f.held() {
                return Poll::Ready(Progress::Held);
            }
            if f.done.is_some() {
                return Poll::Ready(Progress::Returned);
            }
            if write && f.reader_gone() {
                return Poll::Ready(Progress::ReaderGone);
            }
            f.set_drive_waker(cx.waker());
            Poll::Pending
        })
        .await
    });
    match block_on(fut, &clock) {
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
pub fn block_on<F: Future>(fut: F, clock: &CallClock) -> Option<F::Output> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    let mut seen = (clock.now(), Instant::now());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        if clock.left() == 0 {
            return None;
        }
        let now = clock.now();
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
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn block_on_gives_up_when_the_budget_is_spent() {
        let ticks = Arc::new(AtomicU64::new(0));
        let c = CallClock::new(ticks.clone(), 2);
        c.begin(2);
        let t = ticks.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            t.store(5, Ordering::Relaxed);
        });
        assert!(block_on(std::future::pending::<()>(), &c).is_none());
        h.join().unwrap();
        assert_eq!(block_on(async { 7 }, &c), Some(7));
        // a clock that stands still (the engine stopped) does not hold a wait for ever
        let still = CallClock::new(Arc::new(AtomicU64::new(0)), 9);
        still.begin(9);
        let t0 = Instant::now();
        assert!(block_on(std::future::pending::<()>(), &still).is_none());
        assert!(t0.elapsed() >= CLOCK_STOPPED);
    }
}
