"""The one place that knows value shapes: checked against real component types,
and the vectorized list<u8> conversion against wasmtime-py's stock one."""
from __future__ import annotations

import ctypes
import os
import random
from pathlib import Path
from typing import Any

import pytest
from wasmtime import Config, Engine
from wasmtime import _ffi as ffi
from wasmtime.component import U8, Component, ListType, ResultType, Variant, VariantType

from chunkd.host import values
from chunkd.host.wit import BLOBS_IFACE, EVENTS_IFACE, TRIGGER_IFACE, TYPES_IFACE

VAL = ctypes.sizeof(ffi.wasmtime_component_val_t)
OFF = ffi.wasmtime_component_val_t.of.offset


@pytest.fixture(scope="module")
def probe_types(guests: dict[str, Path]) -> tuple[Engine, Component]:
    cfg = Config()
    cfg.wasm_component_model = True
    engine = Engine(cfg)
    return engine, Component(engine, guests["probe"].read_bytes())


def _func(engine: Engine, comp: Component, where: str, iface: str, name: str) -> Any:
    items: Any = comp.type.imports(engine) if where == "import" else comp.type.exports(engine)
    return items[iface].ty.exports(engine)[name].ty


def test_shapes_match_the_real_types(probe_types: tuple[Engine, Component]) -> None:
    engine, comp = probe_types
    read = _func(engine, comp, "import", TYPES_IFACE, "[method]input-stream.read")
    assert isinstance(read.result, ResultType) and not read.result._tagged()  # bytes | Variant
    start = _func(engine, comp, "import", TYPES_IFACE, "[method]input-stream.start-chunking-read")
    assert not start.result._tagged()  # None | Variant
    open_ = _func(engine, comp, "import", BLOBS_IFACE, "open")
    assert not open_.result._tagged()  # ResourceHost | Variant
    err_ty = open_.result.err
    assert isinstance(err_ty, VariantType) and err_ty._tagged()
    assert [name for name, _ in err_ty.cases] == ["closed", "invalid-argument", "failed"]
    invoke = _func(engine, comp, "export", TRIGGER_IFACE, "invoke")
    assert invoke.result._tagged()
    ended = _func(engine, comp, "export", EVENTS_IFACE, "stream-ended")
    end_ty = ended.params[1][1]
    assert end_ty._tagged() and [n for n, _ in end_ty.cases] == ["completed", "cancelled", "failed"]
    # our constructors produce values these types accept
    store_less: Any = None
    for e in (values.err_closed(), values.err_invalid("x"), values.err_failed("y")):
        v = e.to_wit()
        raw = ffi.wasmtime_component_val_t()
        err_ty.convert_to_c(store_less, v, ctypes.pointer(raw))
        assert err_ty.convert_from_c(raw) == v
        assert [n for n, _ in err_ty.cases][e.discriminant] == e.kind
    for end in (values.COMPLETED, values.CANCELLED, values.failed("why")):
        raw = ffi.wasmtime_component_val_t()
        end_ty.convert_to_c(store_less, end.to_wit(), ctypes.pointer(raw))
        assert end_ty.convert_from_c(raw) == end.to_wit()
        assert [n for n, _ in end_ty.cases][end.discriminant] == end.kind
    assert values.lift_invoke_result(Variant("ok", "fine")) == (True, "fine")
    assert values.lift_invoke_result(Variant("err", "bad")) == (False, "bad")


def _u8_list_type(probe_types: tuple[Engine, Component]) -> ListType:
    engine, comp = probe_types
    handle = _func(engine, comp, "export", "chunkd:streams/chunked-stream-handler@0.1.0", "handle-chunk")
    ty = handle.params[4][1]
    assert isinstance(ty, ListType) and isinstance(ty.element, U8)
    return ty


def _elements(raw: ffi.wasmtime_component_val_t) -> list[tuple[int, int]]:
    n = raw.of.list.size
    base = ctypes.cast(raw.of.list.data, ctypes.c_void_p).value or 0
    return [(ctypes.c_uint8.from_address(base + i * VAL).value, ctypes.c_uint8.from_address(base + i * VAL + OFF).value)
            for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 2, 31, 32, 33, 255, 4096, 65537])
def test_fast_bytes_equal_stock(probe_types: tuple[Engine, Component], n: int) -> None:
    ty = _u8_list_type(probe_types)
    stock_to, stock_from = values.stock_conversions()
    data = os.urandom(n)
    a = ffi.wasmtime_component_val_t()
    b = ffi.wasmtime_component_val_t()
    stock_to(ty, None, data, ctypes.pointer(a))
    values.lower_bytes(data, ctypes.pointer(b))
    assert a.kind == b.kind == ffi.WASMTIME_COMPONENT_LIST.value
    assert a.of.list.size == b.of.list.size == n
    if n <= 4096:
        assert _elements(a) == _elements(b)
    # each side lifts what the other lowered
    assert stock_from(ty, b) == data
    assert values.lift_bytes(a) == data


def test_fast_bytes_random_property(probe_types: tuple[Engine, Component]) -> None:
    ty = _u8_list_type(probe_types)
    stock_to, _ = values.stock_conversions()
    rng = random.Random(1234)
    for _ in range(50):
        n = rng.randrange(0, 3000)
        data = bytes(rng.randrange(256) for _ in range(n))
        a = ffi.wasmtime_component_val_t()
        b = ffi.wasmtime_component_val_t()
        stock_to(ty, None, data, ctypes.pointer(a))
        values.lower_bytes(memoryview(data), ctypes.pointer(b))
        assert _elements(a) == _elements(b)
        assert values.lift_bytes(a) == values.lift_bytes(b) == data
