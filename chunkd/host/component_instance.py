"""The component kind of guest: a wasm component through wasmtime's component API.

The chunk bytes cross as `list<u8>` through a prepared C-API call
(fastcall.py); everything else goes through wasmtime-py's own lifting.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from wasmtime import Store, WasiConfig
from wasmtime.component import Func, Linker, ResourceHost, ResourceType

from chunkd.host import fastcall, values
from chunkd.host.fastcall import PreparedHandleChunk
from chunkd.host.instance import BatchResult, HandleCall, InstanceBase, _LineBuffer
from chunkd.host.wit import (
    BLOBS_IFACE,
    EVENTS_IFACE,
    HANDLER_IFACE,
    TRIGGER_IFACE,
    TYPES_IFACE,
)

STREAM_RESOURCE_ID = 1

log = structlog.get_logger("chunkd.instance")


def _wit(v: Any) -> Any:
    return v.to_wit() if isinstance(v, values.StreamErr) else v


class ComponentInstance(InstanceBase):
    """A wasm component, through wasmtime's component API."""

    kind = "component"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._funcs: dict[str, Func] = {}
        self._prepared: PreparedHandleChunk | None = None
        self._filler: ThreadPoolExecutor | None = None  # fills the next chunk's list during a call
        self._fill: Future[None] | None = None
        self._after: dict[int, bytes] = {}  # id(chunk) -> the next chunk of the batch
        self._stdout = _LineBuffer(lambda line: self.services.guest_output(self, "stdout", line))
        self._stderr = _LineBuffer(lambda line: self.services.guest_output(self, "stderr", line))

    def _drop_store(self) -> None:
        self._settle_fill()
        if self._filler is not None:
            self._filler.shutdown(wait=True)
            self._filler = None
        if self._prepared is not None:
            self._prepared.close()
            self._prepared = None
        self._funcs.clear()
        self._store = None

    def _instantiate(self) -> None:
        engine = self.clock.engine
        store = Store(engine)
        wasi = WasiConfig()  # no preopens, no env, no args, no network, no stdin
        wasi.stdout_custom = self._host_time_for(self._stdout.write)
        wasi.stderr_custom = self._host_time_for(self._stderr.write)
        store.set_wasi(wasi)
        store.set_limits(memory_size=self.memory_bytes)
        store.set_epoch_deadline(self.call_timeout_ticks)
        linker = Linker(engine)
        linker.add_wasip2()
        with linker.root() as root:
            with root.add_instance(TYPES_IFACE) as types:
                types.add_resource("input-stream", ResourceType.host(STREAM_RESOURCE_ID),
                                   lambda store, rep: self.host_drop(rep))
                types.add_func("[method]input-stream.size",
                               lambda store, this: self.host_size(this.to_host(store).rep))
                types.add_func("[method]input-stream.read",
                               lambda store, this, n: _wit(self.host_read(this.to_host(store).rep, n)))
                types.add_func("[method]input-stream.start-chunking-read",
                               lambda store, this, chunk, cid: _wit(
                                   self.host_start_chunking(this.to_host(store).rep, chunk, cid)))
            with root.add_instance(BLOBS_IFACE) as blobs:
                blobs.add_func("open", self._open)
        self._store = store
        instance = self._guarded("instantiate", linker.instantiate, store, self.comp.component)
        for iface, fname in ((TRIGGER_IFACE, "invoke"), (HANDLER_IFACE, "handle-chunk"), (EVENTS_IFACE, "stream-ended")):
            idx = instance.get_export_index(store, iface)
            if idx is None:
                continue
            fidx = instance.get_export_index(store, fname, idx)
            func = instance.get_func(store, fidx) if fidx is not None else None
            if func is not None:
                self._funcs[fname] = func

    def _host_time_for(self, write: Any) -> Any:
        """Guest output is handled in the host: that time is not the guest's call_timeout."""
        def timed(data: bytes) -> None:
            t0 = self.clock.ticks
            try:
                write(data)
            finally:
                self._give_back_host_time(t0)
        return timed

    def _open(self, store: Any, container: str, name: str) -> Any:
        r = self.host_open(container, name)
        return r.to_wit() if isinstance(r, values.StreamErr) else ResourceHost.own(r, STREAM_RESOURCE_ID)

    def _call(self, name: str, *args: Any) -> Any:
        func = self._funcs[name]
        store = self._store
        assert store is not None
        result = func(store, *args)
        func.post_return(store)
        return result

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        return values.lift_invoke_result(self._call("invoke", args))

    def _handle_chunk(self, handle: int, correlation_id: int, current: int, total: int, data: bytes) -> bool:
        if self._prepared is None:
            assert self._store is not None
            # the list storage is kept up to the largest chunk this daemon allows
            self._prepared = PreparedHandleChunk(self._funcs["handle-chunk"], self._store, STREAM_RESOURCE_ID,
                                                 cache_limit=fastcall.cache_limit_for(self.max_chunk_size))
        prepared = self._prepared
        nxt = self._after.get(id(data))
        then = None
        if nxt is not None and prepared.can_prefill(nxt):
            def then() -> None:  # the call has its list: fill the other one meanwhile
                if self._filler is None:
                    self._filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fill-{self.label}")
                self._fill = self._filler.submit(prepared.prefill, nxt)
        try:
            return prepared(handle, correlation_id, current, total, data, then)
        finally:
            self._settle_fill()

    def _settle_fill(self) -> None:
        """Wait for the fill in flight: no list is touched by two threads."""
        fill, self._fill = self._fill, None
        if fill is not None:
            try:
                fill.result()
            except Exception as e:  # only a head start lost: that call fills its own list
                log.warning("list_prefill_failed", instance=self.label, error=repr(e))

    def _run_batch(self, calls: list[HandleCall], fresh: bool = True) -> BatchResult:
        """The base batch; each call lets a helper thread fill the next chunk's list."""
        chunks = [c[4] for c in calls if type(c[4]) is bytes]
        self._after = {id(a): b for a, b in zip(chunks, chunks[1:])}
        try:
            return super()._run_batch(calls, fresh)
        finally:
            self._after = {}
            self._settle_fill()

    @property
    def has_events(self) -> bool:
        return "stream-ended" in self._funcs

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> None:
        self._call("stream-ended", correlation_id, end.to_wit())
