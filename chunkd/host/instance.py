"""One instance of one component: its store, its thread, its host imports.

InstanceBase holds what every kind of guest shares: the worker thread, the
epoch budget, the stream table and the host side of the chunkd imports
(answering in neutral values). ComponentInstance (here) and CoreInstance
(component_instance.py) and CoreInstance (core.py, the canonical-ABI fast
path) only differ in how values cross; kinds.py picks one per component.

Every call into the instance (instantiate, invoke, handle-chunk,
stream-ended, resource drops) runs on the instance's own worker thread, so
the event loop never blocks and no two calls run in one instance at once.
Host imports called by the guest run on that thread too; anything async
(opening or reading a blob) is handed to the loop with
run_coroutine_threadsafe, and the time spent waiting there is given back
to the call's epoch budget: call_timeout counts guest time only.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol, TypeVar

import structlog
from wasmtime import Store, Trap, TrapCode, WasmtimeError

from chunkd.errors import ChunkdError, GuestTrap, SourceError
from chunkd.host import rawffi, values
from chunkd.host.component import LoadedComponent
from chunkd.host.engine import EpochClock

if TYPE_CHECKING:
    from chunkd.jobs import Job
    from chunkd.sources.base import Blob

log = structlog.get_logger("chunkd.instance")

HOST_WAIT_LIMIT_S = 600.0
MAX_OUTPUT_LINE = 64 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DirectRead:
    """A chunk the instance thread reads itself, from `fd` at `offset`, straight into
    guest memory (the core path for `file` sources): no bytes object, no I/O-thread hop.
    (One chunk of a DirectRun.)"""

    fd: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class DirectRun:
    """`count` consecutive chunks of one stream that the instance thread reads itself
    (DirectRead each), one handle-chunk call per chunk, back to back: the delivery
    loop hands a stream's share of a batch over as one item, so its work per batch is
    O(streams), not O(chunks). Chunks are `chunk_size` long from `offset` on, but the
    last, which is `last_length` long (the blob's end; 0 for an empty blob). Before the
    run, `hint_length` bytes from `hint_offset` are hinted to the kernel (posix_fadvise
    WILLNEED: the delivery's read-ahead, see Delivery.take_direct)."""

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

    def made_bytes(self, made: int) -> int:
        """Bytes in the run's first `made` chunks."""
        return self.length if made >= self.count else made * self.chunk_size

    def reads(self) -> list[DirectRead]:
        c = self.chunk_size
        return [DirectRead(self.fd, self.offset + j * c, c if j < self.count - 1 else self.last_length)
                for j in range(self.count)]


ChunkData = bytes | DirectRun
# (handle, correlation-id, current-chunk, total-chunks, data): current-chunk is a run's
# first chunk.
HandleCall = tuple[int, int, int, int, ChunkData]
# Per item of a batch: the answer is the guest's bool (a run's: its last call's, every
# call before it having said true), None when nothing more was delivered (skipped, the
# batch halted, or the guest trapped in it), or the SourceError a direct read raised
# (the guest was not called for that chunk). `made` counts the item's handle-chunk
# calls that returned, and `seconds` their total duration.
Answer = bool | SourceError | None
BatchResult = tuple[list[Answer], list[int], list[float], GuestTrap | None]


def read_exactly_into(fd: int, view: memoryview, offset: int) -> int:
    """preadv until `view` is full or the file ends; the GIL is released while it reads."""
    got = 0
    n = len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if k == 0:
            break
        got += k
    return got


@dataclass
class HostStream:
    """An input-stream resource as the host keeps it (rep = handle)."""

    handle: int
    container: str
    name: str
    blob: "Blob"
    position: int = 0
    chunking: bool = False
    handle_dropped: bool = False
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class HostServices(Protocol):
    """What an instance needs from the daemon, implemented by the runtime."""

    loop: asyncio.AbstractEventLoop

    async def open_blob(self, container: str, name: str) -> "Blob": ...

    async def read_blob(self, blob: "Blob", offset: int, length: int) -> bytes: ...

    def open_blob_now(self, container: str, name: str) -> "Blob | None":
        """Called on the instance thread: open at once when the source can without the
        loop (a regular file), else None (then open_blob runs on the loop)."""
        ...

    def start_chunking(self, inst: "InstanceBase", stream: HostStream, chunk_size: int,
                       correlation_id: int) -> values.StreamErr | None:
        """Called on the instance thread; None on success, else a stream-error."""
        ...

    def stream_released(self, inst: "InstanceBase", stream: HostStream) -> None:
        """The guest dropped its handle of a stream that is not being chunked."""
        ...

    def guest_output(self, inst: "InstanceBase", fd: str, line: str) -> None: ...


class CallClock(ctypes.Structure):
    """When the current guest call started (epoch ticks) and how many ticks it spent
    waiting on the host; a struct so that the native batch can restart it per call."""

    _fields_ = [("start", ctypes.c_int64), ("waited", ctypes.c_int64)]


class _LineBuffer:
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
    kind = "component"

    def __init__(self, comp: LoadedComponent, index: int, services: HostServices, clock: EpochClock,
                 *, call_timeout_s: float, memory_bytes: int, max_chunk_size: int) -> None:
        self.comp = comp
        self.index = index
        self.label = f"{comp.name}#{index}"
        self.services = services
        self.clock = clock
        self.call_timeout_ticks = clock.ticks_for(call_timeout_s)
        self.call_timeout_s = call_timeout_s
        self.memory_bytes = memory_bytes
        self.max_chunk_size = max_chunk_size
        self.broken: str | None = None
        self.job: Job | None = None  # the job this instance is serving (set by the job runner)
        self.active_cids: set[int] = set()
        self.streams: dict[int, HostStream] = {}
        self._next_handle = 1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wasm-{self.label}")
        self._store: Store | None = None
        self._call_clock = CallClock()  # this call's start tick and host-waited ticks; C writes it too
        self._in_call = False
        self._closed = False
        self._halt = ctypes.c_int32(0)  # read by the native batch too (host/native.py)
        self._stopped_handles: set[int] = set()  # streams stopped by queued batches (handle_chunks)
        self._ctx: Any = None
        self._ctx_of: Store | None = None
        self._c_timeout = ctypes.c_uint64(self.call_timeout_ticks)

    @property
    def _call_start_tick(self) -> int:
        return int(self._call_clock.start)

    @_call_start_tick.setter
    def _call_start_tick(self, value: int) -> None:
        self._call_clock.start = value

    @property
    def _waited_ticks(self) -> int:
        return int(self._call_clock.waited)

    @_waited_ticks.setter
    def _waited_ticks(self, value: int) -> None:
        self._call_clock.waited = value

    @property
    def halt(self) -> bool:
        """Set from the loop to skip the rest of a batch (cluster fencing)."""
        return bool(self._halt.value)

    @halt.setter
    def halt(self, value: bool) -> None:
        self._halt.value = 1 if value else 0

    # --- lifecycle (loop side) ---------------------------------------------------

    async def start(self) -> None:
        await self._on_thread(self._instantiate)

    async def close(self) -> None:
        """Drop the store and close the blobs the guest still held (a stream being chunked
        is its Delivery's to close). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._on_thread(self._drop_store)
        finally:
            # the store holds our host functions, which hold us: drop every reference to it
            self._ctx = self._ctx_of = None
            self._executor.shutdown(wait=False)
            held = [s for s in self.streams.values() if not s.chunking]
            self.streams.clear()
            for s in held:
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

    # --- what a guest kind implements (instance thread) ---------------------------

    def _instantiate(self) -> None:
        raise NotImplementedError

    def _drop_store(self) -> None:
        self._store = None

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        raise NotImplementedError

    def _handle_chunk(self, handle: int, correlation_id: int, current: int, total: int, data: bytes) -> bool:
        raise NotImplementedError

    # a kind that reads DirectRead chunks straight into guest memory says so
    direct_reads = False

    def _handle_direct(self, handle: int, correlation_id: int, current: int, total: int, r: DirectRead) -> bool:
        """Fallback for kinds without direct reads: read into bytes here, then the usual call."""
        data = os.pread(r.fd, r.length, r.offset) if r.length else b""
        if len(data) != r.length:
            raise SourceError(f"blob changed size: got {len(data)} bytes at offset {r.offset}, expected {r.length}")
        return self._handle_chunk(handle, correlation_id, current, total, data)

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> None:
        raise NotImplementedError

    @property
    def has_events(self) -> bool:
        raise NotImplementedError

    # --- calls into the guest (loop side) ----------------------------------------

    async def invoke(self, args: list[str]) -> tuple[bool, str]:
        return await self._on_thread(self._guarded, "invoke", self._invoke, args)

    async def handle_chunks(self, calls: list[HandleCall], fresh: bool = True) -> BatchResult:
        """Several handle-chunk calls in one trip to the instance thread, in order: a
        bytes item is one call, a DirectRun one call per chunk.

        Returns, per item reached, its answer, its calls made and their seconds (see
        Answer), and the trap that stopped the batch, if any (later calls are not made;
        the item it stopped in is the last one returned, with the calls made before it).
        An item whose stream an earlier call of the batch, or of a batch before it,
        ended is skipped.

        `fresh`: no other batch of this job is queued before this one, so the streams
        earlier batches stopped are forgotten. A batch sent while another is still on
        the thread (fresh=False) skips the streams that one stopped: no chunk of a
        stream reaches the guest after the stream answered false or failed."""
        return await self._on_thread(self._run_batch, calls, fresh)

    def _run_batch(self, calls: list[HandleCall], fresh: bool = True) -> BatchResult:
        answers: list[Answer] = []
        made: list[int] = []
        seconds: list[float] = []
        if fresh:
            self._stopped_handles.clear()
        stopped = self._stopped_handles  # stream handles (never reused in an instance)
        clock = time.perf_counter
        for handle, cid, current, total, data in calls:
            if handle in stopped or self.halt:
                answers.append(None)
                made.append(0)
                seconds.append(0.0)
                continue
            t0 = clock()
            if type(data) is not DirectRun:
                try:
                    more = self._guarded("handle-chunk", self._handle_chunk, handle, cid, current, total, data)
                except GuestTrap as e:
                    return answers, made, seconds, e
                answers.append(more)
                made.append(1)
                seconds.append(clock() - t0)
                if not more:
                    stopped.add(handle)
                continue
            answer: Answer = None
            n = 0
            trap: GuestTrap | None = None
            if data.hint_length > 0:
                _advise(data.fd, data.hint_offset, data.hint_length)
            for j, r in enumerate(data.reads()):
                if self.halt:
                    answer = None
                    break
                try:
                    answer = self._guarded("handle-chunk", self._handle_direct, handle, cid, current + j, total, r)
                except GuestTrap as e:
                    trap, answer = e, None
                    break
                except SourceError as e:
                    answer = e
                    break
                except OSError as e:
                    answer = SourceError(f"read failed at offset {r.offset}: {e.strerror or e}")
                    break
                n += 1
                if not answer:
                    break
            answers.append(answer)
            made.append(n)
            seconds.append(clock() - t0)
            if trap is not None:
                return answers, made, seconds, trap
            if answer is False or isinstance(answer, SourceError):
                stopped.add(handle)
        return answers, made, seconds, None

    async def stream_ended(self, correlation_id: int, end: values.StreamEnd) -> None:
        if self.has_events and not self.broken:
            await self._on_thread(self._guarded, "stream-ended", self._stream_ended, correlation_id, end)

    async def streams_ended(self, ends: list[tuple[int, values.StreamEnd]]) -> None:
        """stream-ended for several streams, in order, in one trip to the instance thread;
        a trap stops the telling there (and is raised)."""
        if ends and self.has_events and not self.broken:
            await self._on_thread(self._tell_ended, ends)

    def _tell_ended(self, ends: list[tuple[int, values.StreamEnd]]) -> None:
        for correlation_id, end in ends:
            if self.broken:
                return
            self._guarded("stream-ended", self._stream_ended, correlation_id, end)

    # --- call bookkeeping (instance thread) ---------------------------------------

    def _begin_call(self) -> None:
        store = self._store
        assert store is not None
        self._call_start_tick = self.clock.ticks
        self._waited_ticks = 0
        self._in_call = True
        if self._ctx_of is not store:  # the raw context of this store, looked up once
            self._ctx = store._context()
            self._ctx_of = store
        rawffi.set_epoch_deadline(self._ctx, self._c_timeout)

    def _guarded(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """One export call: fresh epoch budget; a trap or timeout breaks the instance."""
        if self.broken:
            raise GuestTrap(f"instance {self.label} is broken: {self.broken}")
        self._begin_call()
        try:
            return fn(*args)
        except (Trap, WasmtimeError) as e:
            raise self._classify(e, what) from None
        finally:
            self._in_call = False

    def _classify(self, e: Exception, what: str) -> GuestTrap:
        text = str(e)
        timeout = False
        if isinstance(e, Trap) and e.trap_code == TrapCode.INTERRUPT:
            timeout = True
        elif "interrupt" in text.lower() and "wasm trap" in text.lower():
            timeout = True
        first = _trap_reason(text) or type(e).__name__
        if timeout:
            msg = f"{what} ran past call_timeout ({self.call_timeout_s:g}s) in {self.label}"
        else:
            msg = f"{what} trapped in {self.label}: {first}"
        self.broken = msg
        return GuestTrap(msg, timeout=timeout)

    def _wait_on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the event loop; the time waited does not count against call_timeout."""
        t0 = self.clock.ticks
        fut = asyncio.run_coroutine_threadsafe(coro, self.services.loop)
        try:
            return fut.result(timeout=HOST_WAIT_LIMIT_S)
        except TimeoutError:
            fut.cancel()  # the loop-side task is this thread's: it does not outlive the wait
            raise
        finally:
            self._give_back_host_time(t0)

    def _give_back_host_time(self, t0: int) -> None:
        """Ticks since `t0` were spent in the host, not the guest: restore them to the call."""
        if self._in_call and self._store is not None and self.clock.ticks != t0:
            self._waited_ticks += self.clock.ticks - t0
            used = self.clock.ticks - self._call_start_tick - self._waited_ticks
            self._store.set_epoch_deadline(max(1, self.call_timeout_ticks - used))

    # --- host side of the chunkd imports, neutral values (instance thread) --------

    def host_open(self, container: str, name: str) -> int | values.StreamErr:
        try:
            t0 = self.clock.ticks
            try:
                now = self.services.open_blob_now(container, name)  # a local file: no loop hop
            finally:
                self._give_back_host_time(t0)
            blob = now if now is not None else self._wait_on_loop(self.services.open_blob(container, name))
        except ChunkdError as e:
            return values.err_failed(str(e))
        except TimeoutError:
            return values.err_failed(f"open {container}/{name}: timed out")
        handle = self._next_handle
        self._next_handle += 1
        self.streams[handle] = HostStream(handle, container, name, blob)
        log.debug("blob_opened", component=self.comp.name, instance=self.label, container=container,
                  blob=name, size=blob.size, handle=handle)
        return handle

    def host_size(self, handle: int) -> int | None:
        s = self.streams.get(handle)
        return None if s is None else s.blob.size

    def host_read(self, handle: int, length: int) -> bytes | values.StreamErr:
        s = self.streams.get(handle)
        if s is None or s.chunking or s.ended:
            return values.err_closed()
        if length > self.max_chunk_size:
            return values.err_invalid(f"len {length} is above max-chunk-size {self.max_chunk_size}")
        if length == 0:
            return b""
        try:
            data = self._wait_on_loop(self.services.read_blob(s.blob, s.position, length))
        except SourceError as e:
            return values.err_failed(str(e))
        except TimeoutError:
            return values.err_failed(f"read of {s.container}/{s.name} timed out")
        s.position += len(data)
        return data

    def host_start_chunking(self, handle: int, chunk_size: int, correlation_id: int) -> values.StreamErr | None:
        s = self.streams.get(handle)
        if s is None or s.ended:
            return values.err_closed()
        return self.services.start_chunking(self, s, chunk_size, correlation_id)

    def host_drop(self, handle: int) -> None:
        s = self.streams.get(handle)
        if s is None:
            return
        s.handle_dropped = True
        if not s.chunking:
            del self.streams[handle]
            self.services.stream_released(self, s)

    def forget_stream(self, s: HostStream) -> None:
        """A chunked stream ended; keep it only while the guest still holds its handle."""
        s.ended = True
        if s.handle_dropped:
            self.streams.pop(s.handle, None)


def _advise(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass  # a hint only


def _trap_reason(text: str) -> str:
    """The line of a wasmtime error that says why: `wasm trap: ...` or what follows
    `Caused by:`, not the "error while executing at wasm backtrace:" header."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("wasm trap:"):
            return line
    for i, line in enumerate(lines):
        if line == "Caused by:" and i + 1 < len(lines):
            return lines[i + 1].split(":", 1)[-1].strip() if lines[i + 1][:1].isdigit() else lines[i + 1]
    return lines[0] if lines else ""
