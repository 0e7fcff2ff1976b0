//! copy: a blob into a new blob, chunk by chunk, in the handle-chunk world
//! (`consumer-with-events`: blobs.create, output-stream.write and finish); the
//! Rust twin of examples/copy-js (same arguments, same output line), and the
//! handle-chunk copy-through of bench/outputs.
//!
//! invoke(args): `[--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME`
//! (default 1 MiB). Creates the output, opens NAME and starts a chunked read.
//! handle-chunk writes every chunk to the output unchanged (one write each: a
//! chunk is at most the chunk size, which the host holds to max-chunk-size).
//! When the read completes, stream-ended finishes the output (it becomes
//! visible when the job completes) and prints
//! `copy NAME -> OUT_CONTAINER/OUT_NAME BYTES bytes`; a cancelled or failed
//! read drops the output unfinished, which aborts it. A failed write cancels
//! the read; a failed finish traps, so the job fails.

use std::cell::RefCell;
use std::collections::BTreeMap;

wit_bindgen::generate!({
    path: "../../wit",
    world: "consumer-with-events",
});

use chunkd::streams::blobs;
use chunkd::streams::types::{InputStream, OutputStream, StreamError};
use exports::chunkd::streams::chunked_stream_events::{Guest as Events, StreamEnd};
use exports::chunkd::streams::chunked_stream_handler::Guest as Handler;
use exports::chunkd::streams::trigger::Guest as Trigger;

const DEFAULT_CHUNK: u64 = 1024 * 1024;
const USAGE: &str = "usage: copy [--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME";

/// One copy in flight: the input's name, the output and where it goes, bytes written.
struct Copy {
    name: String,
    target: String,
    out: OutputStream,
    bytes: u64,
}

thread_local! {
    /// correlation-id -> its copy (BTreeMap: HashMap's hasher would need WASI random)
    static COPIES: RefCell<BTreeMap<u64, Copy>> = const { RefCell::new(BTreeMap::new()) };
    static NEXT_ID: RefCell<u64> = const { RefCell::new(0) };
}

fn describe(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::InvalidArgument(m) => format!("invalid-argument: {m}"),
        StreamError::Failed(m) => format!("failed: {m}"),
    }
}

struct CopyGuest;

impl Trigger for CopyGuest {
    fn invoke(args: Vec<String>) -> Result<String, String> {
        let mut chunk = DEFAULT_CHUNK;
        let mut rest = Vec::new();
        for a in args {
            match a.strip_prefix("--chunk-size=") {
                Some(n) => chunk = n.parse().map_err(|_| format!("bad chunk size {n:?}"))?,
                None => rest.push(a),
            }
        }
        let [container, name, out_container, out_name] = <[String; 4]>::try_from(rest).map_err(|_| USAGE.to_string())?;
        if chunk == 0 {
            return Err(USAGE.into());
        }
        let stream = blobs::open(&container, &name).map_err(|e| format!("open {container}/{name}: {}", describe(&e)))?;
        let target = format!("{out_container}/{out_name}");
        let out = blobs::create(&out_container, &out_name).map_err(|e| format!("create {target}: {}", describe(&e)))?;
        let cid = NEXT_ID.with(|n| {
            let mut n = n.borrow_mut();
            *n += 1;
            *n - 1
        });
        let what = format!("copying {container}/{name} into {target} in {chunk}-byte chunks");
        COPIES.with(|c| c.borrow_mut().insert(cid, Copy { name: name.clone(), target, out, bytes: 0 }));
        if let Err(e) = stream.start_chunking_read(chunk, cid) {
            COPIES.with(|c| c.borrow_mut().remove(&cid)); // the output dropped unfinished: aborted
            return Err(format!("start-chunking-read {name}: {}", describe(&e)));
        }
        Ok(what) // the host delivers on without the handle
    }
}

impl Handler for CopyGuest {
    fn handle_chunk(_stream: &InputStream, correlation_id: u64, _current: u64, _total: u64, data: Vec<u8>) -> bool {
        COPIES.with(|c| {
            let mut copies = c.borrow_mut();
            let Some(copy) = copies.get_mut(&correlation_id) else {
                return false;
            };
            match copy.out.write(&data) {
                Ok(()) => {
                    copy.bytes += data.len() as u64;
                    true
                }
                Err(e) => {
                    println!("failed: write {}: {}", copy.target, describe(&e));
                    false // cancels the read; stream-ended then aborts the output
                }
            }
        })
    }
}

impl Events for CopyGuest {
    fn stream_ended(correlation_id: u64, end: StreamEnd) {
        let Some(copy) = COPIES.with(|c| c.borrow_mut().remove(&correlation_id)) else {
            return;
        };
        match end {
            StreamEnd::Completed => {
                if let Err(e) = copy.out.finish() {
                    // stream-ended has no verdict: a trap fails the job
                    panic!("finish {}: {}", copy.target, describe(&e));
                }
                println!("copy {} -> {} {} bytes", copy.name, copy.target, copy.bytes);
            }
            // `copy.out` is dropped unfinished below: aborted, nothing becomes visible
            StreamEnd::Failed(why) => println!("failed: {}: {why}", copy.name),
            StreamEnd::Cancelled => println!("cancelled: {}", copy.name),
        }
    }
}

export!(CopyGuest);
