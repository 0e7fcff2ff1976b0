"""Outputs to a `file` container: a temp file beside the target, fsync, rename.

The temp file is `.chunkd-out.<job>.<attempt>.<random>.tmp` in the target's own
folder (so the rename never crosses a filesystem); a cluster node's is
`.chunkd-out.<job>.<attempt>.<node>.<random>.tmp`, and its `sweep` removes only
those (other nodes may be writing into the same folder). No read or write may name a
file whose last part starts with `.chunkd-out.` (chunkd/sources/file.py), so a
temp name never collides with a blob name. `commit` is `rename` (overwrite =
true) or `link` then `unlink` (overwrite = false: the link fails with EEXIST
when the name exists), then an fsync of the folder. Every blocking call runs
on the container's executor, never on the event loop.

The job id is also kept in the file's `user.chunkd-job` extended attribute
where the filesystem has them, so `recover` can tell this job's commit from a
file someone else put there; where it has none, a target that exists once the
temp is gone counts as committed. `create` of a name that already carries this
job's id raises SinkConflict(by_this_job=True) whatever `overwrite` says: an
earlier attempt committed it (the caller treats it as committed, not written twice).
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import stat
from concurrent.futures import Executor
from typing import Callable, TypeVar

from chunkd.errors import NameRefused
from chunkd.sinks.base import ABORTED, COMMITTED, SinkConflict, SinkError
from chunkd.sources.file import FileContainer
from chunkd.sources.names import OUTPUT_TEMP_PREFIX

T = TypeVar("T")

XATTR = "user.chunkd-job"
TEMP_RE = re.compile(r"^" + re.escape(OUTPUT_TEMP_PREFIX) + r".*\.tmp$")
MAX_SWEEP_ENTRIES = 200_000  # the start-up sweep looks at no more folder entries than this
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# temp files open in this process (absolute paths): `sweep` leaves them alone
_IN_USE: set[str] = set()


def _tag(job_id: str) -> str:
    return _UNSAFE.sub("_", job_id)[:64] or "job"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _job_of(path: str) -> str | None:
    """The `user.chunkd-job` attribute of `path`, or None (none, or no xattrs here)."""
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False).decode("utf-8", "replace")
    except (OSError, AttributeError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _place(temp: str, target: str, overwrite: bool) -> None:
    """Make the (fsynced) temp file visible as `target`; SinkConflict-free: raises FileExistsError."""
    if overwrite:
        os.rename(temp, target)
    else:
        os.link(temp, target)  # EEXIST when the name exists: never replaced
        os.unlink(temp)
    _fsync_dir(os.path.dirname(target))


def _version(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


class FileSink:
    def __init__(self, c: "FileSinkContainer", name: str, target: str, temp: str, fd: int, *,
                 job_id: str, attempt: int, overwrite: bool) -> None:
        self.container = c.name
        self.name = name
        self.target = target
        self.temp = temp
        self._c = c
        self._fd: int | None = fd
        self._job_id = job_id
        self._attempt = attempt
        self._overwrite = overwrite
        self._written = 0
        self._state = "writing"  # writing, sealed, committed, aborted
        self._lock = asyncio.Lock()

    @property
    def buffered(self) -> int:
        return 0  # every write is in the kernel before it returns

    @property
    def written(self) -> int:
        return self._written

    @property
    def state(self) -> str:
        return self._state

    def _err(self, what: str, e: OSError) -> SinkError:
        return SinkError(f"{self.container}/{self.name}: {what} failed: {e.strerror or e}")

    async def write(self, data: bytes) -> None:
        async with self._lock:
            if self._state != "writing" or self._fd is None:
                raise SinkError(f"{self.container}/{self.name}: write after the output was {self._state}")
            if not data:
                return
            try:
                await self._c.run(_write_all, self._fd, data)
            except OSError as e:
                raise self._err("write", e) from None
            self._written += len(data)

    async def seal(self) -> None:
        async with self._lock:
            if self._state != "writing":
                if self._state == "sealed":
                    return
                raise SinkError(f"{self.container}/{self.name}: seal after the output was {self._state}")
            fd, self._fd = self._fd, None
            assert fd is not None
            try:
                await self._c.run(os.fsync, fd)
            except OSError as e:
                raise self._err("fsync", e) from None
            finally:
                os.close(fd)
            self._state = "sealed"

    async def commit(self) -> str | None:
        if self._state == "writing":
            await self.seal()
        async with self._lock:
            if self._state == "committed":
                return await self._c.run(_version, self.target)
            if self._state != "sealed":
                raise SinkError(f"{self.container}/{self.name}: commit after the output was {self._state}")
            try:
                await self._c.run(_place, self.temp, self.target, self._overwrite)
            except FileExistsError:
                conflict = SinkConflict(f"{self.container}/{self.name}: exists already and the container has "
                                        f"overwrite = false", by_this_job=_job_of(self.target) == self._job_id)
                await self._remove_temp()
                raise conflict from None
            except OSError as e:
                raise self._err("commit (rename)", e) from None
            self._state = "committed"
            _IN_USE.discard(self.temp)
            try:
                return await self._c.run(_version, self.target)
            except OSError:
                return None

    async def _remove_temp(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            await self._c.run(os.unlink, self.temp)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._err("removing the temp file", e) from None
        finally:
            self._state = "aborted"
            _IN_USE.discard(self.temp)

    async def abort(self) -> None:
        async with self._lock:
            if self._state in ("committed", "aborted"):
                return
            await self._remove_temp()

    def token(self) -> dict[str, str]:
        return {"kind": "file", "container": self.container, "name": self.name,
                "temp": os.path.relpath(self.temp, self._c.root), "job": self._job_id,
                "attempt": str(self._attempt), "overwrite": "1" if self._overwrite else "0"}


class FileSinkContainer:
    kind = "file"

    def __init__(self, name: str, source: FileContainer, *, node: str | None = None) -> None:
        self.name = name
        self.source = source
        self.node = node  # cluster mode: this node's name, in its temp names; sweep removes only those
        self._mine = TEMP_RE if node is None else re.compile(
            r"^" + re.escape(OUTPUT_TEMP_PREFIX) + r"[^.]+\.\d+\." + re.escape(node) + r"\.[0-9a-f]+\.tmp$")
        self.root = str(source.root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._executor: Executor | None = source.executor

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _target(self, name: str) -> str:
        try:
            path = str(self.source.resolve(name))
        except NameRefused as e:
            raise SinkError(f"{self.name}/{name}: the name escapes the container or is not allowed: {e}") from None
        if path == self.root:
            raise SinkError(f"{self.name}/{name}: the name escapes the container or is not allowed: "
                            f"it names the container's root")
        return path

    def _under_root(self, path: str) -> bool:
        return path.startswith(self._prefix)

    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> FileSink:
        target = self._target(name)

        def make() -> tuple[str, int]:
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            if os.path.realpath(parent) != parent or not (parent == self.root or self._under_root(parent)):
                raise SinkError(f"{self.name}/{name}: the name escapes the container (its folder moved)")
            try:
                st = os.stat(target)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise SinkError(f"{self.name}/{name}: is a folder")
            mine = st is not None and _job_of(target) == job_id
            if mine:  # whatever overwrite says: an earlier attempt of this job committed it
                raise SinkConflict(f"{self.name}/{name}: committed already by an earlier attempt of this job",
                                   by_this_job=True)
            if st is not None and not overwrite:
                raise SinkConflict(f"{self.name}/{name}: exists already and the container has overwrite = false")
            node = f"{self.node}." if self.node else ""
            temp = os.path.join(parent, f"{OUTPUT_TEMP_PREFIX}{_tag(job_id)}.{attempt}.{node}"
                                        f"{secrets.token_hex(6)}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                os.setxattr(fd, XATTR, job_id.encode())
            except (OSError, AttributeError):
                pass  # no xattrs on this filesystem: recover goes by existence
            return temp, fd

        try:
            temp, fd = await self.run(make)
        except SinkError:
            raise
        except OSError as e:
            raise SinkError(f"{self.name}/{name}: cannot create the output: {e.strerror or e}") from None
        _IN_USE.add(temp)
        return FileSink(self, name, target, temp, fd, job_id=job_id, attempt=attempt, overwrite=overwrite)

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        if token.get("kind") != "file" or "temp" not in token or "name" not in token:
            raise SinkError(f"{self.name}: not a file output token: {sorted(token)}")
        name = token["name"]
        target = self._target(name)
        temp = os.path.normpath(os.path.join(self.root, token["temp"]))
        if not self._under_root(temp) or not TEMP_RE.match(os.path.basename(temp)):
            raise SinkError(f"{self.name}/{name}: the token's temp file {token['temp']!r} is not chunkd's")
        overwrite = token.get("overwrite", "1") != "0"

        def lstat(p: str) -> os.stat_result | None:
            try:
                return os.lstat(p)
            except FileNotFoundError:
                return None

        def settle() -> str:
            ts, gs = lstat(temp), lstat(target)
            if ts is not None and gs is not None and (ts.st_ino, ts.st_dev) == (gs.st_ino, gs.st_dev):
                os.unlink(temp)  # died between link and unlink: the commit was made
                _fsync_dir(os.path.dirname(target))
                return COMMITTED
            if ts is None:  # no data in flight: committed, if the target is (or may be) this job's
                owner = _job_of(target) if gs is not None else None
                return COMMITTED if gs is not None and owner in (None, job_id) else ABORTED
            if committing and os.path.dirname(temp) == os.path.dirname(target):
                try:
                    _place(temp, target, overwrite)
                    return COMMITTED
                except FileExistsError:
                    pass  # overwrite = false and the name exists: undo ours
            os.unlink(temp)
            _fsync_dir(os.path.dirname(temp))
            return COMMITTED if gs is not None and _job_of(target) == job_id else ABORTED

        if temp in _IN_USE:
            raise SinkError(f"{self.name}/{name}: the output is still being written by this process")
        try:
            return await self.run(settle)
        except FileNotFoundError:
            return ABORTED  # its folder is gone too
        except OSError as e:
            raise SinkError(f"{self.name}/{name}: recover failed: {e.strerror or e}") from None

    async def sweep(self) -> int:
        def walk() -> int:
            removed = seen = 0
            for folder, dirs, files in os.walk(self.root, followlinks=False):
                seen += len(dirs) + len(files)
                for f in files:
                    if self._mine.match(f):
                        path = os.path.join(folder, f)
                        if path in _IN_USE:
                            continue
                        try:
                            os.unlink(path)
                            removed += 1
                        except OSError:
                            pass
                if seen >= MAX_SWEEP_ENTRIES:
                    break
            return removed

        return await self.run(walk)
