"""gzip: compress a blob into a new blob, chunk by chunk (the handle-chunk world,
consumer-with-events; blobs.create / output-stream.write / finish).

invoke(args): `[--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME`
(default 1 MiB). Opens NAME, creates OUT_NAME in OUT_CONTAINER (a container
with `writable = true`), and starts a chunked read. Each chunk is fed to a
zlib compressor in gzip format (wbits=31); whatever it gives back is written
to the output in writes of at most the chunk size. When the read completes
the compressor is flushed, the rest written and the output finished; it
becomes visible when the job completes. A cancelled or failed read drops the
output unfinished, which aborts it. Prints
`gzip NAME -> OUT_CONTAINER/OUT_NAME IN_BYTES -> OUT_BYTES` when done.
`gzip -d` of the output gives back the input byte for byte.
"""
import zlib

from wit_world import exports
from wit_world.exports import chunked_stream_events
from wit_world.imports import blobs
from componentize_py_types import Err

DEFAULT_CHUNK = 1024 * 1024
USAGE = "usage: gzip [--chunk-size=BYTES] IN_CONTAINER NAME OUT_CONTAINER OUT_NAME"


class Job:
    """One compression: the output being written and where it goes."""

    def __init__(self, name: str, out_container: str, out_name: str, out, chunk: int) -> None:
        self.name, self.out_container, self.out_name = name, out_container, out_name
        self.out = out  # the output-stream (blobs.create)
        self.chunk = chunk
        self.z = zlib.compressobj(wbits=31)  # 31: gzip header and trailer
        self.bytes_in = 0
        self.bytes_out = 0

    def write(self, data: bytes) -> None:
        """Write `data` in writes of at most the chunk size (the host takes at most
        max-chunk-size per call, and the chunk size was accepted as one)."""
        view = memoryview(data)
        for at in range(0, len(view), self.chunk):
            self.out.write(bytes(view[at:at + self.chunk]))  # raises Err(stream-error)
        self.bytes_out += len(data)

    def abort(self) -> None:
        """Drop the output unfinished: the host aborts it, nothing becomes visible."""
        self.out.__exit__(None, None, None)


_jobs: dict[int, Job] = {}
_next_id = 0


def _describe(e: Err) -> str:
    """A stream-error as text: "closed", "invalid-argument: MSG" or "failed: MSG"."""
    v = e.value
    case = {"Closed": "closed", "InvalidArgument": "invalid-argument",
            "Failed": "failed"}.get(type(v).__name__.removeprefix("StreamError_"), repr(v))
    return f"{case}: {v.value}" if hasattr(v, "value") else case


class Trigger(exports.Trigger):
    def invoke(self, args: list[str]) -> str:
        global _next_id
        chunk = DEFAULT_CHUNK
        rest = []
        for a in args:
            if a.startswith("--chunk-size="):
                try:
                    chunk = int(a.split("=", 1)[1])
                except ValueError:
                    raise Err(f"bad chunk size {a!r}")
            else:
                rest.append(a)
        if len(rest) != 4 or chunk <= 0:
            raise Err(USAGE)
        container, name, out_container, out_name = rest
        try:
            stream = blobs.open(container, name)
        except Err as e:
            raise Err(f"open {container}/{name}: {_describe(e)}")
        try:
            out = blobs.create(out_container, out_name)
        except Err as e:
            raise Err(f"create {out_container}/{out_name}: {_describe(e)}")
        cid = _next_id
        _next_id += 1
        job = Job(name, out_container, out_name, out, chunk)
        _jobs[cid] = job
        try:
            stream.start_chunking_read(chunk, cid)
        except Err as e:
            del _jobs[cid]
            job.abort()
            raise Err(f"start-chunking-read {name}: {_describe(e)}")
        return f"compressing {container}/{name} into {out_container}/{out_name} in {chunk}-byte chunks"


class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id: int, current_chunk: int,
                     total_chunks: int, data: bytes) -> bool:
        job = _jobs.get(correlation_id)
        if job is None:
            return False
        job.bytes_in += len(data)
        try:
            job.write(job.z.compress(data))
        except Err as e:
            print(f"failed: write {job.out_container}/{job.out_name}: {_describe(e)}", flush=True)
            return False  # cancels the read; stream-ended then aborts the output
        return True


class ChunkedStreamEvents(exports.ChunkedStreamEvents):
    def stream_ended(self, correlation_id: int, end) -> None:
        job = _jobs.pop(correlation_id, None)
        if job is None:
            return
        if not isinstance(end, chunked_stream_events.StreamEnd_Completed):
            job.abort()
            if isinstance(end, chunked_stream_events.StreamEnd_Failed):
                print(f"failed: {job.name}: {end.value}", flush=True)
            else:
                print(f"cancelled: {job.name}", flush=True)
            return
        try:
            job.write(job.z.flush())
            job.out.finish()
        except Err as e:
            job.abort()
            # stream-ended has no verdict: trap, so the job fails instead of completing
            # without its output
            raise RuntimeError(f"finish {job.out_container}/{job.out_name}: {_describe(e)}")
        job.out.__exit__(None, None, None)  # finished: dropping it now changes nothing
        print(f"gzip {job.name} -> {job.out_container}/{job.out_name} {job.bytes_in} -> {job.bytes_out}",
              flush=True)
