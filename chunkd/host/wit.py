"""The WIT names chunkd implements (wit/streams.wit), in one place.

The bottom of host/'s one-way import stack: wit, values -> engine ->
component (loading, world checks) -> instance (the shared base) ->
native_instance (guests in the native host core) -> kinds (the table that
picks one). native/src/wit.rs holds the same names for the extension.
"""
from __future__ import annotations

PACKAGE = "chunkd:streams"
VERSION = "0.1.0"
TYPES_IFACE = f"{PACKAGE}/types@{VERSION}"
BLOBS_IFACE = f"{PACKAGE}/blobs@{VERSION}"
HANDLER_IFACE = f"{PACKAGE}/chunked-stream-handler@{VERSION}"
EVENTS_IFACE = f"{PACKAGE}/chunked-stream-events@{VERSION}"
TRIGGER_IFACE = f"{PACKAGE}/trigger@{VERSION}"
CONSUMER_IFACE = f"{PACKAGE}/stream-consumer@{VERSION}"

HOST_IMPORTS = (TYPES_IFACE, BLOBS_IFACE)

# worlds
CONSUMER = "consumer"
CONSUMER_WITH_EVENTS = "consumer-with-events"
CONSUMER_STREAMS = "consumer-streams"  # WASI 0.3 style: an async consume reads a stream<u8>

# the core-module (canonical ABI) names of the same functions
EXPORT_INVOKE = f"{TRIGGER_IFACE}#invoke"
EXPORT_HANDLE = f"{HANDLER_IFACE}#handle-chunk"
EXPORT_ENDED = f"{EVENTS_IFACE}#stream-ended"
