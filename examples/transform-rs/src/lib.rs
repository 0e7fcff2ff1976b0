//! transform: ROT13 of a blob into a new blob, in the streams world
//! (`transformer-streams`: consumer-streams plus the `blob-writer` import).
//!
//! invoke(args): `[--chunk-size=BYTES] [--mode=rot13|copy] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME`
//! (default 1 MiB, rot13). `--mode=copy` writes every byte unchanged (the
//! streams world's copy-through of bench/outputs) and prints `copy ...`
//! instead of `rot13 ...`; everything else is the same. Opens NAME and starts a chunked read. The host then calls
//! `consume`, which makes a `stream<u8>`, hands its readable end to
//! `write-blob(OUT_CONTAINER, OUT_NAME, ..)` and, concurrently, reads `data`
//! into one reused buffer of the chunk size, ROT13s it in place and writes it
//! all to its writable end. At the end of `data` it drops the writer (the end
//! of the output), awaits write-blob's result, then `end`. The output (visible
//! when the job completes) equals `tr 'A-Za-z' 'N-ZA-Mn-za-m' < NAME`. Prints
//! `rot13 NAME -> OUT_CONTAINER/OUT_NAME BYTES bytes` when done; a failed
//! write-blob, or a read that did not complete, fails the job.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;

wit_bindgen::generate!({
    path: "../../wit",
    world: "transformer-streams",
});

use chunkd::streams::blob_writer::write_blob;
use chunkd::streams::blobs;
use chunkd::streams::types::StreamError;
use exports::chunkd::streams::stream_consumer::{Guest as Consumer, StreamEnd};
use exports::chunkd::streams::trigger::Guest as Trigger;
use wit_bindgen::{FutureReader, StreamReader, StreamResult};

const DEFAULT_CHUNK: u64 = 1024 * 1024;
/// The canonical ABI's largest read (wit-bindgen clamps to it anyway).
const MAX_READ: u64 = (1 << 28) - 1;
const USAGE: &str = "usage: transform [--chunk-size=BYTES] [--mode=rot13|copy] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME";

/// ROT13 of ASCII letters; every other byte unchanged (`tr 'A-Za-z' 'N-ZA-Mn-za-m'`).
const ROT13: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            b'A'..=b'Z' => b'A' + (b - b'A' + 13) % 26,
            b'a'..=b'z' => b'a' + (b - b'a' + 13) % 26,
            _ => b,
        };
        i += 1;
    }
    t
};

/// What consume(CID) does, fixed in invoke.
struct Job {
    name: String,
    out_container: String,
    out_name: String,
    chunk: u64,
    /// false: `--mode=copy`, the bytes go out unchanged
    rot13: bool,
}

thread_local! {
    /// Started reads whose consume has not begun yet (BTreeMap: HashMap's hasher
    /// would need WASI random).
    static PENDING: RefCell<BTreeMap<u64, Job>> = const { RefCell::new(BTreeMap::new()) };
    static NEXT_ID: RefCell<u64> = const { RefCell::new(0) };
}

fn describe(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::InvalidArgument(m) => format!("invalid-argument: {m}"),
        StreamError::Failed(m) => format!("failed: {m}"),
    }
}

/// Runs both futures to completion, concurrently on this task (no executor needed:
/// each is polled whenever the task wakes).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut ra, mut rb) = (None, None);
    poll_fn(move |cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        match (ra.is_some(), rb.is_some()) {
            (true, true) => Poll::Ready((ra.take().unwrap(), rb.take().unwrap())),
            _ => Poll::Pending,
        }
    })
    .await
}

struct Transform;

impl Trigger for Transform {
    fn invoke(args: Vec<String>) -> Result<String, String> {
        let mut chunk = DEFAULT_CHUNK;
        let mut rot13 = true;
        let mut rest = Vec::new();
        for a in args {
            if let Some(n) = a.strip_prefix("--chunk-size=") {
                chunk = n.parse().map_err(|_| format!("bad chunk size {n:?}"))?;
            } else if let Some(m) = a.strip_prefix("--mode=") {
                rot13 = match m {
                    "rot13" => true,
                    "copy" => false,
                    _ => return Err(format!("bad mode {m:?}: rot13 or copy")),
                };
            } else {
                rest.push(a);
            }
        }
        let [container, name, out_container, out_name] = <[String; 4]>::try_from(rest).map_err(|_| USAGE.to_string())?;
        if chunk == 0 {
            return Err(USAGE.into());
        }
        let stream = blobs::open(&container, &name).map_err(|e| format!("open {container}/{name}: {}", describe(&e)))?;
        let cid = NEXT_ID.with(|n| {
            let mut n = n.borrow_mut();
            *n += 1;
            *n - 1
        });
        let what = format!("transforming {container}/{name} into {out_container}/{out_name} in {chunk}-byte chunks");
        PENDING.with(|p| p.borrow_mut().insert(cid, Job { name: name.clone(), out_container, out_name, chunk, rot13 }));
        if let Err(e) = stream.start_chunking_read(chunk, cid) {
            PENDING.with(|p| p.borrow_mut().remove(&cid));
            return Err(format!("start-chunking-read {name}: {}", describe(&e)));
        }
        Ok(what) // the host delivers on without the handle
    }
}

impl Consumer for Transform {
    async fn consume(
        correlation_id: u64,
        _size: Option<u64>,
        mut data: StreamReader<u8>,
        end: FutureReader<StreamEnd>,
    ) -> Result<(), String> {
        let Some(job) = PENDING.with(|p| p.borrow_mut().remove(&correlation_id)) else {
            return Err(format!("consume: unknown correlation-id {correlation_id}"));
        };
        let (mut writer, reader) = wit_stream::new::<u8>();
        let copy = async {
            // one buffer for the whole stream, handed back by every read and write
            let mut buf: Vec<u8> = Vec::with_capacity(job.chunk.min(MAX_READ) as usize);
            let mut total: u64 = 0;
            loop {
                buf.clear(); // a read appends into the spare capacity
                let (result, back) = data.read(buf).await;
                buf = back;
                match result {
                    StreamResult::Complete(0) => continue,
                    StreamResult::Complete(_) => {}
                    // the host closed its end: all written, or cancelled/failed (`end` says)
                    StreamResult::Dropped | StreamResult::Cancelled => break,
                }
                if job.rot13 {
                    for b in buf.iter_mut() {
                        *b = ROT13[*b as usize];
                    }
                }
                let n = buf.len() as u64;
                buf = writer.write_all(buf).await;
                if !buf.is_empty() {
                    break; // the host dropped the output's reader: write-blob says why
                }
                total += n;
            }
            drop(writer); // the end of the output
            drop(data); // early, this cancels the input
            total
        };
        let target = format!("{}/{}", job.out_container, job.out_name);
        let written = write_blob(job.out_container.clone(), job.out_name.clone(), reader);
        let (written, total) = join(written, copy).await;
        written.map_err(|e| format!("write-blob {target}: {}", describe(&e)))?;
        match end.await {
            StreamEnd::Completed => {
                let mode = if job.rot13 { "rot13" } else { "copy" };
                println!("{mode} {} -> {target} {total} bytes", job.name);
                Ok(())
            }
            StreamEnd::Cancelled => Err(format!("read {}: cancelled", job.name)),
            StreamEnd::Failed(m) => Err(format!("read {}: {m}", job.name)),
        }
    }
}

export!(Transform);
