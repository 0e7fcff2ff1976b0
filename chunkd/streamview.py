"""The one view of a stream: what the API, the status page, the store and `chunkd run` show
of a chunked read (below jobs.py and summary.py, which both use it)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from chunkd.delivery import Delivery


class StreamSummary(TypedDict):
    correlation_id: int
    container: str
    blob: str
    chunk_size: int
    size: int | None
    total_chunks: int
    chunks: int
    bytes: int
    retries: int
    end: str | None  # "completed", "cancelled", "failed(reason)"; None while open
    started_at: float
    ended_at: float | None
    stalled: bool  # open, and no chunk delivered for 30 s (delivery.STALLED_AFTER_S)


def stream_summary(d: "Delivery") -> StreamSummary:
    return {
        "correlation_id": d.correlation_id, "container": d.stream.container, "blob": d.stream.name,
        "chunk_size": d.chunk_size, "size": d.size, "total_chunks": d.total_chunks, "chunks": d.stats.chunks,
        "bytes": d.stats.bytes, "retries": d.stats.retries, "end": None if d.outcome is None else str(d.outcome),
        "started_at": d.stats.started_at, "ended_at": d.stats.ended_at, "stalled": d.stalled(time.time()),
    }
