"""The reference row: wasmtime-py's C-API ceiling for a component call with a list<u8>.

The component path before the native host core went through wasmtime's C API
(wasmtime-py), which carries a list<u8> as one 32-byte value per byte. Its
ceiling is the component call alone with every argument prebuilt once and
reused (the list filled once, with a vectorized numpy write): no read, no
scheduling. It needs wasmtime-py and numpy (`pip install -e ".[bench]"`);
without them bench/run quotes the last measured figure instead.
"""
from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from typing import Any

OUTPUT_RESOURCE_ID = 0x0C4D
STREAM_RESOURCE_ID = 1
# measured by the previous bench/run on this machine kind (C-API ceiling, 42-49 MB/s,
# issue #16): quoted when wasmtime-py is not installed
QUOTED_MB_PER_S = 49.0


def available() -> bool:
    try:
        import numpy  # noqa: F401
        import wasmtime  # noqa: F401
    except ImportError:
        return False
    return True


def _lower_bytes(ffi: Any, np: Any, data: bytes, ptr: Any) -> None:
    n = len(data)
    size = ctypes.sizeof(ffi.wasmtime_component_val_t)
    payload = ffi.wasmtime_component_val_t.of.offset
    raw = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(raw, n)
    addr = ctypes.cast(raw.data, ctypes.c_void_p).value
    buf = (ctypes.c_uint8 * (n * size)).from_address(addr)  # type: ignore[arg-type]
    view = np.frombuffer(memoryview(buf), dtype=np.uint8).reshape(n, size)
    view[:, 0] = ffi.WASMTIME_COMPONENT_U8.value
    view[:, payload] = np.frombuffer(data, dtype=np.uint8)
    ptr.contents.kind = ffi.WASMTIME_COMPONENT_LIST
    ptr.contents.of.list = raw


def c_api_ceiling(component_path: Path, chunk: int, total_bytes: int) -> float:
    """MB/s of wasmtime_component_func_call alone (touch guest's handle-chunk)."""
    import numpy as np
    from wasmtime import Config, Engine, Store, WasiConfig
    from wasmtime import _ffi as ffi
    from wasmtime.component import Component, Linker, ResourceHost, ResourceType

    cfg = Config()
    cfg.wasm_component_model = True
    engine = Engine(cfg)
    comp = Component(engine, component_path.read_bytes())
    store = Store(engine)
    store.set_wasi(WasiConfig())
    linker = Linker(engine)
    linker.add_wasip2()
    with linker.root() as root:
        with root.add_instance("chunkd:streams/types@0.1.0") as types:
            types.add_resource("input-stream", ResourceType.host(STREAM_RESOURCE_ID), lambda store, rep: None)
            types.add_func("[method]input-stream.size", lambda store, this: None)
            types.add_func("[method]input-stream.read", lambda store, this, n: b"")
            types.add_func("[method]input-stream.start-chunking-read", lambda store, this, c, cid: None)
            # the outputs (issue 25): linked so a guest built against today's WIT links; never called
            types.add_resource("output-stream", ResourceType.host(OUTPUT_RESOURCE_ID), lambda store, rep: None)
            types.add_func("[method]output-stream.write", lambda store, this, data: None)
            types.add_func("[method]output-stream.finish", lambda store, this: None)
        with root.add_instance("chunkd:streams/blobs@0.1.0") as blobs:
            blobs.add_func("open", lambda store, c, n: ResourceHost.own(1, STREAM_RESOURCE_ID))
            blobs.add_func("create", lambda store, c, n: ResourceHost.own(1, OUTPUT_RESOURCE_ID))
    inst = linker.instantiate(store, comp)
    idx = inst.get_export_index(store, "chunkd:streams/chunked-stream-handler@0.1.0")
    fidx = inst.get_export_index(store, "handle-chunk", idx)
    assert idx is not None and fidx is not None
    func = inst.get_func(store, fidx)
    assert func is not None
    p = (ffi.wasmtime_component_val_t * 5)()
    p[0].kind = ffi.WASMTIME_COMPONENT_RESOURCE
    p[0].of.resource = ResourceHost.borrow(1, STREAM_RESOURCE_ID).to_any(store)._consume()
    for i in (1, 2, 3):
        p[i].kind = ffi.WASMTIME_COMPONENT_U64
        p[i].of.u64 = 1
    _lower_bytes(ffi, np, os.urandom(chunk), ctypes.pointer(p[4]))
    res = ffi.wasmtime_component_val_t()
    n = max(1, total_bytes // chunk)
    try:
        t = time.perf_counter()
        for _ in range(n):
            err = ffi.wasmtime_component_func_call(ctypes.byref(func._func), store._context(), p, 5,
                                                   ctypes.byref(res), 1)
            assert not err, "ceiling call failed"
            ffi.wasmtime_component_func_post_return(ctypes.byref(func._func), store._context())
        return n * chunk / (time.perf_counter() - t) / 1e6
    finally:
        for i in (0, 4):
            ffi.wasmtime_component_val_delete(ctypes.byref(p[i]))
