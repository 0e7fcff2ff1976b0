//! streams_sync: a wrong guest for tests. Its WIT (wit/, a copy of chunkd's with one
//! change) declares `consume` without `async`, so `chunkd check` must refuse it with the
//! type it has and the one expected.

wit_bindgen::generate!({ path: "wit", world: "consumer-streams" });

use exports::chunkd::streams::stream_consumer::{Guest as Consumer, StreamEnd};
use exports::chunkd::streams::trigger::Guest as Trigger;
use wit_bindgen::{FutureReader, StreamReader};

struct Wrong;

impl Trigger for Wrong {
    fn invoke(_args: Vec<String>) -> Result<String, String> {
        Ok("wrong".into())
    }
}

impl Consumer for Wrong {
    fn consume(
        _correlation_id: u64,
        _size: Option<u64>,
        _data: StreamReader<u8>,
        _end: FutureReader<StreamEnd>,
    ) -> Result<(), String> {
        Ok(())
    }
}

export!(Wrong);
