"""Guests run in the native host core (chunkd._native, on the wasmtime crate).

NativeInstance is the one way production chunkd runs a guest, component or
core module alike: every call (instantiate, invoke, a whole batch of
handle-chunk calls or of writes into streams, stream-ended) is one call into
the extension, which releases the GIL for its duration, re-arms the epoch
deadline per guest call and catches its own panics. Chunk bytes never pass
through Python: a bytes chunk is lowered from the bytes object with one copy,
a file chunk is `pread` by the extension (into its buffer for a component,
straight into guest memory for a core module, straight into the guest's
read buffer for a streams component). A fault comes back as one exception
class per kind (GuestTrapped, GuestTimedOut, NativePanic, InstanceBroken).

The extension calls back into Python (NativeHost) only for the imports that
need the daemon: blobs.open, input-stream.size, read, start-chunking-read,
the resource drop, the outputs (blobs.create, output-stream.write and finish,
its drop, and each piece write-blob takes from a streams guest) and guest
output.
"""
from __future__ import annotations

import weakref
from typing import Any

from chunkd import _native
from chunkd.errors import GuestTrap, SourceError
from chunkd.host import values
from chunkd.host.instance import BatchResult, CallFault, CallOutcome, HandleCall, InstanceBase, LineBuffer

NativeErr = tuple[int, str]


class NativeHost:
    """What the extension calls on the instance thread: the chunkd imports in the
    extension's neutral values (int or None for success, (discriminant, message) for
    a stream-error). Holds its instance weakly: the extension holds this object."""

    def __init__(self, inst: "NativeInstance") -> None:
        self._inst = weakref.ref(inst)
        emit = inst.services.guest_output
        ref = self._inst

        def out(fd: str) -> Any:
            return lambda line: (lambda i: i is not None and emit(i, fd, line))(ref())

        self._out = {1: LineBuffer(out("stdout")), 2: LineBuffer(out("stderr"))}

    def _get(self) -> "NativeInstance":
        inst = self._inst()
        if inst is None:
            raise RuntimeError("the instance is gone")
        return inst

    def open(self, container: str, name: str) -> int | NativeErr:
        inst = self._get()
        r = inst.host_open(container, name)
        return inst.said(f"open {container}/{name}", r).to_native() if isinstance(r, values.StreamErr) else r

    def size(self, handle: int) -> int | None:
        return self._get().host_size(handle)

    def read(self, handle: int, length: int) -> bytes | NativeErr:
        inst = self._get()
        r = inst.host_read(handle, length)
        return inst.said("read", r).to_native() if isinstance(r, values.StreamErr) else r

    def start_chunking(self, handle: int, chunk_size: int, correlation_id: int) -> NativeErr | None:
        inst = self._get()
        r = inst.host_start_chunking(handle, chunk_size, correlation_id)
        return None if r is None else inst.said(f"start-chunking-read (correlation-id {correlation_id})", r).to_native()

    def drop(self, handle: int) -> None:
        self._get().host_drop(handle)

    def create(self, container: str, name: str) -> int | NativeErr:
        inst = self._get()
        r = inst.host_create(container, name)
        return inst.said(f"create {container}/{name}", r).to_native() if isinstance(r, values.StreamErr) else r

    def write(self, handle: int, data: bytes) -> NativeErr | None:
        inst = self._get()
        r = inst.host_write(handle, data)
        return None if r is None else inst.said("write", r).to_native()

    def finish(self, handle: int) -> NativeErr | None:
        inst = self._get()
        r = inst.host_finish(handle)
        return None if r is None else inst.said("finish", r).to_native()

    def drop_output(self, handle: int) -> None:
        self._get().host_drop_output(handle)

    def output_cap(self) -> int:
        return self._get().output_cap()

    def output(self, fd: int, data: bytes) -> None:
        out = self._out.get(fd)
        if out is not None:
            out.write(data)

    def flush(self) -> None:
        for out in self._out.values():
            out.flush()


# one exception class per kind of fault (native/src/errors.rs)
_FAULT_KINDS: dict[type[_native.GuestFault], str] = {
    _native.GuestTrapped: "trap",
    _native.GuestTimedOut: "timeout",
    _native.NativePanic: "panic",
    _native.InstanceBroken: "broken",
}


def _fault(e: _native.GuestFault) -> CallFault:
    reason = str(e.args[0]) if e.args else ""
    return CallFault(_FAULT_KINDS.get(type(e), "trap"), reason)


class NativeInstance(InstanceBase):
    direct_reads = True  # file chunks are read by the extension itself

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._native: _native.Instance | None = None
        self._host = NativeHost(self)

    @property
    def native(self) -> _native.Instance:
        if self._native is None:
            raise CallFault("broken", "instance is not started")
        return self._native

    def _on_halt(self, value: bool) -> None:
        if self._native is not None:
            self._native.set_halt(value)

    def _instantiate(self) -> None:
        self._native = self.clock.engine.instance(self.comp.guest, self._host, self.memory_bytes,
                                                  self.call_timeout_ticks)
        self._native.set_halt(self.halt)
        try:
            self._native.start()
        except _native.GuestFault as e:
            raise _fault(e) from None

    def _drop_store(self) -> None:
        if self._native is not None:
            self._native.close()
        self._host.flush()

    @property
    def has_events(self) -> bool:
        return self.comp.info.has_events

    def _arm(self) -> None:
        """Before each call: a reload's call_timeout reaches it (InstanceBase.arm_call_timeout)."""
        ticks = self.arm_call_timeout()
        if ticks is not None:
            self.native.set_timeout_ticks(ticks)

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        self._arm()
        try:
            return self.native.invoke(args)
        except _native.GuestFault as e:
            raise _fault(e) from None

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> str | None:
        self._arm()
        try:
            return self.native.stream_ended(correlation_id, end.discriminant, end.reason)
        except _native.GuestFault as e:
            raise _fault(e) from None

    def _run_batch(self, calls: list[HandleCall], fresh: bool) -> BatchResult:
        if self.broken:
            return BatchResult([], GuestTrap(f"instance {self.label} is broken: {self.broken}"))
        self._arm()
        results, fault = self.native.run_batch(calls, fresh)
        outcomes = [CallOutcome(r.answer, r.made, r.seconds,
                                SourceError(r.source_error) if r.source_error is not None else None)
                    for r in results]
        trap = self.classify(_fault(fault), self.chunk_call) if fault is not None else None
        return BatchResult(outcomes, trap)

    def inject_panic(self, after_calls: int) -> None:
        """Test hook: the extension panics inside a batch after `after_calls` more calls."""
        self.native.inject_panic(after_calls)
