"""The small error hierarchy; every message reads well in a log line."""
from __future__ import annotations


class ChunkdError(Exception):
    """Base of every error chunkd raises on purpose."""


class ConfigError(ChunkdError):
    """A config file is unreadable, malformed, or has a bad key or value."""

    def __init__(self, file: str, key: str | None, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class ComponentError(ChunkdError):
    """A component file is missing, is not valid wasm, or has the wrong world."""


class SourceError(ChunkdError):
    """A blob source failed. `transient` errors are worth a retry."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BlobNotFound(SourceError):
    pass


class NameRefused(SourceError):
    """A blob name that would escape its container (.., absolute, symlink)."""


class GuestTrap(ChunkdError):
    """A call into a guest trapped, ran past call_timeout, or the instance broke.

    The instance is discarded; every stream bound to it ends failed."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class UnknownComponent(ChunkdError):
    """A job names a component the config does not have."""


class QueueFull(ChunkdError):
    """limits.max_queued_jobs jobs are already waiting."""


class QuotaExceeded(QueueFull):
    """A tenant is at one of its quotas (docs/tenants.md); the message names the quota."""


class NotAccepting(ChunkdError):
    """The daemon is draining: no new jobs."""


class ClusterUnavailable(ChunkdError):
    """NATS cannot be reached: the job was not accepted."""



class OutputRefused(ChunkdError):
    """A guest's create, write or finish of an output was refused (chunkd/outputs.py).

    `kind` is the WIT stream-error case it maps to: "closed" (no such output, or it is
    finished or the job ended), "invalid" (a container that is not writable or not
    granted, a name that escapes) or "failed" (the sink failed, a limit was passed)."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.kind = kind
