//! streams_probe: a test and benchmark guest for chunkd's consumer-streams world
//! (one `stream<u8>` per started chunked read, the WASI 0.3 way), the Rust
//! twin of tests/guests/core_probe/probe.c: the same invoke arguments and the
//! same log lines, so host tests read both the same way.
//!
//! invoke(args):
//!   [CONTAINER, NAME, CHUNK, CID, STOP_AT, MODE]  open + start-chunking-read(CHUNK, CID).
//!        consume(CID, ..) then reads `data` with a buffer of CHUNK bytes; every read
//!        that returns bytes is one chunk (0, 1, 2, ...).
//!        STOP_AT >= 0: after chunk STOP_AT the reader is dropped (the stream cancelled)
//!        and `end` awaited (-1: never). MODE:
//!        "log"      log every chunk with an FNV-1a hash of the stream so far,
//!        "quiet"    only touch every byte (benchmarks),
//!        "receive"  only receive the bytes, no pass over them (benchmarks),
//!        "small"    like log, but read with a buffer of CHUNK/3+1 bytes, so that one
//!                   host write takes several reads (chunks count reads),
//!        "trapat" / "loopat" / "bombat"  log, and at chunk STOP_AT trap / loop forever /
//!                   grow memory without end (a memory bomb),
//!        "hangat"   log, and at chunk STOP_AT stop reading with the reader kept open and
//!                   never return (the host must time it out),
//!        "errat"    log, and at chunk STOP_AT return err("asked to fail at N") at once
//!                   (dropping the reader and `end`, so no "ended" line).
//!        An "...at" mode acts when chunk STOP_AT arrives, before logging it (like the C
//!        probe's trapat), and never cancels; any other mode name behaves like "log".
//!   ["read", CONTAINER, NAME, LEN]   pull LEN bytes, log "read N HASH" or the error
//!   ["again", CID, CHUNK]            start-chunking-read again on the last stream
//!                                    (the last MODE applies, STOP_AT only for "...at")
//!   ["twice", CONTAINER, NAME, CHUNK, CID]  open two streams and start both with CID
//!                                    (the second must fail: invalid-argument); both logged
//!   ["many", CONTAINER, NAME, CHUNK, COUNT]  COUNT quiet streams of one blob (cids 0..COUNT-1)
//!   ["pair", CONTAINER, NAME1, NAME2, CHUNK, CID1, CID2]  two logged streams in one job
//!   ["report"]  returns everything logged since the last report
//!   ["fail"]    returns err("asked to fail")
//!   ["trap"]    traps
//!   ["loop"]    loops forever
//! Log lines: "start CID ok" | "start CID err DISC [MSG]" (not for quiet/receive),
//!            "open err DISC [MSG]", "read N HASH" | "read err DISC [MSG]",
//!            "chunk CID CUR TOTAL LEN HASH" (TOTAL = ceil(size/CHUNK), 0 when the size
//!            is unknown), "ended CID DISC HASH [MSG]" (every mode; DISC 0 completed,
//!            1 cancelled, 2 failed; HASH stays 2166136261 in quiet/receive),
//!            "consume CID unknown" (consume for a CID this guest did not start).
//! The log is kept in memory (at most 1 MiB, later lines are dropped) and only
//! returned by "report"; nothing is printed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "consumer-streams",
});

use chunkd::streams::blobs;
use chunkd::streams::types::{InputStream, StreamError};
use exports::chunkd::streams::stream_consumer::{Guest as Consumer, StreamEnd};
use exports::chunkd::streams::trigger::Guest as Trigger;
use wit_bindgen::{FutureReader, StreamReader, StreamResult};

const FNV_OFFSET: u32 = 2166136261;
const LOG_CAP: usize = 1 << 20;
/// The read buffer for a consume whose CID this guest did not start.
const UNKNOWN_CHUNK: u64 = 64 * 1024;
/// The canonical ABI's largest read (wit-bindgen clamps to it anyway).
const MAX_READ: u64 = (1 << 28) - 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Log,
    Quiet,
    Receive,
    Small,
    TrapAt,
    LoopAt,
    BombAt,
    HangAt,
    ErrAt,
}

impl Mode {
    fn parse(s: &str) -> Mode {
        match s {
            "quiet" => Mode::Quiet,
            "receive" => Mode::Receive,
            "small" => Mode::Small,
            "trapat" => Mode::TrapAt,
            "loopat" => Mode::LoopAt,
            "bombat" => Mode::BombAt,
            "hangat" => Mode::HangAt,
            "errat" => Mode::ErrAt,
            _ => Mode::Log,
        }
    }
    /// Logs start and chunk lines (everything but the benchmark modes).
    fn logs(self) -> bool {
        !matches!(self, Mode::Quiet | Mode::Receive)
    }
    /// STOP_AT says where to misbehave, not where to cancel.
    fn acts_at(self) -> bool {
        matches!(self, Mode::TrapAt | Mode::LoopAt | Mode::BombAt | Mode::HangAt | Mode::ErrAt)
    }
}

/// What consume(CID) does, fixed when the read is started.
#[derive(Clone, Copy)]
struct Cfg {
    chunk: u64,
    stop_at: i64,
    mode: Mode,
}

thread_local! {
    static LOG: RefCell<String> = const { RefCell::new(String::new()) };
    /// Started reads whose consume has not begun yet (BTreeMap: HashMap's hasher
    /// would need WASI random).
    static PENDING: RefCell<BTreeMap<u64, Cfg>> = const { RefCell::new(BTreeMap::new()) };
    /// The last stream of the 6-argument form, for "again"; never dropped (like the
    /// C probe's last_handle, a replaced one is leaked, not closed).
    static LAST: RefCell<Option<InputStream>> = const { RefCell::new(None) };
    /// The last MODE and STOP_AT, for "again".
    static LAST_MODE: Cell<(Mode, i64)> = const { Cell::new((Mode::Log, -1)) };
}
/// Where quiet mode's pass over the bytes ends up, so it is not optimized away.
static TOUCHED: AtomicU64 = AtomicU64::new(0);

fn log(args: fmt::Arguments) {
    LOG.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() >= LOG_CAP {
            return;
        }
        let at = l.len();
        let _ = fmt::Write::write_fmt(&mut *l, args);
        if l.len() > LOG_CAP {
            l.truncate(at); // whole lines only
        }
    })
}

macro_rules! logln {
    ($($t:tt)*) => { log(format_args!($($t)*)) };
}

/// " err DISC [MSG]" of the C probe, without the leading space.
struct Err_<'a>(&'a StreamError);

impl fmt::Display for Err_<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            StreamError::Closed => write!(f, "err 0"),
            StreamError::InvalidArgument(m) => write!(f, "err 1 {m}"),
            StreamError::Failed(m) => write!(f, "err 2 {m}"),
        }
    }
}

/// The C probe's num(): an optional '-', then digits, no checks.
fn num(s: &str) -> i64 {
    let b = s.as_bytes();
    let (sign, digits) = match b.first() {
        Some(b'-') => (-1i64, &b[1..]),
        _ => (1, b),
    };
    let mut v: i64 = 0;
    for &c in digits {
        v = v.wrapping_mul(10).wrapping_add(c as i64 - b'0' as i64);
    }
    v.wrapping_mul(sign)
}

fn fnv(mut h: u32, data: &[u8]) -> u32 {
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(16777619);
    }
    h
}

/// Quiet mode: xor every byte in, 16 at a time with wasm SIMD: the loop clang makes of
/// the C probe's (built with -O3 -msimd128), so both worlds' benchmark guests do the
/// same work per byte.
#[target_feature(enable = "simd128")]
fn touch(data: &[u8]) {
    use core::arch::wasm32::{u64x2_extract_lane, u64x2_splat, v128, v128_load, v128_xor};
    let (blocks, rest) = data.as_chunks::<16>();
    let mut acc = u64x2_splat(0);
    for b in blocks {
        // SAFETY: `b` is 16 readable bytes; wasm loads need no alignment
        acc = v128_xor(acc, unsafe { v128_load(b.as_ptr() as *const v128) });
    }
    let mut x = u64x2_extract_lane::<0>(acc) ^ u64x2_extract_lane::<1>(acc);
    for &b in rest {
        x ^= b as u64;
    }
    TOUCHED.fetch_xor(black_box(x), Ordering::Relaxed);
}

fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

fn bomb() -> ! {
    loop {
        if core::arch::wasm32::memory_grow::<0>(256) == usize::MAX {
            trap();
        }
    }
}

/// Never resolves, yet leaves the task waiting on a real waitable: a future
/// whose writer is leaked. (`std::future::pending` would not do: wit-bindgen
/// panics when a task sleeps with no waitable registered, unless built with
/// its inter-task-wakeup feature.)
async fn hang() {
    let (writer, reader) = wit_future::new::<StreamEnd>(|| StreamEnd::Cancelled);
    std::mem::forget(writer);
    reader.await;
}

fn open(container: &str, name: &str) -> Option<InputStream> {
    match blobs::open(container, name) {
        Ok(s) => Some(s),
        Err(e) => {
            logln!("open {}\n", Err_(&e));
            None
        }
    }
}

/// start-chunking-read with `cfg` registered for `cid` (before the call, as the
/// C probe does; restored if the host refuses, so a refused duplicate CID leaves
/// the active one's settings alone).
fn start(s: &InputStream, cid: u64, cfg: Cfg, log_it: bool) -> Result<(), StreamError> {
    let prev = PENDING.with(|p| p.borrow_mut().insert(cid, cfg));
    let r = s.start_chunking_read(cfg.chunk, cid);
    if r.is_err() {
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            match prev {
                Some(prev) => p.insert(cid, prev),
                None => p.remove(&cid),
            }
        });
    }
    if log_it {
        match &r {
            Ok(()) => logln!("start {} ok\n", cid as i64),
            Err(e) => logln!("start {} {}\n", cid as i64, Err_(e)),
        }
    }
    r
}

fn set_last(s: InputStream) {
    if let Some(old) = LAST.with(|l| l.borrow_mut().replace(s)) {
        std::mem::forget(old);
    }
}

struct Probe;

impl Trigger for Probe {
    fn invoke(args: Vec<String>) -> Result<String, String> {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["report"] => Ok(LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))),
            ["fail"] => Err("asked to fail".into()),
            ["trap"] => trap(),
            ["loop"] => spin(),
            ["read", container, name, len] => {
                let Some(s) = open(container, name) else { return Ok("open failed".into()) };
                match s.read(num(len) as u64) {
                    Ok(data) => logln!("read {} {}\n", data.len(), fnv(FNV_OFFSET, &data)),
                    Err(e) => logln!("read {}\n", Err_(&e)),
                }
                Ok("read".into())
            }
            ["many", container, name, chunk, count] => {
                LAST_MODE.set((Mode::Quiet, -1));
                let cfg = Cfg { chunk: num(chunk) as u64, stop_at: -1, mode: Mode::Quiet };
                for cid in 0..num(count) {
                    let Some(s) = open(container, name) else { return Ok("open failed".into()) };
                    let r = start(&s, cid as u64, cfg, false);
                    drop(s); // the host delivers on without the handle
                    if r.is_err() {
                        return Ok("start failed".into());
                    }
                }
                Ok("many".into())
            }
            ["again", cid, chunk] => {
                let (mode, stop_at) = LAST_MODE.get();
                let cfg = Cfg {
                    chunk: num(chunk) as u64,
                    stop_at: if mode.acts_at() { stop_at } else { -1 },
                    mode,
                };
                LAST.with(|l| match l.borrow().as_ref() {
                    Some(s) => {
                        let _ = start(s, num(cid) as u64, cfg, true);
                        Ok("again".into())
                    }
                    None => Err("again: no stream started yet".into()),
                })
            }
            ["pair", container, first, second, chunk, cid1, cid2] => {
                // two logged streams in one job (fairness between them)
                let cfg = Cfg { chunk: num(chunk) as u64, stop_at: -1, mode: Mode::Log };
                for (name, cid) in [(first, cid1), (second, cid2)] {
                    let Some(s) = open(container, name) else { return Ok("open failed".into()) };
                    let _ = start(&s, num(cid) as u64, cfg, true);
                    std::mem::forget(s); // kept open, like the 6-argument form's last stream
                }
                Ok("pair".into())
            }
            ["twice", container, name, chunk, cid] => {
                let Some(first) = open(container, name) else { return Ok("open failed".into()) };
                let Some(second) = open(container, name) else { return Ok("open failed".into()) };
                let cfg = Cfg { chunk: num(chunk) as u64, stop_at: -1, mode: Mode::Log };
                let cid = num(cid) as u64;
                let _ = start(&first, cid, cfg, true);
                if start(&second, cid, cfg, true).is_ok() {
                    std::mem::forget(second); // should not happen; keep it delivering
                }
                set_last(first);
                Ok("twice".into())
            }
            [container, name, chunk, cid, stop_at, mode] => {
                let mode = Mode::parse(mode);
                let stop_at = num(stop_at);
                LAST_MODE.set((mode, stop_at));
                let Some(s) = open(container, name) else { return Ok("open failed".into()) };
                let cfg = Cfg { chunk: num(chunk) as u64, stop_at, mode };
                let _ = start(&s, num(cid) as u64, cfg, mode.logs());
                set_last(s); // kept (not dropped) so "again" can reuse it
                Ok("started".into())
            }
            _ => Err("bad args".into()),
        }
    }
}

impl Consumer for Probe {
    async fn consume(
        correlation_id: u64,
        size: Option<u64>,
        mut data: StreamReader<u8>,
        end: FutureReader<StreamEnd>,
    ) -> Result<(), String> {
        let cid = correlation_id as i64; // logged signed, like the C probe
        let cfg = PENDING.with(|p| p.borrow_mut().remove(&correlation_id)).unwrap_or_else(|| {
            logln!("consume {cid} unknown\n");
            Cfg { chunk: UNKNOWN_CHUNK, stop_at: -1, mode: Mode::Log }
        });
        let chunk = cfg.chunk.max(1);
        let total = size.map_or(0, |s| s.div_ceil(chunk));
        let cap = match cfg.mode {
            Mode::Small => chunk / 3 + 1,
            _ => chunk,
        }
        .min(MAX_READ) as usize;
        // one buffer per stream, handed back by every read: no allocation per chunk
        let mut buf: Vec<u8> = Vec::with_capacity(cap);
        let mut hash = FNV_OFFSET;
        let mut cur: i64 = 0;
        loop {
            buf.clear(); // a read appends into the spare capacity
            let (result, back) = data.read(buf).await;
            buf = back;
            let n = match result {
                StreamResult::Complete(n) => n,
                // the host closed its end: all written, or cancelled/failed
                StreamResult::Dropped | StreamResult::Cancelled => break,
            };
            if n == 0 {
                continue; // not a chunk
            }
            if cfg.mode.acts_at() && cur == cfg.stop_at {
                match cfg.mode {
                    Mode::TrapAt => trap(),
                    Mode::LoopAt => spin(),
                    Mode::BombAt => bomb(),
                    Mode::HangAt => {
                        hang().await; // `data` and `end` stay open, unread
                        trap()
                    }
                    _ => return Err(format!("asked to fail at {cur}")), // drops data and end
                }
            }
            match cfg.mode {
                Mode::Quiet => touch(&buf),
                Mode::Receive => {
                    TOUCHED.fetch_xor(black_box(n as u64), Ordering::Relaxed);
                }
                _ => {
                    hash = fnv(hash, &buf);
                    logln!("chunk {cid} {cur} {total} {n} {hash}\n");
                }
            }
            let stop = !cfg.mode.acts_at() && cfg.stop_at >= 0 && cur >= cfg.stop_at;
            cur += 1;
            if stop {
                break;
            }
        }
        drop(data); // closes the readable end: early, this cancels the stream
        drop(buf);
        match end.await {
            StreamEnd::Completed => logln!("ended {cid} 0 {hash}\n"),
            StreamEnd::Cancelled => logln!("ended {cid} 1 {hash}\n"),
            StreamEnd::Failed(m) => logln!("ended {cid} 2 {hash} {m}\n"),
        }
        Ok(())
    }
}

export!(Probe);
