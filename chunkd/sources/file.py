"""kind = "file": blobs under a root folder, read with aiofiles.

Names are confined to the root: absolute names, `..` and symlinks that
resolve outside the root are refused.
"""
from __future__ import annotations

import asyncio
import os
import stat
from concurrent.futures import Executor
from pathlib import Path

import aiofiles
import aiofiles.os
import aiofiles.threadpool.binary

from chunkd.errors import BlobNotFound, NameRefused, SourceError


class FileBlob:
    """A regular file (size known), or a named pipe (size unknown, read in order)."""

    def __init__(self, f: aiofiles.threadpool.binary.AsyncBufferedReader, size: int | None,
                 executor: Executor | None = None) -> None:
        self._f = f
        self._size = size
        self._pos = 0
        self._executor = executor

    @property
    def size(self) -> int | None:
        return self._size

    @property
    def direct_fd(self) -> int | None:
        """The descriptor a core guest's instance thread may preadv from (regular files)."""
        return self._f.fileno() if self._size is not None else None

    async def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or (self._size is not None and offset >= self._size):
            return b""
        try:
            if self._size is not None:
                # one positional read, one thread hop (seek + read would be two)
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, os.pread, self._f.fileno(), min(length, self._size - offset), offset)
            if offset != self._pos:
                raise SourceError(f"a pipe can only be read in order (at {self._pos}, asked for {offset})")
            parts: list[bytes] = []
            got = 0
            while got < length:
                part = await self._f.read(length - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            self._pos += got
            return b"".join(parts)
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
            st = await aiofiles.os.stat(path, executor=self._executor)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {name!r} in container {self.name!r}") from None
        except OSError as e:
            raise SourceError(f"cannot stat {name!r}: {e.strerror or e}") from None
        if stat.S_ISREG(st.st_mode):
            size: int | None = st.st_size
        elif stat.S_ISFIFO(st.st_mode):
            size = None  # streamed in order, total-chunks 0
        else:
            raise BlobNotFound(f"{name!r} in container {self.name!r} is not a regular file or a pipe")
        try:
            f = await aiofiles.open(path, "rb", executor=self._executor)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {name!r} in container {self.name!r}") from None
        except OSError as e:
            raise SourceError(f"cannot open {name!r}: {e.strerror or e}") from None
        if size is not None:
            size = os.fstat(f.fileno()).st_size  # the file we actually opened
        return FileBlob(f, size, self._executor)

    async def close(self) -> None:
        pass
