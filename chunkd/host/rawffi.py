"""Private handles on a few wasmtime C functions for the per-chunk hot path.

wasmtime-py's bindings wrap each C function in a Python function whose ctypes
argtypes convert every argument on every call, and return pointer objects.
The hot path (a core guest's cabi_realloc, handle-chunk and its post-return,
the epoch deadline, the memory size) calls the same C functions through
handles of its own (`dll[name]` makes a new function object, so wasmtime-py's
are untouched) with prepared arguments and plain-integer results.
"""
from __future__ import annotations

import ctypes
from typing import Any

from wasmtime import _ffi as ffi

_dll: Any = ffi.dll


def _raw(name: str, restype: Any) -> Any:
    fn = _dll[name]
    fn.restype = restype
    fn.argtypes = None  # arguments are prepared by the caller
    return fn


func_call = _raw("wasmtime_func_call", ctypes.c_void_p)  # -> wasmtime_error_t* or None
memory_data_size = _raw("wasmtime_memory_data_size", ctypes.c_size_t)
memory_data = _raw("wasmtime_memory_data", ctypes.c_void_p)
set_epoch_deadline = _raw("wasmtime_context_set_epoch_deadline", None)


def error_from(ptr: int) -> Any:
    """A wasmtime_error_t* returned by func_call, as wasmtime-py's WasmtimeError."""
    from wasmtime import WasmtimeError
    return WasmtimeError._from_ptr(ctypes.cast(ptr, ctypes.POINTER(ffi.wasmtime_error_t)))
