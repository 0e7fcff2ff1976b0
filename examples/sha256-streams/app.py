"""sha256-streams: digest every blob named in the job's args, one stream<u8>
per blob (the consumer-streams world; the twin of examples/sha256).

invoke(args): args = [CONTAINER, NAME, NAME, ...], optionally preceded by
"--chunk-size=BYTES" (default 1 MiB). The host then calls consume() once per
blob and writes it into `data`; when the stream ends, prints "<hex>  <name>"
(the sha256sum format), "failed: <name>: <msg>" or "cancelled: <name>",
as the `end` future says.
"""
import hashlib

from wit_world import exports
from wit_world.exports import stream_consumer
from wit_world.imports import blobs
from componentize_py_types import Err

DEFAULT_CHUNK = 1024 * 1024

_jobs: dict[int, tuple[str, int]] = {}  # correlation-id -> (name, chunk size)
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
            _jobs[cid] = (name, chunk)
            try:
                stream.start_chunking_read(chunk, cid)
            except Err as e:
                _jobs.pop(cid, None)
                raise Err(f"start-chunking-read {name}: {e.value}")
        return f"digesting {len(names)} blob(s) in {chunk}-byte chunks"


class StreamConsumer(exports.StreamConsumer):
    async def consume(self, correlation_id: int, size, data, end) -> None:
        name, chunk = _jobs.pop(correlation_id, ("?", DEFAULT_CHUNK))
        h = hashlib.sha256()
        with data:  # closes the reader when done
            while not data.writer_dropped:  # read() gives b"" at the end
                h.update(await data.read(chunk))
        how = await end.read()
        if isinstance(how, stream_consumer.StreamEnd_Completed):
            print(f"{h.hexdigest()}  {name}", flush=True)
        elif isinstance(how, stream_consumer.StreamEnd_Failed):
            print(f"failed: {name}: {how.value}", flush=True)
        else:
            print(f"cancelled: {name}", flush=True)
