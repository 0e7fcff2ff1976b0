"""The one interface every output sink implements (docs/outputs.md, "Sinks").

A sink is one output blob being written: `write` appends, `seal` ends the
writes, `commit` makes it visible under its name, `abort` removes every
partial trace. A `WritableContainer` makes sinks (`create`), finishes or undoes
what a dead process left behind (`recover`, from the sink's `token`), and
sweeps stale temp files at start (`sweep`).
"""
from __future__ import annotations

from typing import Protocol

from chunkd.errors import ChunkdError

COMMITTED = "committed"
ABORTED = "aborted"


class SinkError(ChunkdError):
    """A sink failed (I/O, S3 error, a refused name): the message says container/name and why."""


class SinkConflict(SinkError):
    """overwrite = false and the name exists (or was created meanwhile).

    `by_this_job` is True when the blob found is known to be an earlier commit of the
    same job (s3: its `chunkd-job` metadata; file: its `user.chunkd-job` xattr)."""

    def __init__(self, message: str, *, by_this_job: bool = False) -> None:
        super().__init__(message)
        self.by_this_job = by_this_job


class Sink(Protocol):
    container: str
    name: str

    @property
    def buffered(self) -> int:
        """Bytes this sink holds in memory right now (for the buffer budget)."""
        ...

    @property
    def written(self) -> int:
        """Bytes accepted so far."""
        ...

    async def write(self, data: bytes) -> None:
        """Append; returns when the bytes are handed on (file: written to the temp file;
        s3: in the part buffer, every full part uploaded)."""
        ...

    async def seal(self) -> None:
        """No more writes. file: flush + fsync the temp file; s3: upload the last part
        (or keep an output smaller than one part for a single PutObject at commit)."""
        ...

    async def commit(self) -> str | None:
        """Make it visible under its name; returns its version: the ETag (s3) or
        "size:mtime_ns" (file). Raises SinkConflict when overwrite = false and the name exists."""
        ...

    async def abort(self) -> None:
        """Remove everything partial; idempotent; a no-op after a commit."""
        ...

    def token(self) -> dict[str, str]:
        """What the job store persists so a restart can finish or undo this output."""
        ...


class WritableContainer(Protocol):
    name: str
    kind: str

    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> Sink:
        """A new output; the name is confined exactly as for reads. Raises SinkError
        (a name that escapes says so) or SinkConflict (overwrite = false and it exists)."""
        ...

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        """After a crash: COMMITTED if the output of `token` is visible as this job's commit
        (rolled forward first when `committing` and its data is durable), else undo it
        and ABORTED."""
        ...

    async def sweep(self) -> int:
        """At start, after every recorded token was recovered: remove stale temp files."""
        ...
