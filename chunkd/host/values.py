"""The one place that knows how chunkd's WIT values look in wasmtime-py.

wasmtime-py lifts/lowers variant, result and option values *untagged* when
their cases can be told apart by Python type and *tagged*
(`Variant(tag, payload)`) otherwise. For chunkd's WIT that means:

- stream-error         -> tagged:   Variant("closed"), Variant("failed", msg)
- result<T, stream-error> (open, read, start-chunking-read) -> untagged:
                          the ok payload itself, or the stream-error Variant
- option<u64> (size)   -> untagged: int or None
- result<string,string> (invoke) -> tagged: Variant("ok"|"err", text)
- stream-end           -> tagged:   Variant("completed") ...

tests/test_values.py checks these shapes against the real function types
of a built component, so a wasmtime-py change in the rule shows up there.

It also replaces wasmtime-py's byte-by-byte conversion of `list<u8>`
(one 32-byte C value per byte, filled in a Python loop: ~1 MB/s) with a
vectorized numpy fill of the same C values (property-tested to give the
exact same values as the stock conversion).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from wasmtime import _ffi as ffi
from wasmtime.component import ListType, Variant

# --- stream-error -----------------------------------------------------------


STREAM_ERROR_CASES = ("closed", "invalid-argument", "failed")


@dataclass(frozen=True)
class StreamErr:
    """A stream-error, independent of how it is lowered (component value or canonical ABI)."""

    kind: str  # one of STREAM_ERROR_CASES
    message: str = ""

    def to_wit(self) -> Variant:
        return Variant("closed") if self.kind == "closed" else Variant(self.kind, self.message)

    @property
    def discriminant(self) -> int:
        return STREAM_ERROR_CASES.index(self.kind)


def err_closed() -> StreamErr:
    return StreamErr("closed")


def err_invalid(msg: str) -> StreamErr:
    return StreamErr("invalid-argument", msg)


def err_failed(msg: str) -> StreamErr:
    return StreamErr("failed", msg)


# --- stream-end ---------------------------------------------------------------


STREAM_END_CASES = ("completed", "cancelled", "failed")


@dataclass(frozen=True)
class StreamEnd:
    kind: str  # one of STREAM_END_CASES
    reason: str = ""

    @property
    def discriminant(self) -> int:
        return STREAM_END_CASES.index(self.kind)

    def to_wit(self) -> Variant:
        if self.kind == "failed":
            return Variant("failed", self.reason)
        return Variant(self.kind)

    def __str__(self) -> str:
        return f"failed({self.reason})" if self.kind == "failed" else self.kind


COMPLETED = StreamEnd("completed")
CANCELLED = StreamEnd("cancelled")


def failed(reason: str) -> StreamEnd:
    return StreamEnd("failed", reason)


# --- invoke result ----------------------------------------------------------


def lift_invoke_result(value: Any) -> tuple[bool, str]:
    """result<string, string> as lifted by wasmtime-py -> (ok, text)."""
    if isinstance(value, Variant) and value.tag in ("ok", "err"):
        return value.tag == "ok", str(value.payload if value.payload is not None else "")
    raise TypeError(f"unexpected invoke result shape: {value!r}")


# --- list<u8> -----------------------------------------------------------------

_VAL_SIZE = ctypes.sizeof(ffi.wasmtime_component_val_t)
_PAYLOAD_OFFSET = ffi.wasmtime_component_val_t.of.offset
_KIND_U8 = ffi.WASMTIME_COMPONENT_U8.value
_KIND_LIST = ffi.WASMTIME_COMPONENT_LIST.value

_stock_to_c: Callable[..., None] = ListType.convert_to_c
_stock_from_c: Callable[..., Any] = ListType.convert_from_c


def _view(data_ptr: Any, n: int) -> np.ndarray:
    addr = ctypes.cast(data_ptr, ctypes.c_void_p).value
    buf = (ctypes.c_uint8 * (n * _VAL_SIZE)).from_address(addr)  # type: ignore[arg-type]
    return np.frombuffer(memoryview(buf), dtype=np.uint8).reshape(n, _VAL_SIZE)


def lower_bytes(data: bytes | bytearray | memoryview, ptr: Any) -> None:
    """Write `data` as a component list<u8> value into the C value at `ptr`."""
    n = len(data)
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, n)
    if n:
        view = _view(raw.data, n)
        view[:, 0] = _KIND_U8
        view[:, _PAYLOAD_OFFSET] = np.frombuffer(data, dtype=np.uint8)
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
    ptr.contents.of.list = raw


def lift_bytes(c: Any) -> bytes:
    """Read a C list<u8> value into bytes and free its storage."""
    assert c.kind == _KIND_LIST
    try:
        n = c.of.list.size
        if n == 0:
            return b""
        return _view(c.of.list.data, n)[:, _PAYLOAD_OFFSET].tobytes()
    finally:
        ffi.wasmtime_component_vallist_delete(ctypes.byref(c.of.list))


def _fast_to_c(self: ListType, store: Any, val: Any, ptr: Any) -> None:
    if self._is_bytes() and isinstance(val, (bytes, bytearray, memoryview)):
        lower_bytes(val, ptr)
    else:
        _stock_to_c(self, store, val, ptr)


def _fast_from_c(self: ListType, c: Any) -> Any:
    if self._is_bytes():
        return lift_bytes(c)
    return _stock_from_c(self, c)


_installed = False


def install_fast_bytes() -> None:
    """Route every list<u8> conversion in wasmtime-py through the vectorized path."""
    global _installed
    if _installed:
        return
    ListType.convert_to_c = _fast_to_c  # type: ignore[method-assign]
    ListType.convert_from_c = _fast_from_c  # type: ignore[method-assign]
    _installed = True


def stock_conversions() -> tuple[Callable[..., None], Callable[..., Any]]:
    """wasmtime-py's own list conversions, for tests and benchmarks."""
    return _stock_to_c, _stock_from_c


__all__ = [
    "COMPLETED", "CANCELLED", "StreamEnd", "StreamErr", "failed", "err_closed", "err_invalid", "err_failed",
    "lift_invoke_result", "lower_bytes", "lift_bytes", "install_fast_bytes", "stock_conversions",
]
