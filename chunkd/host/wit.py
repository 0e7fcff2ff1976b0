"""The WIT names chunkd implements (wit/streams.wit), in one place.

The bottom of host/'s one-way import stack: wit -> values, rawffi ->
engine -> fastcall -> component (loading, world checks) -> instance (the
shared base) -> component_instance / core (the two guest kinds) -> kinds
(the table that picks one).
"""
from __future__ import annotations

from wasmtime import ValType

PACKAGE = "chunkd:streams"
VERSION = "0.1.0"
TYPES_IFACE = f"{PACKAGE}/types@{VERSION}"
BLOBS_IFACE = f"{PACKAGE}/blobs@{VERSION}"
HANDLER_IFACE = f"{PACKAGE}/chunked-stream-handler@{VERSION}"
EVENTS_IFACE = f"{PACKAGE}/chunked-stream-events@{VERSION}"
TRIGGER_IFACE = f"{PACKAGE}/trigger@{VERSION}"

HOST_IMPORTS = (TYPES_IFACE, BLOBS_IFACE)

# worlds
CONSUMER = "consumer"
CONSUMER_WITH_EVENTS = "consumer-with-events"

# the core-module (canonical ABI) names of the same functions
EXPORT_INVOKE = f"{TRIGGER_IFACE}#invoke"
EXPORT_HANDLE = f"{HANDLER_IFACE}#handle-chunk"
EXPORT_ENDED = f"{EVENTS_IFACE}#stream-ended"
CORE_EXPORTS_REQUIRED = ("memory", "cabi_realloc", EXPORT_INVOKE, EXPORT_HANDLE)

I32, I64 = ValType.i32(), ValType.i64()
WASI_P1 = "wasi_snapshot_preview1"

# (module, name) -> (params, results) of what a core guest may import (all retptr-lowered)
CORE_HOST_FUNCS: dict[tuple[str, str], tuple[list[ValType], list[ValType]]] = {
    (BLOBS_IFACE, "open"): ([I32, I32, I32, I32, I32], []),
    (TYPES_IFACE, "[method]input-stream.size"): ([I32, I32], []),
    (TYPES_IFACE, "[method]input-stream.read"): ([I32, I64, I32], []),
    (TYPES_IFACE, "[method]input-stream.start-chunking-read"): ([I32, I64, I64, I32], []),
    (TYPES_IFACE, "[resource-drop]input-stream"): ([I32], []),
    # the one WASI function a core guest may import: its stdout and stderr become
    # guest_output lines, as a component's do (componentized, the preview1 adapter
    # maps it to wasi:cli/stdout and stderr, which components get)
    (WASI_P1, "fd_write"): ([I32, I32, I32, I32], [I32]),
}
