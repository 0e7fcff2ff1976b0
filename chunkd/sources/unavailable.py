"""Container kinds configured but not built yet (s3, http): every open fails clearly."""
from __future__ import annotations

from chunkd.errors import SourceError
from chunkd.sources.base import Blob


class UnavailableContainer:
    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind

    async def open(self, name: str) -> Blob:
        raise SourceError(f"container kind {self.kind!r} ({self.name!r}) is not supported by this chunkd build yet")

    async def close(self) -> None:
        pass
