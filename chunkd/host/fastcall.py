"""handle-chunk through wasmtime's C API with prepared arguments (the component path).

wasmtime-py's Func.__call__ rebuilds the function type and converts every
argument in Python on each call, and the C API carries list<u8> as one
32-byte value per byte. Here the argument array is built once per instance;
per call only the three u64 values, the borrowed handle and the payload bytes
of the list change. The list storage is kept between calls (the call only
reads its arguments; tests/test_fastcall.py checks that) with the kind byte
of every element set once, so a chunk costs one strided numpy write of its
bytes. The kept storage grows to the largest chunk seen, up to `cache_limit`
bytes of C values (the runtime passes 32 x max_chunk_size, so every allowed
chunk size is served from it); larger lists are built per call instead.

The strided write costs about 7% of a 64 KiB call (it touches 32 bytes of list
per payload byte). So a second kept list, up to `overlap_limit` bytes of C
values, lets the instance fill the next chunk of a batch on a helper thread
(`prefill`) while wasmtime runs the current call with the other list; the
call then takes the prefilled list as it is (`then` is run after that swap,
just before the C call, so the helper never writes a list a call reads).
"""
from __future__ import annotations

import ctypes
import sys
from typing import Any, Callable

import numpy as np
from wasmtime import Store, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Func
from wasmtime.component._enter import maybe_raise_last_exn

from chunkd.host import values

VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
PAYLOAD = ffi.wasmtime_component_val_t.of.offset
CACHE_LIMIT_BYTES = 64 * 1024 * 1024  # default kept C value storage: chunks up to 2 MiB
OVERLAP_LIMIT_BYTES = 32 * 1024 * 1024  # the second list (overlapped fills): chunks up to 1 MiB


def cache_limit_for(max_chunk_size: int) -> int:
    """Kept list storage, in bytes of C values, for a daemon whose chunks reach max_chunk_size."""
    return max(CACHE_LIMIT_BYTES, VAL_SIZE * max_chunk_size)


class _KeptList:
    """A C value list kept between calls: every element a u8, only payloads rewritten."""

    def __init__(self) -> None:
        self.raw: Any = None
        self.cap = 0
        self.col: np.ndarray | None = None

    def ensure(self, n: int) -> None:
        if n <= self.cap:
            return
        self.close()
        raw = ffi.wasmtime_component_vallist_t()
        ffi.wasmtime_component_vallist_new_uninit(raw, n)
        view = values._view(raw.data, n)
        view[:, 0] = ffi.WASMTIME_COMPONENT_U8.value  # every element a u8, set once
        self.raw, self.cap, self.col = raw, n, view[:, PAYLOAD]

    def fill(self, data: bytes) -> None:
        n = len(data)
        if n:
            self.ensure(n)
            assert self.col is not None
            self.col[:n] = np.frombuffer(data, dtype=np.uint8)

    def close(self) -> None:
        if self.raw is not None:
            ffi.wasmtime_component_vallist_delete(ctypes.byref(self.raw))
            self.raw, self.cap, self.col = None, 0, None


class PreparedHandleChunk:
    def __init__(self, func: Func, store: Store, resource_type_id: int,
                 cache_limit: int = CACHE_LIMIT_BYTES, overlap_limit: int = OVERLAP_LIMIT_BYTES) -> None:
        self.cache_limit = cache_limit
        self.overlap_limit = min(overlap_limit, cache_limit)
        self.func = func
        self.store = store
        self.type_id = resource_type_id
        self.params = (ffi.wasmtime_component_val_t * 5)()
        for i in (1, 2, 3):
            self.params[i].kind = ffi.WASMTIME_COMPONENT_U64
        self.result = ffi.wasmtime_component_val_t()
        self._list = _KeptList()  # the list the next call uses
        self._spare = _KeptList()  # the list `prefill` writes
        self._prefilled: object = None  # the data the spare list holds, if any

    def _borrow(self, handle: int) -> Any:
        """A borrow of host resource `handle` as a resource-any value, through the C API
        directly (what ResourceHost.borrow(...).to_any(store) does, without its Python
        objects: ~35 us a call on a slow machine). Owned by the value (val_delete)."""
        host = ffi.wasmtime_component_resource_host_new(False, handle, self.type_id)
        try:
            out = ctypes.POINTER(ffi.wasmtime_component_resource_any_t)()
            err = ffi.wasmtime_component_resource_host_to_any(self.store._context(), host, ctypes.byref(out))
        finally:
            ffi.wasmtime_component_resource_host_delete(host)
        if err:
            raise WasmtimeError._from_ptr(err)
        return out

    def can_prefill(self, data: bytes) -> bool:
        return 0 < len(data) and len(data) * VAL_SIZE <= self.overlap_limit

    def prefill(self, data: bytes) -> None:
        """Fill the spare list with `data` (on a helper thread, while a call runs with the
        other list); the call given this very object then uses it unchanged."""
        self._prefilled = None
        self._spare.fill(data)
        self._prefilled = data

    def __call__(self, handle: int, correlation_id: int, current: int, total: int, data: bytes,
                 then: Callable[[], None] | None = None) -> bool:
        p = self.params
        store = self.store
        p[0].kind = ffi.WASMTIME_COMPONENT_RESOURCE
        p[0].of.resource = self._borrow(handle)
        p[1].of.u64 = correlation_id
        p[2].of.u64 = current
        p[3].of.u64 = total
        n = len(data)
        cached = n * VAL_SIZE <= self.cache_limit
        if cached:
            if n and self._prefilled is data:
                self._list, self._spare = self._spare, self._list
            else:
                self._list.fill(data)
            self._prefilled = None
            p[4].kind = ffi.WASMTIME_COMPONENT_LIST
            p[4].of.list.size = n
            p[4].of.list.data = self._list.raw.data if n else None
        else:
            values.lower_bytes(data, ctypes.pointer(p[4]))
        try:
            if then is not None:
                then()
            err = ffi.wasmtime_component_func_call(ctypes.byref(self.func._func), store._context(), p, 5,
                                                   ctypes.byref(self.result), 1)
        finally:
            ffi.wasmtime_component_val_delete(ctypes.byref(p[0]))
            if not cached:
                ffi.wasmtime_component_val_delete(ctypes.byref(p[4]))
        if err:
            error = WasmtimeError._from_ptr(err)
            maybe_raise_last_exn()
            raise error
        more = bool(self.result.of.boolean)
        err = ffi.wasmtime_component_func_post_return(ctypes.byref(self.func._func), store._context())
        if err:
            raise WasmtimeError._from_ptr(err)
        return more

    def close(self) -> None:
        """Free both lists (no prefill may be running: the instance waits for it first)."""
        self._prefilled = None
        self._list.close()
        self._spare.close()


def tune_allocator() -> bool:
    """glibc: keep big blocks in the heap instead of mmap/munmap per call.

    Lists built per call are 32 bytes per payload byte; with the default
    thresholds every such call maps and unmaps them and page-faults its way
    through (PERF-BASELINE: ~20,000 faults per 1 MiB call). Same effect as
    MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_ARENA_MAX=1, set at start."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok
        # worker threads would otherwise get arenas of at most 64 MiB, from which a list
        # of 32 bytes per payload byte cannot come: glibc then mmaps it on every call
        return bool(libc.mallopt(m_arena_max, 1) == 1) and ok
    except (OSError, AttributeError):
        return False
