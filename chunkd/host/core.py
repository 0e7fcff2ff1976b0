"""The core-module fast path: chunkd performs the canonical ABI itself.

A core wasm module that implements the `consumer` world at the canonical-ABI
level (the module wit-bindgen produces before componentization) is run
directly: chunk bytes go into guest memory with one memmove into a buffer
from the guest's `cabi_realloc`, and results are read straight from linear
memory. Same host logic, limits and delivery rules as components (the
InstanceBase does both); only how values cross differs. No WASI is linked:
a core guest that imports anything else is refused by `chunkd check`.

Layouts (CanonicalABI.md; all little-endian, retptr results):
  result<own<input-stream>, stream-error>  u8 disc @0 | ok: i32 handle @4 |
                                          err: u8 case @4, string (i32 ptr @8, i32 len @12)
  result<list<u8>, stream-error>          ok: i32 ptr @4, i32 len @8 | err as above
  result<_, stream-error>                 disc @0 | err as above
  option<u64>                             u8 disc @0 | u64 @8
  invoke -> result<string, string>        returned pointer: u8 disc @0, i32 ptr @4, i32 len @8
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Any, Callable

from wasmtime import Func, FuncType, Linker, Memory, Store, Trap, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime._func import maybe_raise_last_exn

from chunkd.errors import GuestTrap, SourceError
from chunkd.host import native, rawffi, values
from chunkd.host.instance import (Answer, BatchResult, DirectRead, DirectRun, HandleCall, InstanceBase, _LineBuffer,
                                  read_exactly_into)
from chunkd.host.wit import (
    BLOBS_IFACE,
    CORE_HOST_FUNCS,
    EXPORT_ENDED,
    EXPORT_HANDLE,
    EXPORT_INVOKE,
    TYPES_IFACE,
    WASI_P1,
)

U64 = (1 << 64) - 1
# handle-chunk's `borrow<input-stream>`: the stream's handle with this bit set, as a component's
# borrow is an index of its own. A guest drops it before returning (componentized, the
# canonical ABI requires that); that drop ends only the borrow, never the guest's own handle.
BORROW_BIT = 1 << 30


class AbiViolation(WasmtimeError):
    """A core guest broke the canonical ABI (bad pointer, bad UTF-8, ...): its call traps."""

    def __init__(self, message: str) -> None:  # WasmtimeError's own __init__ wants a C pointer
        self._message = message
        self._ptr = None
        Exception.__init__(self, message)

    def __str__(self) -> str:
        return self._message


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


_KINDS = {"i32": ffi.WASMTIME_I32.value, "i64": ffi.WASMTIME_I64.value}


class RawFunc:
    """A core export called through wasmtime_func_call with a prepared argument array
    (i32/i64 only): about 2 us a call instead of ~30 us through Func.__call__, which
    rebuilds the function type and converts every value on each call."""

    def __init__(self, func: Func, store: Store, name: str) -> None:
        ty = func.type(store)
        kinds = [str(t) for t in ty.params]
        results = [str(t) for t in ty.results]
        if any(k not in _KINDS for k in kinds) or len(results) > 1 or any(r not in _KINDS for r in results):
            raise AbiViolation(f"core export {name} has an unexpected type ({kinds}) -> ({results})")
        self._func = func
        self._fref = ctypes.byref(func._func)
        self._ctx = store._context()
        self._n = len(kinds)
        self._params = (ffi.wasmtime_val_t * max(1, self._n))()
        # one setter per parameter, bound once: params[i].of is a union view into the array
        self._slots = [(self._params[i].of, "i64" if k == "i64" else "i32") for i, k in enumerate(kinds)]
        for i, k in enumerate(kinds):
            self._params[i].kind = _KINDS[k]  # type: ignore[assignment]
        self._nres = len(results)
        self._results = (ffi.wasmtime_val_t * max(1, self._nres))()
        self._res = self._results[0].of
        self._res64 = bool(results) and results[0] == "i64"
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._trap_ref = ctypes.byref(self._trap)
        self._c_n = ctypes.c_size_t(self._n)
        self._c_nres = ctypes.c_size_t(self._nres)

    def __call__(self, *args: int) -> int:
        for (of, field), a in zip(self._slots, args):
            setattr(of, field, a)
        err = rawffi.func_call(self._ctx, self._fref, self._params, self._c_n, self._results, self._c_nres,
                               self._trap_ref)
        if self._trap:
            trap = Trap._from_ptr(self._trap)
            self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
            self._trap_ref = ctypes.byref(self._trap)
            maybe_raise_last_exn()
            raise trap
        if err:
            error = rawffi.error_from(err)
            maybe_raise_last_exn()
            raise error
        if not self._nres:
            return 0
        return int(self._res.i64 if self._res64 else self._res.i32)


class CoreInstance(InstanceBase):
    kind = "core"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._mem: Memory | None = None
        self._exports: dict[str, RawFunc] = {}
        self._handle: RawFunc | None = None
        self._handle_post: RawFunc | None = None
        self._memview: memoryview | None = None
        self._mem_args: tuple[Any, Any] | None = None
        self._realloc: RawFunc | None = None
        self._unchecked: bool | None = None  # the batch's guest calls may skip type checks
        self._out = {1: _LineBuffer(lambda line: self.services.guest_output(self, "stdout", line)),
                     2: _LineBuffer(lambda line: self.services.guest_output(self, "stderr", line))}

    def _drop_store(self) -> None:
        self._memview = None
        self._mem_args = None
        self._handle = self._handle_post = self._realloc = None
        self._unchecked = None
        self._exports.clear()
        self._mem = None
        self._store = None

    def _instantiate(self) -> None:
        engine = self.clock.engine
        store = Store(engine)
        store.set_limits(memory_size=self.memory_bytes)
        store.set_epoch_deadline(self.call_timeout_ticks)
        linker = Linker(engine)
        impls: dict[tuple[str, str], Callable[..., Any]] = {
            (BLOBS_IFACE, "open"): self._open,
            (TYPES_IFACE, "[method]input-stream.size"): self._size,
            (TYPES_IFACE, "[method]input-stream.read"): self._read,
            (TYPES_IFACE, "[method]input-stream.start-chunking-read"): self._start,
            (TYPES_IFACE, "[resource-drop]input-stream"): self.host_drop,
            (WASI_P1, "fd_write"): self._fd_write,
        }
        for (mod, name), (params, results) in CORE_HOST_FUNCS.items():
            linker.define_func(mod, name, FuncType(params, results), impls[(mod, name)])
        self._store = store
        module = self.comp.module
        assert module is not None
        instance = self._guarded("instantiate", linker.instantiate, store, module)
        exports = instance.exports(store)
        mem = exports.get("memory")
        if not isinstance(mem, Memory):
            raise AbiViolation(f"{self.label}: core guest exports no memory")
        self._mem = mem
        for name in ("cabi_realloc", EXPORT_INVOKE, EXPORT_HANDLE, EXPORT_ENDED, f"cabi_post_{EXPORT_INVOKE}",
                     f"cabi_post_{EXPORT_HANDLE}", "_initialize"):
            f = exports.get(name)
            if isinstance(f, Func):
                self._exports[name] = RawFunc(f, store, name)
        if "_initialize" in self._exports:  # a reactor's constructors
            self._guarded("_initialize", self._exports["_initialize"])

    @property
    def _st(self) -> Store:
        assert self._store is not None
        return self._store

    # --- linear memory ---------------------------------------------------------------

    def _span(self, ptr: int, n: int) -> int:
        """The host address of guest bytes [ptr, ptr+n), bounds-checked (raw C calls: the
        host functions a guest calls per blob check several pointers each)."""
        assert self._mem is not None
        if self._mem_args is None:
            self._mem_args = (self._st._context(), ctypes.byref(self._mem._memory))
        ctx, mref = self._mem_args
        if ptr < 0 or n < 0 or ptr + n > rawffi.memory_data_size(ctx, mref):
            raise AbiViolation(f"guest pointer {ptr}+{n} is outside its memory")
        return int(rawffi.memory_data(ctx, mref) or 0) + ptr

    def _get(self, ptr: int, n: int) -> bytes:
        return ctypes.string_at(self._span(ptr, n), n) if n else b""

    def _put(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            ctypes.memmove(self._span(ptr, len(data)), data if isinstance(data, bytes) else bytes(data), len(data))

    def _pack(self, ptr: int, fmt: str, *vals: Any) -> None:
        self._put(ptr, struct.pack("<" + fmt, *vals))

    def _alloc(self, n: int, align: int = 1) -> int:
        realloc = self._exports.get("cabi_realloc")
        if realloc is None:
            raise AbiViolation("core guest exports no cabi_realloc")
        ptr = realloc(0, 0, align, n) & 0xFFFFFFFF
        self._span(ptr, n)
        return ptr

    def _str(self, ptr: int, n: int) -> str:
        try:
            return self._get(ptr, n).decode("utf-8")
        except UnicodeDecodeError:
            raise AbiViolation("guest passed a string that is not UTF-8") from None

    def _lower_str(self, s: str) -> tuple[int, int]:
        b = s.encode("utf-8")
        p = self._alloc(len(b), 1)
        self._put(p, b)
        return p, len(b)

    def _write_error(self, ret: int, e: values.StreamErr) -> None:
        if e.kind == "closed":
            self._pack(ret, "BxxxB", 1, e.discriminant)
        else:
            p, n = self._lower_str(e.message)
            self._pack(ret, "BxxxBxxxII", 1, e.discriminant, p, n)

    # --- host imports (instance thread) ------------------------------------------------

    def _open(self, cptr: int, clen: int, nptr: int, nlen: int, ret: int) -> None:
        self._span(ret, 16)
        r = self.host_open(self._str(cptr, clen), self._str(nptr, nlen))
        if isinstance(r, values.StreamErr):
            self._write_error(ret, r)
        else:
            self._pack(ret, "BxxxI", 0, r)

    def _fd_write(self, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
        """wasi_snapshot_preview1.fd_write for fds 1 and 2 (guest_output lines); EBADF otherwise."""
        out = self._out.get(fd)
        if out is None:
            return 8  # errno badf: no files, no sockets
        if iovs_len < 0 or iovs_len > 1024:
            return 28  # errno inval
        t0 = self.clock.ticks
        try:
            total = 0
            for ptr, n in struct.iter_unpack("<II", self._get(iovs, 8 * iovs_len)):
                out.write(self._get(ptr, n))
                total += n
            self._pack(nwritten, "I", total & 0xFFFFFFFF)
        finally:
            self._give_back_host_time(t0)
        return 0

    def _drop(self, handle: int) -> None:
        if not handle & BORROW_BIT:
            self.host_drop(handle)

    def _size(self, handle: int, ret: int) -> None:
        size = self.host_size(handle & ~BORROW_BIT)
        if size is None:
            self._pack(ret, "B", 0)
        else:
            self._pack(ret, "BxxxxxxxQ", 1, size)

    def _read(self, handle: int, length: int, ret: int) -> None:
        self._span(ret, 16)
        r = self.host_read(handle & ~BORROW_BIT, length & U64)
        if isinstance(r, values.StreamErr):
            self._write_error(ret, r)
            return
        p = self._alloc(len(r), 1)
        self._put(p, r)
        self._pack(ret, "BxxxII", 0, p, len(r))

    def _start(self, handle: int, chunk: int, cid: int, ret: int) -> None:
        self._span(ret, 16)
        r = self.host_start_chunking(handle & ~BORROW_BIT, chunk & U64, cid & U64)
        if r is None:
            self._pack(ret, "B", 0)
        else:
            self._write_error(ret, r)

    # --- exports ---------------------------------------------------------------------------

    def _export(self, name: str) -> RawFunc:
        f = self._exports.get(name)
        if f is None:
            raise AbiViolation(f"core guest does not export {name}")
        return f

    def _invoke(self, args: list[str]) -> tuple[bool, str]:
        arr = self._alloc(8 * len(args), 4)
        for i, a in enumerate(args):
            p, n = self._lower_str(a)
            self._pack(arr + 8 * i, "II", p, n)
        retp = self._export(EXPORT_INVOKE)(arr, len(args)) & 0xFFFFFFFF
        disc, sp, sn = struct.unpack("<BxxxII", self._get(retp, 12))
        if disc not in (0, 1):
            raise AbiViolation(f"invoke returned result discriminant {disc}")
        text = self._str(sp, sn)
        post = self._exports.get(f"cabi_post_{EXPORT_INVOKE}")
        if post is not None:
            post(retp)
        return disc == 0, text

    def _handle_chunk(self, handle: int, correlation_id: int, current: int, total: int, data: bytes) -> bool:
        p = self._alloc(len(data), 1)
        self._put(p, data)
        return self._call_handle(handle, correlation_id, current, total, p, len(data))

    direct_reads = True

    def _handle_direct(self, handle: int, correlation_id: int, current: int, total: int, r: DirectRead) -> bool:
        """The file chunk goes from the page cache straight into a buffer from the guest's
        own allocator (preadv into a bounds-checked view of its memory): one copy, done
        by the kernel, with the GIL released."""
        n = r.length
        if self._realloc is None:
            self._realloc = self._export("cabi_realloc")
        p = self._realloc(0, 0, 1, n) & 0xFFFFFFFF  # bounds-checked by _view
        if n:
            t0 = self.clock.ticks
            got = read_exactly_into(r.fd, self._view(p, n), r.offset)
            if got != n:
                raise SourceError(f"blob changed size: got {got} bytes at offset {r.offset}, expected {n}")
            self._give_back_host_time(t0)  # a slow read is host time, not the guest's
        return self._call_handle(handle, correlation_id, current, total, p, n)

    def _run_batch(self, calls: list[HandleCall], fresh: bool = True) -> BatchResult:
        lib = native.NATIVE
        if lib is None or not calls or any(type(c[4]) is not DirectRun for c in calls):
            return super()._run_batch(calls, fresh)
        return self._run_batch_native(lib, calls, fresh)

    def _run_batch_native(self, lib: native.DirectBatch, calls: list[HandleCall],
                          fresh: bool = True) -> BatchResult:
        """The same batch as InstanceBase._run_batch, run by direct_batch.c: one ctypes call
        (GIL released) for every chunk of every run of the batch, and Python work per run,
        not per chunk. Answers and errors mean the same."""
        n = len(calls)
        arr = (native.Run * n)()
        if fresh:
            self._stopped_handles.clear()
        gone = self._stopped_handles
        for c, (handle, cid, current, total, data) in zip(arr, calls):
            assert type(data) is DirectRun
            c.handle, c.fd, c.cid, c.first, c.total = handle | BORROW_BIT, data.fd, _s64(cid), _s64(current), _s64(total)
            c.offset, c.chunk_size, c.count = data.offset, data.chunk_size, data.count
            c.last_length, c.hint_offset, c.hint_length = data.last_length, data.hint_offset, data.hint_length
            if handle in gone:  # a batch before this one stopped the stream
                c.status = native.SKIPPED
        if self._realloc is None:
            self._realloc = self._export("cabi_realloc")
        if self._handle is None:
            self._handle = self._export(EXPORT_HANDLE)
            self._handle_post = self._exports.get(f"cabi_post_{EXPORT_HANDLE}")
        assert self._mem is not None
        if self._unchecked is None:
            self._unchecked = self._exports_typed_exactly()
        unchecked = 1 if self._unchecked else 0
        trap = ctypes.c_void_p()
        err = ctypes.c_void_p()
        reached = [0]

        def run() -> None:
            ctx = ctypes.cast(self._st._context(), ctypes.c_void_p)
            post = self._handle_post
            reached[0] = lib.run(lib.api_ref, ctx, ctypes.addressof(self._realloc._func._func),  # type: ignore[union-attr]
                                 ctypes.addressof(self._handle._func._func),  # type: ignore[union-attr]
                                 ctypes.addressof(post._func._func) if post is not None else None,
                                 ctypes.addressof(self._mem._memory), arr, n,  # type: ignore[union-attr]
                                 self.call_timeout_ticks, ctypes.addressof(self._halt),
                                 ctypes.addressof(self.clock._ticks), ctypes.addressof(self._call_clock),
                                 ctypes.addressof(trap), ctypes.addressof(err), unchecked)
            if trap.value:
                t = Trap._from_ptr(ctypes.cast(trap.value, ctypes.POINTER(ffi.wasm_trap_t)))
                maybe_raise_last_exn()
                raise t
            if err.value:
                e = rawffi.error_from(err.value)
                maybe_raise_last_exn()
                raise e
            last = arr[reached[0] - 1] if reached[0] else None
            if last is not None and last.status == native.BAD_POINTER:
                raise AbiViolation(f"guest pointer {last.detail}+{last.at} is outside its memory")

        stop: GuestTrap | None = None
        try:
            self._guarded("handle-chunk", run)
        except GuestTrap as e:
            stop = e
        answers: list[Answer] = []
        made: list[int] = []
        seconds: list[float] = []
        for c, call in zip(arr[:reached[0]], calls):
            status = c.status
            if status == native.ANSWERED:
                answers.append(bool(c.answer))
                if not c.answer:
                    gone.add(call[0])
            elif status == native.SHORT_READ:
                answers.append(SourceError(f"blob changed size: got {c.detail} bytes at offset {c.at}, "
                                           f"expected {c.chunk_size if c.made < c.count - 1 else c.last_length}"))
                gone.add(call[0])
            elif status == native.READ_ERROR:
                answers.append(SourceError(f"read failed at offset {c.at}: {os.strerror(c.detail)}"))
                gone.add(call[0])
            else:  # SKIPPED, HALTED, or the TRAPPED / BAD_POINTER run that stopped the batch
                answers.append(None)
            made.append(c.made)
            seconds.append(c.seconds)
        if stop is None and reached[0] < n:
            stop = GuestTrap(f"handle-chunk stopped the batch in {self.label}")  # not reached: defensive
        return answers, made, seconds, stop

    def _exports_typed_exactly(self) -> bool:
        """The batch calls cabi_realloc, handle-chunk and its post-return through
        wasmtime_func_call_unchecked (no per-call type check or value conversion) only
        when their types are exactly the canonical ABI's; otherwise through the checked
        call, which reports a mismatch as an error."""
        want = {"cabi_realloc": (["i32"] * 4, ["i32"]),
                EXPORT_HANDLE: (["i32", "i64", "i64", "i64", "i32", "i32"], ["i32"]),
                f"cabi_post_{EXPORT_HANDLE}": (["i32"], [])}
        for name, (params, results) in want.items():
            f = self._exports.get(name)
            if f is None:
                if name.startswith("cabi_post_"):
                    continue  # optional
                return False
            ty = f._func.type(self._st)
            if [str(t) for t in ty.params] != params or [str(t) for t in ty.results] != results:
                return False
        return True

    def _call_handle(self, handle: int, correlation_id: int, current: int, total: int, p: int, n: int) -> bool:
        if self._handle is None:
            self._handle = self._export(EXPORT_HANDLE)
            self._handle_post = self._exports.get(f"cabi_post_{EXPORT_HANDLE}")
        r = self._handle(handle | BORROW_BIT, _s64(correlation_id), _s64(current), _s64(total), p, n)
        if self._handle_post is not None:
            self._handle_post(r)
        return bool(r)

    def _view(self, ptr: int, n: int) -> memoryview:
        """A writable view of guest bytes [ptr, ptr+n), bounds-checked; the whole-memory
        view is rebuilt only when the memory grew or moved."""
        assert self._mem is not None
        if self._mem_args is None:
            self._mem_args = (self._st._context(), ctypes.byref(self._mem._memory))
        ctx, mref = self._mem_args
        size = rawffi.memory_data_size(ctx, mref)
        if ptr < 0 or n < 0 or ptr + n > size:
            raise AbiViolation(f"guest pointer {ptr}+{n} is outside its memory")
        if self._memview is None or len(self._memview) != size:  # a memory only moves when it grows
            base = rawffi.memory_data(ctx, mref) or 0
            self._memview = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")
        return self._memview[ptr:ptr + n]

    @property
    def has_events(self) -> bool:
        return EXPORT_ENDED in self._exports

    def _stream_ended(self, correlation_id: int, end: values.StreamEnd) -> None:
        p, n = self._lower_str(end.reason) if end.kind == "failed" else (0, 0)
        self._export(EXPORT_ENDED)(_s64(correlation_id), end.discriminant, p, n)
