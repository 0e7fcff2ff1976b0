"""Loading a guest file and checking it exports one of chunkd's worlds.

The native host core does both (chunkd._native.Engine.load): a component
must export trigger (invoke) and either chunked-stream-handler (handle-chunk;
worlds consumer, and consumer-with-events when it also exports
chunked-stream-events) or stream-consumer (an async consume; world
consumer-streams), with exactly the WIT types of wit/streams.wit, and may
import only chunkd:streams and wasi:*; a core module must export the
handle-chunk world's functions at the canonical-ABI level and import only
what chunkd gives core guests. A failure is a ComponentError naming the
component, its file and the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chunkd import _native
from chunkd.errors import ComponentError

# the world whose async `consume` reads each started read as a stream<u8> (WASI 0.3 style)
CONSUMER_STREAMS = "consumer-streams"


@dataclass(frozen=True)
class WorldInfo:
    world: str  # "consumer", "consumer-with-events" or "consumer-streams" (CONSUMER_STREAMS)
    has_events: bool
    imports: tuple[str, ...]


@dataclass
class LoadedComponent:
    name: str
    path: Path
    guest: _native.Guest
    info: WorldInfo

    @property
    def kind(self) -> str:
        """"component", or "core" for a core module (chunkd performs the canonical ABI)."""
        return self.guest.kind


def load_component(engine: _native.Engine, name: str, path: Path) -> LoadedComponent:
    label = f"component {name!r} ({path})"
    try:
        guest = engine.load(label, path)
    except _native.LoadError as e:
        raise ComponentError(str(e)) from None
    return LoadedComponent(name, path, guest, WorldInfo(guest.world, guest.has_events, tuple(guest.imports)))
