"""Which instance class runs a loaded guest.

Every kind of guest (a component, or a core module implementing the consumer
world at the canonical-ABI level) runs in the native host core.
"""
from __future__ import annotations

from chunkd.host.component import LoadedComponent
from chunkd.host.instance import InstanceBase
from chunkd.host.native_instance import NativeInstance

INSTANCE_KINDS: dict[str, type[InstanceBase]] = {
    "component": NativeInstance,
    "core": NativeInstance,
}


def instance_class(comp: LoadedComponent) -> type[InstanceBase]:
    return INSTANCE_KINDS[comp.kind]
