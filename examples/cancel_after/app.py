"""cancel_after: reads the first N chunks of a blob, then answers false.

invoke(args): [CONTAINER, NAME, CHUNK_SIZE, N]. Prints each chunk it sees.
Built for the plain `consumer` world (no stream-ended export).
"""
from wit_world import exports
from wit_world.imports import blobs
from componentize_py_types import Err

_limit: dict[int, int] = {}


class Trigger(exports.Trigger):
    def invoke(self, args: list[str]) -> str:
        if len(args) != 4:
            raise Err("usage: cancel_after CONTAINER NAME CHUNK_SIZE N")
        container, name, chunk, n = args[0], args[1], int(args[2]), int(args[3])
        stream = blobs.open(container, name)
        _limit[7] = n
        stream.start_chunking_read(chunk, 7)
        return f"will cancel after {n} chunk(s)"


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id: int, current_chunk: int,
                     total_chunks: int, data: bytes) -> bool:
        print(f"chunk {current_chunk}/{total_chunks} {len(data)} bytes", flush=True)
        return current_chunk + 1 < _limit[correlation_id]

