"""One configure_logging(), called from the CLI only.

Production chain: contextvars merge, level filter, ISO UTC timestamp,
exception formatting, then JSON (or a console renderer) to a stream.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _LockedWriter:
    """Whole lines from many threads, never interleaved."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, s: str) -> int:
        with self._lock:
            n = self._stream.write(s)
            self._stream.flush()
            return n

    def flush(self) -> None:
        pass


def configure_logging(log_format: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    out = stream if stream is not None else sys.stdout
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=_LockedWriter(out)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
