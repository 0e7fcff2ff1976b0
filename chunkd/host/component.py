"""Loading a component file and checking it exports the `consumer` world."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wasmtime import Engine, Module, WasmtimeError
from wasmtime.component import Component, ComponentInstanceType

from chunkd.errors import ComponentError
from chunkd.host.wit import (
    CONSUMER,
    CONSUMER_WITH_EVENTS,
    CORE_EXPORTS_REQUIRED,
    CORE_HOST_FUNCS,
    EVENTS_IFACE,
    EXPORT_ENDED,
    HANDLER_IFACE,
    HOST_IMPORTS,
    TRIGGER_IFACE,
)


@dataclass(frozen=True)
class WorldInfo:
    world: str  # "consumer" or "consumer-with-events"
    has_events: bool
    imports: tuple[str, ...]


@dataclass
class LoadedComponent:
    name: str
    path: Path
    component: Component | None
    info: WorldInfo
    module: Module | None = None  # the core-module fast path (core.py)

    @property
    def kind(self) -> str:
        return "core" if self.module is not None else "component"


def _funcs_of(component: Component, engine: Engine, iface: str) -> set[str] | None:
    exports = component.type.exports(engine)
    ext = exports.get(iface)
    if ext is None:
        return None
    inst_ty = ext.ty
    if not isinstance(inst_ty, ComponentInstanceType):
        return set()
    return set(inst_ty.exports(engine))


def check_world(component: Component, engine: Engine, label: str) -> WorldInfo:
    """Raise ComponentError unless `component` exports the consumer world."""
    handler = _funcs_of(component, engine, HANDLER_IFACE)
    if handler is None or "handle-chunk" not in handler:
        raise ComponentError(f"{label}: does not export {HANDLER_IFACE} (handle-chunk): not a chunkd consumer")
    trigger = _funcs_of(component, engine, TRIGGER_IFACE)
    if trigger is None or "invoke" not in trigger:
        raise ComponentError(f"{label}: does not export {TRIGGER_IFACE} (invoke): not a chunkd consumer")
    events = _funcs_of(component, engine, EVENTS_IFACE)
    has_events = events is not None and "stream-ended" in events
    imports = tuple(sorted(component.type.imports(engine)))
    for imp in imports:
        if imp in HOST_IMPORTS or imp.startswith("wasi:"):
            continue
        raise ComponentError(f"{label}: imports {imp!r}, which chunkd does not provide")
    return WorldInfo(CONSUMER_WITH_EVENTS if has_events else CONSUMER, has_events, imports)


def check_core_world(module: Module, label: str) -> WorldInfo:
    """A core module implementing the consumer world at the canonical-ABI level."""
    exports = {e.name: e.type for e in module.exports}
    for name in CORE_EXPORTS_REQUIRED:
        if name not in exports:
            raise ComponentError(f"{label}: core module does not export {name!r}: not a chunkd consumer")
    imports = []
    for imp in module.imports:
        key = (imp.module, imp.name or "")
        if key not in CORE_HOST_FUNCS:
            raise ComponentError(f"{label}: core module imports {imp.module}/{imp.name}, which chunkd does not "
                                 f"provide to core guests (only the chunkd:streams functions and "
                                 f"wasi_snapshot_preview1/fd_write for stdout and stderr)")
        params, results = CORE_HOST_FUNCS[key]
        ty = imp.type
        got_p = [str(t) for t in getattr(ty, "params", [])]
        got_r = [str(t) for t in getattr(ty, "results", [])]
        if got_p != [str(t) for t in params] or got_r != [str(t) for t in results]:
            raise ComponentError(f"{label}: core import {imp.module}/{imp.name} has type ({', '.join(got_p)}) -> "
                                 f"({', '.join(got_r)}), expected ({', '.join(map(str, params))}) -> "
                                 f"({', '.join(map(str, results))})")
        imports.append(f"{imp.module}/{imp.name}")
    has_events = EXPORT_ENDED in exports
    return WorldInfo(CONSUMER_WITH_EVENTS if has_events else CONSUMER, has_events, tuple(sorted(imports)))


def _is_core(data: bytes | str) -> bool:
    if isinstance(data, str):
        code = "\n".join(line for line in data.splitlines() if not line.lstrip().startswith(";;"))
        return code.lstrip().startswith("(module")
    return data[:4] == b"\0asm" and data[4:8] == b"\x01\x00\x00\x00"


def load_component(engine: Engine, name: str, path: Path) -> LoadedComponent:
    label = f"component {name!r} ({path})"
    try:
        data: bytes | str = path.read_text() if path.suffix == ".wat" else path.read_bytes()
    except (OSError, UnicodeDecodeError) as e:
        raise ComponentError(f"{label}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    if _is_core(data):
        try:
            module = Module(engine, data)
        except WasmtimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
            raise ComponentError(f"{label}: not a valid wasm module: {first}") from None
        return LoadedComponent(name, path, None, check_core_world(module, label), module=module)
    try:
        comp = Component(engine, data)
    except WasmtimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
        raise ComponentError(f"{label}: not a valid wasm component: {first}") from None
    return LoadedComponent(name, path, comp, check_world(comp, engine, label))
