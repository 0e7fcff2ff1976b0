"""kind = "file": blobs under a root folder, read with aiofiles.

Names are confined to the root: absolute names, `..` and symlinks that
resolve outside the root are refused, and so is a name whose last part starts
with `.chunkd-out.` (an output's temp file, chunkd/sinks/file.py).
"""
from __future__ import annotations

import asyncio
import os
import stat
from concurrent.futures import Executor
from pathlib import Path

import aiofiles
import aiofiles.threadpool.binary

from chunkd.errors import BlobNotFound, NameRefused, SourceError
from chunkd.sources.names import OUTPUT_TEMP_PREFIX


class FileBlob:
    """A regular file (size known, positional reads), or a named pipe (size unknown,
    read in order through aiofiles)."""

    def __init__(self, fd: int, size: int | None, executor: Executor | None = None) -> None:
        self._fd = fd
        self._size = size
        self._pos = 0
        self._executor = executor
        self._pipe: aiofiles.threadpool.binary.AsyncFileIO | None = None
        self._closed = False

    @property
    def size(self) -> int | None:
        return self._size

    @property
    def direct_fd(self) -> int | None:
        """The descriptor a core guest's instance thread may preadv from (regular files)."""
        return self._fd if self._size is not None and not self._closed else None

    async def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or (self._size is not None and offset >= self._size):
            return b""
        try:
            if self._size is not None:
                # one positional read, one thread hop (seek + read would be two)
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, os.pread, self._fd, min(length, self._size - offset), offset)
            if offset != self._pos:
                raise SourceError(f"a pipe can only be read in order (at {self._pos}, asked for {offset})")
            if self._pipe is None:
                self._pipe = await aiofiles.open(self._fd, "rb", buffering=0, closefd=False, executor=self._executor)
            parts: list[bytes] = []
            got = 0
            while got < length:
                part = await self._pipe.read(length - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
            self._pos += got
            return b"".join(parts)
        except OSError as e:
            raise SourceError(f"read failed at offset {offset}: {e.strerror or e}", transient=True) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pipe is not None:
            await self._pipe.close()
        os.close(self._fd)


class FileContainer:
    kind = "file"

    def __init__(self, name: str, root: Path, executor: Executor | None = None) -> None:
        self.name = name
        self.root = root.resolve()
        self._root_s = str(self.root)
        self._root_prefix = self._root_s.rstrip(os.sep) + os.sep
        self._executor = executor

    @property
    def executor(self) -> Executor | None:
        return self._executor

    def resolve(self, name: str) -> Path:
        """The real path of `name`, or NameRefused if it would leave the root.

        Walks `name`'s components below the (already resolved) root with one lstat each,
        and falls back to a full realpath when one is a symlink, so a plain name costs
        one or two system calls rather than one per component of the whole path."""
        if not name or "\x00" in name:
            raise NameRefused(f"invalid blob name {name!r}")
        if name.startswith("/") or os.path.isabs(name):
            raise NameRefused(f"absolute names are not allowed: {name!r}")
        parts = [p for p in name.split("/") if p and p != "."]
        if ".." in parts:
            raise NameRefused(f"'..' is not allowed in blob names: {name!r}")
        if parts and parts[-1].startswith(OUTPUT_TEMP_PREFIX):
            raise NameRefused(f"{name!r}: names starting with {OUTPUT_TEMP_PREFIX!r} are chunkd's temp files")
        cur = self._root_s
        for part in parts:
            cur = os.path.join(cur, part)
            try:
                if stat.S_ISLNK(os.lstat(cur).st_mode):
                    cur = os.path.realpath(os.path.join(self._root_s, *parts))
                    break
            except OSError:  # missing (or unreadable): what the open says
                cur = os.path.realpath(os.path.join(self._root_s, *parts))
                break
        if cur != self._root_s and not cur.startswith(self._root_prefix):
            raise NameRefused(f"{name!r} leads outside container {self.name!r}")
        return Path(cur)

    def open_now(self, name: str, *, pipes: bool = True) -> FileBlob | None:
        """Resolve, stat and open `name` synchronously: run on an executor thread by
        `open`, or directly on an instance thread (no hop through the event loop) with
        pipes=False, when a pipe (whose open waits for a writer) answers None."""
        path = self.resolve(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {name!r} in container {self.name!r}") from None
        except OSError as e:
            raise SourceError(f"cannot stat {name!r}: {e.strerror or e}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise BlobNotFound(f"{name!r} in container {self.name!r} is not a regular file or a pipe")
        if stat.S_ISFIFO(st.st_mode) and not pipes:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {name!r} in container {self.name!r}") from None
        except OSError as e:
            raise SourceError(f"cannot open {name!r}: {e.strerror or e}") from None
        st = os.fstat(fd)  # the file we actually opened
        if stat.S_ISFIFO(st.st_mode):
            return FileBlob(fd, None, self._executor)  # streamed in order, total-chunks 0
        return FileBlob(fd, st.st_size, self._executor)

    async def open(self, name: str) -> FileBlob:
        blob = await asyncio.get_running_loop().run_in_executor(self._executor, self.open_now, name)
        assert blob is not None
        return blob

    async def close(self) -> None:
        pass
