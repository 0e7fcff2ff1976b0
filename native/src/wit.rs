//! The WIT names of wit/streams.wit that the native host links and calls
//! (chunkd/host/component.py names the worlds for Python).

pub const TYPES_IFACE: &str = "chunkd:streams/types@0.1.0";
pub const BLOBS_IFACE: &str = "chunkd:streams/blobs@0.1.0";
pub const HANDLER_IFACE: &str = "chunkd:streams/chunked-stream-handler@0.1.0";
pub const EVENTS_IFACE: &str = "chunkd:streams/chunked-stream-events@0.1.0";
pub const TRIGGER_IFACE: &str = "chunkd:streams/trigger@0.1.0";
pub const CONSUMER_IFACE: &str = "chunkd:streams/stream-consumer@0.1.0";
pub const BLOB_WRITER_IFACE: &str = "chunkd:streams/blob-writer@0.1.0";

pub const CONSUMER: &str = "consumer";
pub const CONSUMER_WITH_EVENTS: &str = "consumer-with-events";
pub const CONSUMER_STREAMS: &str = "consumer-streams";

/// The streams world's export: an async function (the one async export chunkd calls).
pub const CONSUME_SIG: &str =
    "(u64, option<u64>, stream<u8>, future<variant { completed, cancelled, failed(string) }>) -> (result<_, string>)";

/// (interface, function, WIT signature) of every component export chunkd calls;
/// the events interface is optional.
pub const COMPONENT_EXPORTS: &[(&str, &str, &str)] = &[
    (HANDLER_IFACE, "handle-chunk", "(borrow<resource>, u64, u64, u64, list<u8>) -> (bool)"),
    (TRIGGER_IFACE, "invoke", "(list<string>) -> (result<string, string>)"),
    (EVENTS_IFACE, "stream-ended", "(u64, variant { completed, cancelled, failed(string) }) -> ()"),
];

// the core-module (canonical ABI) names of the same exports
pub const EXPORT_INVOKE: &str = "chunkd:streams/trigger@0.1.0#invoke";
pub const EXPORT_HANDLE: &str = "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk";
pub const EXPORT_ENDED: &str = "chunkd:streams/chunked-stream-events@0.1.0#stream-ended";
pub const WASI_P1: &str = "wasi_snapshot_preview1";
