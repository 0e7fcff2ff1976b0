"""The one interface every blob source implements."""
from __future__ import annotations

from typing import Protocol


class Blob(Protocol):
    """An opened blob: random access reads, a size when the source knows it."""

    @property
    def size(self) -> int | None: ...

    async def read_at(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; fewer only at the end; b"" past it.

        Raises SourceError (transient=True when a retry may help)."""
        ...

    async def close(self) -> None: ...


class Container(Protocol):
    """A named place blobs are opened from ([containers.NAME] in the TOML)."""

    name: str
    kind: str

    async def open(self, name: str) -> Blob:
        """Raises BlobNotFound, NameRefused or SourceError."""
        ...

    async def close(self) -> None: ...
