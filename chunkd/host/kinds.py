"""Which instance class runs a loaded guest: a table keyed by the guest's kind."""
from __future__ import annotations

from chunkd.host.component import LoadedComponent
from chunkd.host.component_instance import ComponentInstance
from chunkd.host.core import CoreInstance
from chunkd.host.instance import InstanceBase

INSTANCE_KINDS: dict[str, type[InstanceBase]] = {
    "component": ComponentInstance,  # wasmtime's component API, list<u8> through the prepared C-API call
    "core": CoreInstance,  # a core module: chunkd performs the canonical ABI itself
}


def instance_class(comp: LoadedComponent) -> type[InstanceBase]:
    return INSTANCE_KINDS[comp.kind]
