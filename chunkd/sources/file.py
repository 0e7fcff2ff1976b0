"""kind = "file": blobs under a root folder, read with aiofiles.

Names are confined to the root: absolute names, `..` and symlinks that
resolve outside the root are refused.
"""
from __future__ import annotations

import os
from concurrent.futures import Executor
from pathlib import Path

import aiofiles
import aiofiles.threadpool.binary

from chunkd.errors import BlobNotFound, NameRefused, SourceError


class FileBlob:
    def __init__(self, f: aiofiles.threadpool.binary.AsyncBufferedReader, size: int) -> None:
        self._f = f
        self._size = size

    @property
    def size(self) -> int | None:
        return self._size

    async def read_at(self, offset: int, length: int) -> bytes:
        if offset >= self._size or length <= 0:
            return b""
        try:
            await self._f.seek(offset)
            return await self._f.read(min(length, self._size - offset))
        except OSError as e:
            raise SourceError(f"read failed at offset {offset}: {e.strerror or e}", transient=True) from None

    async def close(self) -> None:
        await self._f.close()


class FileContainer:
    kind = "file"

    def __init__(self, name: str, root: Path, executor: Executor | None = None) -> None:
        self.name = name
        self.root = root.resolve()
        self._executor = executor

    def resolve(self, name: str) -> Path:
        """The real path of `name`, or NameRefused if it would leave the root."""
        if not name or "\x00" in name:
            raise NameRefused(f"invalid blob name {name!r}")
        if name.startswith("/") or os.path.isabs(name):
            raise NameRefused(f"absolute names are not allowed: {name!r}")
        if any(part == ".." for part in Path(name).parts):
            raise NameRefused(f"'..' is not allowed in blob names: {name!r}")
        real = (self.root / name).resolve()
        if real != self.root and self.root not in real.parents:
            raise NameRefused(f"{name!r} leads outside container {self.name!r}")
        return real

    async def open(self, name: str) -> FileBlob:
        path = self.resolve(name)
        try:
            f = await aiofiles.open(path, "rb", executor=self._executor)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {name!r} in container {self.name!r}") from None
        except IsADirectoryError:
            raise BlobNotFound(f"{name!r} in container {self.name!r} is a directory") from None
        except OSError as e:
            raise SourceError(f"cannot open {name!r}: {e.strerror or e}") from None
        try:
            st = os.fstat(f.fileno())
        except OSError as e:
            await f.close()
            raise SourceError(f"cannot stat {name!r}: {e.strerror or e}") from None
        if not os.path.stat.S_ISREG(st.st_mode):
            await f.close()
            raise BlobNotFound(f"{name!r} in container {self.name!r} is not a regular file")
        return FileBlob(f, st.st_size)

    async def close(self) -> None:
        pass
