"""sha256: digest every blob named in the job's args, chunk by chunk.

invoke(args): args = [CONTAINER, NAME, NAME, ...], optionally preceded by
"--chunk-size=BYTES" (default 1 MiB). Prints "<hex>  <name>" (the
sha256sum format) when each stream completes.
"""
import hashlib

from wit_world import exports
from wit_world.exports import chunked_stream_events
from wit_world.imports import blobs
from componentize_py_types import Err

DEFAULT_CHUNK = 1024 * 1024

_digests: dict[int, "hashlib._Hash"] = {}
_names: dict[int, str] = {}
_next_id = 0


class Trigger(exports.Trigger):
    def invoke(self, args: list[str]) -> str:
        global _next_id
        chunk = DEFAULT_CHUNK
        rest = []
        for a in args:
            if a.startswith("--chunk-size="):
                chunk = int(a.split("=", 1)[1])
            else:
                rest.append(a)
        if len(rest) < 2:
            raise Err("usage: sha256 [--chunk-size=N] CONTAINER NAME [NAME...]")
        container, names = rest[0], rest[1:]
        for name in names:
            try:
                stream = blobs.open(container, name)
            except Err as e:
                raise Err(f"open {container}/{name}: {e.value}")
            cid = _next_id
            _next_id += 1
            _digests[cid] = hashlib.sha256()
            _names[cid] = name
            try:
                stream.start_chunking_read(chunk, cid)
            except Err as e:
                raise Err(f"start-chunking-read {name}: {e.value}")
        return f"digesting {len(names)} blob(s) in {chunk}-byte chunks"


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id: int, current_chunk: int,
                     total_chunks: int, data: bytes) -> bool:
        _digests[correlation_id].update(data)
        return True


class ChunkedStreamEvents(exports.ChunkedStreamEvents):
    def stream_ended(self, correlation_id: int, end) -> None:
        h = _digests.pop(correlation_id, None)
        name = _names.pop(correlation_id, "?")
        if h is None:
            return
        if isinstance(end, chunked_stream_events.StreamEnd_Completed):
            print(f"{h.hexdigest()}  {name}", flush=True)
        elif isinstance(end, chunked_stream_events.StreamEnd_Failed):
            print(f"failed: {name}: {end.value}", flush=True)
        else:
            print(f"cancelled: {name}", flush=True)
