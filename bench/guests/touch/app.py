"""touch: the minimal component guest for benchmarks. invoke([CONTAINER, NAME, CHUNK])
chunks one blob; handle-chunk touches every byte (bytes.count scans the whole buffer)."""
from wit_world import exports
from wit_world.imports import blobs

zeros = 0


class Trigger(exports.Trigger):
    def invoke(self, args: list[str]) -> str:
        blobs.open(args[0], args[1]).start_chunking_read(int(args[2]), 1)
        return "ok"


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id: int, current_chunk: int, total_chunks: int, data: bytes) -> bool:
        global zeros
        zeros += data.count(0)
        return True
