"""One instance of one guest: its thread, its streams, its host imports.

InstanceBase holds what every instance shares: the worker thread that makes
every call into the guest (so the event loop never blocks and no two calls
run in one instance at once), the stream table (StreamTable, streamtable.py: the
one owner of the streams both the instance thread and the loop change), and the host
side of the chunkd imports, answering in neutral values (values.py). How a guest is run
is its subclass's: NativeInstance (native_instance.py) runs every kind of
guest in the native host core (chunkd._native, on the wasmtime crate);
tests/fakes.py has a fast fake for property tests.

Host imports called by the guest run on the instance thread too; anything
async (opening or reading a blob) is handed to the loop with
run_coroutine_threadsafe. The native core counts the time a guest spends
blocked in a host import as host time: call_timeout counts guest time only.

A batch of handle-chunk calls answers with one CallOutcome per item
(BatchResult), never parallel lists.
"""
from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol, TypeVar

import re

import structlog

from chunkd.errors import ChunkdError, GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.component import CONSUMER_STREAMS
from chunkd.host.streamtable import HostStream as HostStream  # re-exported: its old home
from chunkd.host.streamtable import StreamTable, TableClosed

if TYPE_CHECKING:
    from chunkd.host.component import LoadedComponent
    from chunkd.host.engine import EpochClock
    from chunkd.limits import LiveLimits
    from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.instance")
STDERR_TAIL_LINES = 8  # a trap's reason carries at most this many of the guest's last stderr lines ...
STDERR_TAIL_CHARS = 1500  # ... and at most this many characters of them
_ONE_TRAP_PREFIX = re.compile(r"^(?:wasm trap: )+")
# What componentize-py 0.25 and componentize-js 0.23 write to stderr just before they trap
# because invoke's error (WIT `string`) was not a string: `raise Err(42)`, `throw 42`,
# `throw new Error(...)`. The value itself is gone by then (it never leaves the guest).
_NON_STRING_ERR = re.compile(r"object is not an instance of 'str'|expected a string, received \[")
NON_STRING_ERR_HINT = ("invoke's error was not a string: the guest raised Err(...) or threw a value that is "
                       "not a string, which its bindings cannot pass to chunkd, so they trapped and the value "
                       "was lost inside the guest (raise Err(str(...)) in Python, throw a string in JavaScript)")

HOST_WAIT_LIMIT_S = 600.0
MAX_OUTPUT_LINE = 64 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DirectRun:
    """`count` consecutive chunks of one stream that the instance thread reads itself
    (from `fd`, straight into guest memory: no bytes object, no I/O-thread hop), one
    handle-chunk call per chunk, back to back: the delivery loop hands a stream's share
    of a batch over as one item, so its work per batch is O(streams), not O(chunks).
    Chunks are `chunk_size` long from `offset` on, but the last, which is `last_length`
    long (the blob's end; 0 for an empty blob). Before the run, `hint_length` bytes from
    `hint_offset` are hinted to the kernel (posix_fadvise WILLNEED: the delivery's
    read-ahead, see Delivery.take_direct)."""

    fd: int
    offset: int
    chunk_size: int
    count: int
    last_length: int
    hint_offset: int = 0
    hint_length: int = 0

    @property
    def length(self) -> int:
        return (self.count - 1) * self.chunk_size + self.last_length


ChunkData = bytes | DirectRun
# (handle, correlation-id, current-chunk, total-chunks, data): current-chunk is a run's
# first chunk.
HandleCall = tuple[int, int, int, int, ChunkData]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What one item of a batch came to.

    `answer`: the guest's bool (a run's: its last call's, every call before it having
    said true), or None when nothing more was delivered (skipped, the batch halted, the
    guest trapped in it, or a direct read failed). `source_error`: the direct read that
    stopped the item (the guest was not called for that chunk). `made`: the item's
    handle-chunk calls that returned; `seconds`: their total duration."""

    answer: bool | None
    made: int
    seconds: float
    source_error: SourceError | None = None

    @property
    def stops_stream(self) -> bool:
        return self.answer is False or self.source_error is not None


NOT_REACHED = CallOutcome(None, 0, 0.0)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One outcome per item reached, in order, and the trap that stopped the batch (the
    item it stopped in is the last outcome, with the calls made before it)."""

    outcomes: list[CallOutcome]
    trap: GuestTrap | None = None

    def outcome(self, i: int) -> CallOutcome:
        return self.outcomes[i] if i < len(self.outcomes) else NOT_REACHED


class CallFault(Exception):
    """A guest call that went wrong, as the runner of the guest reports it: `kind` is
    trap, timeout, panic (the native core caught a panic of its own) or broken."""

    def __init__(self, kind: str, reason: str = "") -> None:
        super().__init__(f"{kind}: {reason}" if reason else kind)
        self.kind = kind
        self.reason = reason


class OutputPort(Protocol):
    """A job attempt's outputs (chunkd/outputs.py JobOutputs), as the instance thread
    reaches them, through the loop. A refusal raises a ChunkdError whose `kind` is
    closed, invalid or failed (the WIT stream-error case)."""

    async def create(self, container: str, name: str) -> int: ...

    async def write(self, handle: int, data: bytes) -> None: ...

    async def finish(self, handle: int) -> None: ...

    async def drop(self, handle: int) -> None: ...


class JobPort(Protocol):
    """The job an instance serves, as the instance thread sees it (hostservices.py): the
    run's inbox (chunkd/jobs.py RunInbox), never the job record, which lives above."""

    @property
    def outputs(self) -> OutputPort | None: ...

    @property
    def id(self) -> str: ...

    @property
    def output_lines(self) -> int: ...

    def add_request(self, req: Any) -> bool: ...

    def wake(self) -> None: ...

    def add_output(self, fd: str, line: str) -> int: ...


class HostServices(Protocol):
    """What an instance needs from the daemon, implemented by the runtime."""

    loop: asyncio.AbstractEventLoop

    def open_blob(self, container: str, name: str, *, component: str) -> Coroutine[Any, Any, "Blob"]:
        """Called on the instance thread (the grant of `component` is checked there); the
        coroutine runs on the loop."""
        ...

    async def read_blob(self, blob: "Blob", offset: int, length: int) -> bytes: ...

    def open_blob_now(self, container: str, name: str, *, component: str) -> "Blob | None":
        """Called on the instance thread: open at once when the source can without the
        loop (a regular file), else None (then open_blob runs on the loop)."""
        ...

    def start_chunking(self, inst: "InstanceBase", handle: int, chunk_size: int,
                       correlation_id: int) -> values.StreamErr | None:
        """Called on the instance thread; None on success, else a stream-error. Starts it
        through inst.streams (StreamTable.start), so the checks and the start are one step."""
        ...

    def stream_released(self, inst: "InstanceBase", stream: HostStream) -> None:
        """Release the blob of a stream the table let go of (a stream not being chunked
        whose handle the guest dropped, or one opened after the instance closed)."""
        ...

    def guest_output(self, inst: "InstanceBase", fd: str, line: str) -> None: ...


class LineBuffer:
    def __init__(self, emit: Callable[[str], None]) -> None:
        self._buf = bytearray()
        self._emit = emit

    def write(self, data: bytes) -> None:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._emit(line.decode("utf-8", "replace"))
        while len(self._buf) > MAX_OUTPUT_LINE:  # a line without end: emitted in capped pieces
            piece = bytes(self._buf[:MAX_OUTPUT_LINE])
            del self._buf[:MAX_OUTPUT_LINE]
            self._emit(piece.decode("utf-8", "replace"))

    def flush(self) -> None:
        if self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._emit(line.decode("utf-8", "replace"))


class InstanceBase:
    # streams whose blob has a direct_fd are read by the instance itself
    direct_reads = False

    def __init__(self, comp: "LoadedComponent", index: int, services: HostServices, clock: "EpochClock",
                 *, limits: "LiveLimits", memory_bytes: int) -> None:
        self.comp = comp
        self.index = index
        self.label = f"{comp.name}#{index}"
        self.services = services
        self.clock = clock
        self.limits = limits  # the live [limits] (chunkd/limits.py): read at call time, never copied
        self.memory_bytes = memory_bytes  # fixed for the store's life: its pool's (InstancePool.memory_bytes)
        # the call_timeout the guest's calls are given: the live one when the latest call
        # began (arm_call_timeout), so a timeout's message names the bound that stopped it
        self.call_timeout_s = limits.call_timeout_s
        self.call_timeout_ticks = clock.ticks_for(self.call_timeout_s)
        self.broken: str | None = None
        # the guest's last stderr lines in this job: a trap's reason carries them (a Python
        # traceback, a Rust panic message are the usual explanation); reset per job
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # the last error a chunkd import returned to the guest in this job: a guest that
        # mishandles it (componentize-py traps on a non-string Err) still shows the reason
        self.last_import_error: str | None = None
        self.job: JobPort | None = None  # the job this instance is serving (set by the job runner)
        # shared by the instance thread and the loop; changed only through its methods
        self.streams = StreamTable()
        # instance handle -> (the job's outputs, its handle there); instance thread only
        self._outputs: dict[int, tuple[OutputPort, int]] = {}
        self._next_output = 1
        # the streams world: the errors this job's consume calls returned (correlation-id,
        # message), in the order their ends were told; reset by each invoke
        self.verdicts: list[tuple[int, str]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wasm-{self.label}")
        self._closed = False
        self._halt = False
        self._sent = 0  # loop side: batches handed to the instance thread
        self._ran = 0  # instance thread: the last batch it took (ran or skipped)

    @property
    def halt(self) -> bool:
        """Set from the loop to skip the rest of a batch (cluster fencing)."""
        return self._halt

    @halt.setter
    def halt(self, value: bool) -> None:
        self._halt = value
        self._on_halt(value)

    def _on_halt(self, value: bool) -> None:
        """A subclass whose batches run elsewhere passes the flag on."""

    # --- lifecycle (loop side) ---------------------------------------------------

    async def start(self) -> None:
        await self._on_thread(self._guarded, "instantiate", self._instantiate)

    async def close(self) -> None:
        """Drop the store and close the blobs the guest still held (a stream being chunked
        is its Delivery's to close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._on_thread(self._drop_store)
        finally:
            self._executor.shutdown(wait=False)
            for s in self.streams.close():  # each once; later opens are refused
                try:
                    await s.blob.close()
                except Exception as e:
                    log.warning("blob_close_failed", instance=self.label, blob=s.name, error=str(e))

    async def settle(self) -> None:
        """Wait until no call runs on the instance thread (one cancelled on the loop side
        may still be running there; call_timeout bounds it)."""
        try:
            await self._on_thread(lambda: None)
        except RuntimeError:  # the executor is shut down: nothing runs
            pass

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- what a way of running guests implements (instance thread) -----------------

    def _instantiate(self) -> None:
        raise NotImplementedError

    def _drop_store(self) -> None:
        pass

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        raise NotImplementedError

    def _run_batch(self, calls: list[HandleCall], fresh: bool) -> BatchResult:
        raise NotImplementedError

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> str | None:
        """Tells the end; the streams world returns the error consume returned, if any."""
        raise NotImplementedError

    @property
    def has_events(self) -> bool:
        raise NotImplementedError

    # --- calls into the guest (loop side) ----------------------------------------

    async def invoke(self, args: list[str]) -> tuple[bool, str]:
        self.verdicts = []
        return await self._on_thread(self._guarded, "invoke", self._invoke, args)

    async def handle_chunks(self, calls: list[HandleCall], fresh: bool = True) -> BatchResult:
        """Several handle-chunk calls in one trip to the instance thread, in order: a
        bytes item is one call, a DirectRun one call per chunk.

        An item whose stream an earlier call of the batch, or of a batch before it,
        ended is skipped. `fresh`: no other batch of this job is queued before this
        one, so the streams earlier batches stopped are forgotten. A batch sent while
        another is still on the thread (fresh=False) skips the streams that one
        stopped: no chunk of a stream reaches the guest after the stream answered false
        or failed."""
        if self.broken:
            return BatchResult([], GuestTrap(f"instance {self.label} is broken: {self.broken}"))
        self._sent += 1
        return await self._on_thread(self._batch_in_order, calls, fresh, self._sent)

    def _batch_in_order(self, calls: list[HandleCall], fresh: bool, seq: int) -> BatchResult:
        """A batch queued behind another (fresh=False) runs only if that one ran: when the
        one before it was cancelled before the thread took it (a shutdown), running this one
        would hand the guest chunks past ones it never got. Skipped, nothing is delivered."""
        try:
            if not fresh and self._ran != seq - 1:
                return BatchResult([])
            return self._run_batch(calls, fresh)
        finally:
            self._ran = seq

    async def stream_ended(self, correlation_id: int, end: values.StreamEnd) -> None:
        if self.has_events and not self.broken:
            await self._on_thread(self._tell_ended, [(correlation_id, end)])

    async def streams_ended(self, ends: list[tuple[int, values.StreamEnd]]) -> None:
        """stream-ended for several streams, in order, in one trip to the instance thread;
        a trap stops the telling there (and is raised)."""
        if ends and self.has_events and not self.broken:
            await self._on_thread(self._tell_ended, ends)

    def _tell_ended(self, ends: list[tuple[int, values.StreamEnd]]) -> None:
        for correlation_id, end in ends:
            if self.broken:
                return
            verdict = self._guarded(self.end_call, self._stream_ended, correlation_id, end)
            if verdict is not None:
                self.verdicts.append((correlation_id, verdict))

    @property
    def end_call(self) -> str:
        """The guest call an end is told in, for messages."""
        return "consume" if self.comp.info.world == CONSUMER_STREAMS else "stream-ended"

    @property
    def chunk_call(self) -> str:
        """The guest call chunks are delivered in, for messages."""
        return "consume" if self.comp.info.world == CONSUMER_STREAMS else "handle-chunk"

    # --- call bookkeeping (instance thread) ---------------------------------------

    def arm_call_timeout(self) -> int | None:
        """Before each call into the guest: take the live call_timeout (a reload may have
        changed it). Its budget in ticks when that differs from the one calls were given
        until now (the runner of the guest passes it on), else None."""
        self.call_timeout_s = self.limits.call_timeout_s
        ticks = self.clock.ticks_for(self.call_timeout_s)
        if ticks == self.call_timeout_ticks:
            return None
        self.call_timeout_ticks = ticks
        return ticks

    def _guarded(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """One call into the guest; a trap, timeout or panic breaks the instance."""
        if self.broken:
            raise GuestTrap(f"instance {self.label} is broken: {self.broken}")
        try:
            return fn(*args)
        except CallFault as e:
            raise self.classify(e, what) from None

    def said(self, what: str, err: values.StreamErr) -> values.StreamErr:
        """Remember an error an import returned to the guest (for a trap's reason); pass it on."""
        text = f"{what}: {err.kind}" + (f"({err.message})" if err.message else "")
        self.last_import_error = text[:500]
        return err

    def begin_job(self) -> None:
        """A new job on this instance: what a trap's reason quotes starts over."""
        self.stderr_tail.clear()
        self.last_import_error = None

    def classify(self, e: CallFault, what: str) -> GuestTrap:
        if e.kind == "timeout":
            msg = f"{what} ran past call_timeout ({self.call_timeout_s:g}s) in {self.label}"
        elif e.kind == "panic":
            msg = f"{what} failed in {self.label}: the native host panicked ({e.reason}); the instance is discarded"
        elif e.kind == "broken":
            msg = f"instance {self.label} is broken: {self.broken or e.reason}"
        else:
            reason = _ONE_TRAP_PREFIX.sub("wasm trap: ", e.reason)  # "wasm trap" said once
            msg = f"{what} trapped in {self.label}: {reason}"
            if self.last_import_error:
                msg += f"; the last error chunkd returned to the guest: {self.last_import_error}"
            tail = [line for line in self.stderr_tail if line.strip()]
            if what == "invoke" and any(_NON_STRING_ERR.search(line) for line in tail):
                msg += f"; {NON_STRING_ERR_HINT}"
            if tail:
                said = " | ".join(tail)
                if len(said) > STDERR_TAIL_CHARS:
                    said = "..." + said[-STDERR_TAIL_CHARS:]
                msg += f"; the guest's last stderr lines: {said}"
        self.broken = self.broken or msg
        return GuestTrap(msg, timeout=e.kind == "timeout")

    def _wait_on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the event loop, bounded by HOST_WAIT_LIMIT_S."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.services.loop)
        try:
            return fut.result(timeout=HOST_WAIT_LIMIT_S)
        except TimeoutError:
            fut.cancel()  # the loop-side task is this thread's: it does not outlive the wait
            raise

    # --- host side of the chunkd imports, neutral values (instance thread) --------

    def host_open(self, container: str, name: str) -> int | values.StreamErr:
        try:
            comp = self.comp.name
            now = self.services.open_blob_now(container, name, component=comp)  # a local file: no loop hop
            blob = now if now is not None else self._wait_on_loop(
                self.services.open_blob(container, name, component=comp))
        except ChunkdError as e:
            return values.err_failed(str(e))
        except TimeoutError:
            return values.err_failed(f"open {container}/{name}: timed out")
        try:
            handle = self.streams.open(container, name, blob).handle
        except TableClosed as e:  # the instance closed while the blob was opening
            self.services.stream_released(self, e.stream)
            return values.err_closed()
        log.debug("blob_opened", component=self.comp.name, instance=self.label, container=container,
                  blob=name, size=blob.size, handle=handle)
        return handle

    def host_size(self, handle: int) -> int | None:
        s = self.streams.get(handle)
        return None if s is None else s.blob.size

    def host_read(self, handle: int, length: int) -> bytes | values.StreamErr:
        s = self.streams.readable(handle)
        if s is None:
            return values.err_closed()
        limit = self.limits.max_chunk_size_bytes  # live: the same bound start-chunking-read checks
        if length > limit:
            return values.err_invalid(f"len {length} is above max-chunk-size {limit}")
        if length == 0:
            return b""
        try:
            data = self._wait_on_loop(self.services.read_blob(s.blob, s.position, length))
        except SourceError as e:
            return values.err_failed(str(e))
        except TimeoutError:
            return values.err_failed(f"read of {s.container}/{s.name} timed out")
        s.position += len(data)  # the instance thread's alone: no start can run meanwhile
        return data

    def host_start_chunking(self, handle: int, chunk_size: int, correlation_id: int) -> values.StreamErr | None:
        return self.services.start_chunking(self, handle, chunk_size, correlation_id)

    # --- outputs (blobs.create, output-stream, write-blob): instance thread ----------

    def _refusal(self, e: ChunkdError) -> values.StreamErr:
        kind = getattr(e, "kind", "failed")
        if kind == "closed":
            return values.err_closed()
        return values.err_invalid(str(e)) if kind == "invalid" else values.err_failed(str(e))

    def _output(self, handle: int) -> tuple[OutputPort, int] | None:
        """The current job's output behind an instance handle (one of an earlier job: None)."""
        entry = self._outputs.get(handle)
        job = self.job
        if entry is None or job is None or entry[0] is not job.outputs:
            return None
        return entry

    def host_create(self, container: str, name: str) -> int | values.StreamErr:
        job = self.job
        outputs = job.outputs if job is not None else None
        if outputs is None:
            return values.err_failed("no job is running on this instance")
        try:
            out = self._wait_on_loop(outputs.create(container, name))
        except ChunkdError as e:
            return self._refusal(e)
        except TimeoutError:
            return values.err_failed(f"create {container}/{name}: timed out")
        handle = self._next_output
        self._next_output += 1
        self._outputs[handle] = (outputs, out)
        return handle

    def host_write(self, handle: int, data: bytes) -> values.StreamErr | None:
        entry = self._output(handle)
        if entry is None:
            return values.err_closed()
        limit = self.limits.max_chunk_size_bytes
        if len(data) > limit:
            return values.err_invalid(f"write of {len(data)} bytes is above max-chunk-size {limit}")
        try:
            self._wait_on_loop(entry[0].write(entry[1], data))
        except ChunkdError as e:
            return self._refusal(e)
        except TimeoutError:
            return values.err_failed("write timed out")
        return None

    def host_finish(self, handle: int) -> values.StreamErr | None:
        entry = self._output(handle)
        if entry is None:
            return values.err_closed()
        try:
            self._wait_on_loop(entry[0].finish(entry[1]))
        except ChunkdError as e:
            return self._refusal(e)
        except TimeoutError:
            return values.err_failed("finish timed out")
        return None

    def host_drop_output(self, handle: int) -> None:
        entry = self._output(handle)
        self._outputs.pop(handle, None)
        if entry is not None:
            try:
                self._wait_on_loop(entry[0].drop(entry[1]))
            except (ChunkdError, TimeoutError) as e:
                log.warning("output_drop_failed", instance=self.label, error=str(e))

    def output_cap(self) -> int:
        """The most bytes one write may carry (the streams world's pipe takes this much)."""
        return min(self.limits.max_chunk_size_bytes, 1 << 20)

    def host_drop(self, handle: int) -> None:
        released = self.streams.drop(handle)  # a stream being chunked stays: dropping does not cancel
        if released is not None:
            self.services.stream_released(self, released)
