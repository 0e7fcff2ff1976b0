//! {{NAME}}: count the lines of every blob named in the job's args (world {{WORLD}}).
//!
//! invoke(args): `CONTAINER NAME [NAME...]`. Prints `LINES  NAME` when each stream completes.

use std::cell::RefCell;
use std::collections::HashMap;

wit_bindgen::generate!({
    path: "wit",
    world: "consumer-with-events",
});

use chunkd::streams::blobs;
use chunkd::streams::types::{InputStream, StreamError};
use exports::chunkd::streams::chunked_stream_events::{Guest as Events, StreamEnd};
use exports::chunkd::streams::chunked_stream_handler::Guest as Handler;
use exports::chunkd::streams::trigger::Guest as Trigger;

const CHUNK: u64 = 1024 * 1024;

thread_local! {
    static STREAMS: RefCell<HashMap<u64, (u64, String)>> = RefCell::new(HashMap::new());
    static NEXT_ID: RefCell<u64> = const { RefCell::new(0) };
}

fn describe(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::InvalidArgument(m) => format!("invalid-argument: {m}"),
        StreamError::Failed(m) => format!("failed: {m}"),
    }
}

struct Guest;

impl Trigger for Guest {
    fn invoke(args: Vec<String>) -> Result<String, String> {
        if args.len() < 2 {
            return Err("usage: {{NAME}} CONTAINER NAME [NAME...]".into());
        }
        let container = &args[0];
        let names = &args[1..];
        for name in names {
            let stream = blobs::open(container, name)
                .map_err(|e| format!("no blob {container}/{name}: {}", describe(&e)))?;
            let cid = NEXT_ID.with(|n| {
                let mut n = n.borrow_mut();
                *n += 1;
                *n - 1
            });
            STREAMS.with(|s| s.borrow_mut().insert(cid, (0, name.clone())));
            if let Err(e) = stream.start_chunking_read(CHUNK, cid) {
                STREAMS.with(|s| s.borrow_mut().remove(&cid));
                return Err(format!("cannot read {container}/{name}: {}", describe(&e)));
            }
        }
        Ok(format!("counting lines of {} blob(s)", names.len()))
    }
}

impl Handler for Guest {
    fn handle_chunk(_stream: &InputStream, correlation_id: u64, _current: u64, _total: u64, data: Vec<u8>) -> bool {
        STREAMS.with(|s| match s.borrow_mut().get_mut(&correlation_id) {
            Some((n, _)) => {
                *n += data.iter().filter(|&&b| b == b'\n').count() as u64;
                true
            }
            None => false, // not ours: cancel it
        })
    }
}

impl Events for Guest {
    fn stream_ended(correlation_id: u64, end: StreamEnd) {
        let Some((n, name)) = STREAMS.with(|s| s.borrow_mut().remove(&correlation_id)) else {
            return;
        };
        match end {
            StreamEnd::Completed => println!("{n}  {name}"),
            StreamEnd::Failed(why) => println!("failed: {name}: {why}"),
            StreamEnd::Cancelled => println!("cancelled: {name}"),
        }
    }
}

export!(Guest);
