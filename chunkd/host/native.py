"""The direct core-path batch in C (chunkd/native/direct_batch.c), when it is built.

`scripts/build-native` (run by scripts/setup) compiles it into
build/native/libchunkd_direct.so with the system C compiler. When present it runs
a whole batch of direct file chunks (runs of a stream's consecutive chunks) for a core guest — cabi_realloc, pread into
guest memory, handle-chunk, post-return, the epoch deadline re-armed per call —
in one ctypes call, with the GIL released throughout and no Python per chunk.
Absent (no compiler, an installed wheel, or CHUNKD_NATIVE=0), chunkd uses the
Python loop in host/instance.py, which has the same semantics.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

from wasmtime import _ffi as ffi

LIB_NAME = "libchunkd_direct.so"
SOURCE = Path(__file__).resolve().parent.parent / "native" / "direct_batch.c"
DEFAULT_LIB = Path(__file__).resolve().parents[2] / "build" / "native" / LIB_NAME

# run statuses (direct_batch.c)
NOT_REACHED, ANSWERED, SKIPPED, SHORT_READ, READ_ERROR, BAD_POINTER, TRAPPED, HALTED = range(8)


class Api(ctypes.Structure):
    _fields_ = [("func_call", ctypes.c_void_p), ("memory_data", ctypes.c_void_p),
                ("memory_size", ctypes.c_void_p), ("set_deadline", ctypes.c_void_p),
                ("func_call_unchecked", ctypes.c_void_p)]


class Run(ctypes.Structure):
    """run_t: one DirectRun of a batch, then what happened to it."""
    _fields_ = [("handle", ctypes.c_int32), ("fd", ctypes.c_int32), ("cid", ctypes.c_int64),
                ("first", ctypes.c_int64), ("total", ctypes.c_int64), ("offset", ctypes.c_int64),
                ("chunk_size", ctypes.c_int64), ("count", ctypes.c_int64), ("last_length", ctypes.c_int64),
                ("hint_offset", ctypes.c_int64), ("hint_length", ctypes.c_int64), ("status", ctypes.c_int32), ("answer", ctypes.c_int32),
                ("made", ctypes.c_int64), ("detail", ctypes.c_int64), ("at", ctypes.c_int64),
                ("seconds", ctypes.c_double)]


class DirectBatch:
    """The loaded library and wasmtime's own C functions, bound once."""

    def __init__(self, lib: Any) -> None:
        self.run = lib.chunkd_run_direct
        self.run.restype = ctypes.c_int64
        self.run.argtypes = ([ctypes.c_void_p] * 7 + [ctypes.c_int64, ctypes.c_uint64] + [ctypes.c_void_p] * 5
                             + [ctypes.c_int32])

        def addr(name: str) -> int:
            return int(ctypes.cast(ffi.dll[name], ctypes.c_void_p).value or 0)

        self.api = Api(addr("wasmtime_func_call"), addr("wasmtime_memory_data"),
                       addr("wasmtime_memory_data_size"), addr("wasmtime_context_set_epoch_deadline"),
                       addr("wasmtime_func_call_unchecked"))
        self.api_ref = ctypes.addressof(self.api)
        self.path = str(getattr(lib, "_name", LIB_NAME))


def _load() -> DirectBatch | None:
    if os.environ.get("CHUNKD_NATIVE", "1") == "0":
        return None
    path = os.environ.get("CHUNKD_NATIVE_LIB") or str(DEFAULT_LIB)
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    try:
        for fn in ("chunkd_val_size", "chunkd_val_union_offset", "chunkd_run_size", "chunkd_raw_size",
                   "chunkd_run_direct"):
            getattr(lib, fn).restype = ctypes.c_size_t
    except AttributeError:
        return None  # a library from another version of direct_batch.c
    if (lib.chunkd_val_size() != ctypes.sizeof(ffi.wasmtime_val_t)
            or lib.chunkd_val_union_offset() != ffi.wasmtime_val_t.of.offset
            or lib.chunkd_run_size() != ctypes.sizeof(Run)
            or lib.chunkd_raw_size() != ctypes.sizeof(ffi.wasmtime_val_raw_t)):
        return None  # built against another layout: the Python loop is always right
    return DirectBatch(lib)


NATIVE: DirectBatch | None = _load()
