"""A container that cannot serve (e.g. http without base_url): every open fails clearly."""
from __future__ import annotations

from chunkd.errors import SourceError
from chunkd.sources.base import Blob


class UnavailableContainer:
    def __init__(self, name: str, kind: str, why: str) -> None:
        self.name = name
        self.kind = kind
        self.why = why

    async def open(self, name: str) -> Blob:
        raise SourceError(f"container {self.name!r} ({self.kind}) {self.why}")

    async def close(self) -> None:
        pass
