"""chunkd's WIT values as the host keeps them, independent of how they cross.

`stream-error` (StreamErr) and `stream-end` (StreamEnd) of wit/streams.wit.
The native host core (chunkd._native) lifts and lowers them: Python hands it
a stream-error as `(discriminant, message)` and a stream-end as
`(discriminant, reason)`.
"""
from __future__ import annotations

from dataclasses import dataclass

# --- stream-error -----------------------------------------------------------

STREAM_ERROR_CASES = ("closed", "invalid-argument", "failed")


@dataclass(frozen=True)
class StreamErr:
    """A stream-error."""

    kind: str  # one of STREAM_ERROR_CASES
    message: str = ""

    @property
    def discriminant(self) -> int:
        return STREAM_ERROR_CASES.index(self.kind)

    def to_native(self) -> tuple[int, str]:
        return self.discriminant, self.message


def err_closed() -> StreamErr:
    return StreamErr("closed")


def err_invalid(msg: str) -> StreamErr:
    return StreamErr("invalid-argument", msg)


def err_failed(msg: str) -> StreamErr:
    return StreamErr("failed", msg)


# --- stream-end ---------------------------------------------------------------

STREAM_END_CASES = ("completed", "cancelled", "failed")


@dataclass(frozen=True)
class StreamEnd:
    kind: str  # one of STREAM_END_CASES
    reason: str = ""

    @property
    def discriminant(self) -> int:
        return STREAM_END_CASES.index(self.kind)

    def __str__(self) -> str:
        return f"failed({self.reason})" if self.kind == "failed" else self.kind


COMPLETED = StreamEnd("completed")
CANCELLED = StreamEnd("cancelled")


def failed(reason: str) -> StreamEnd:
    return StreamEnd("failed", reason)


__all__ = ["COMPLETED", "CANCELLED", "StreamEnd", "StreamErr", "failed", "err_closed", "err_invalid", "err_failed"]
