//! sha256: digest every blob named in the job's args, chunk by chunk; the Rust
//! twin of examples/sha256 (same arguments, same output lines).
//!
//! invoke(args): `[--chunk-size=BYTES] CONTAINER NAME [NAME...]` (default 1 MiB).
//! Prints `<hex>  <name>` (the sha256sum format) when each stream completes.

use std::cell::RefCell;
use std::collections::HashMap;

use sha2::{Digest, Sha256};

wit_bindgen::generate!({
    path: "../../wit",
    world: "consumer-with-events",
});

use chunkd::streams::blobs;
use chunkd::streams::types::{InputStream, StreamError};
use exports::chunkd::streams::chunked_stream_events::{Guest as Events, StreamEnd};
use exports::chunkd::streams::chunked_stream_handler::Guest as Handler;
use exports::chunkd::streams::trigger::Guest as Trigger;

const DEFAULT_CHUNK: u64 = 1024 * 1024;

thread_local! {
    static STREAMS: RefCell<HashMap<u64, (Sha256, String)>> = RefCell::new(HashMap::new());
    static NEXT_ID: RefCell<u64> = const { RefCell::new(0) };
}

fn describe(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::InvalidArgument(m) => format!("invalid-argument: {m}"),
        StreamError::Failed(m) => format!("failed: {m}"),
    }
}

struct Sha;

impl Trigger for Sha {
    fn invoke(args: Vec<String>) -> Result<String, String> {
        let mut chunk = DEFAULT_CHUNK;
        let mut rest = Vec::new();
        for a in args {
            match a.strip_prefix("--chunk-size=") {
                Some(n) => chunk = n.parse().map_err(|_| format!("bad chunk size {n:?}"))?,
                None => rest.push(a),
            }
        }
        if rest.len() < 2 {
            return Err("usage: sha256 [--chunk-size=N] CONTAINER NAME [NAME...]".into());
        }
        let container = &rest[0];
        let names = &rest[1..];
        for name in names {
            let stream = blobs::open(container, name).map_err(|e| format!("open {container}/{name}: {}", describe(&e)))?;
            let cid = NEXT_ID.with(|n| {
                let mut n = n.borrow_mut();
                *n += 1;
                *n - 1
            });
            STREAMS.with(|s| s.borrow_mut().insert(cid, (Sha256::new(), name.clone())));
            stream
                .start_chunking_read(chunk, cid)
                .map_err(|e| format!("start-chunking-read {name}: {}", describe(&e)))?;
        }
        Ok(format!("digesting {} blob(s) in {chunk}-byte chunks", names.len()))
    }
}

impl Handler for Sha {
    fn handle_chunk(_stream: &InputStream, correlation_id: u64, _current: u64, _total: u64, data: Vec<u8>) -> bool {
        STREAMS.with(|s| {
            if let Some((h, _)) = s.borrow_mut().get_mut(&correlation_id) {
                h.update(&data);
            }
        });
        true
    }
}

impl Events for Sha {
    fn stream_ended(correlation_id: u64, end: StreamEnd) {
        let Some((h, name)) = STREAMS.with(|s| s.borrow_mut().remove(&correlation_id)) else {
            return;
        };
        match end {
            StreamEnd::Completed => {
                let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                println!("{hex}  {name}");
            }
            StreamEnd::Failed(why) => println!("failed: {name}: {why}"),
            StreamEnd::Cancelled => println!("cancelled: {name}"),
        }
    }
}

export!(Sha);
