"""Bounds on every remote read: nothing holds a stream for ever.

A remote request (an `http` range or stream read, an `s3` ranged GetObject, a
HEAD at open) is bounded three ways, per container:

- `timeout`: connecting, and waiting for the answer's headers;
- a deadline for the whole request that scales with its size:
  `timeout + bytes / min_rate`;
- a low-speed limit, like curl's: once the body flows, a transfer slower than
  `low_speed_limit` bytes/s over any `low_speed_time` window is cut.

A read that breaks a bound is a transient SourceError: the stream retries from
the failed offset (`limits.source_retries`), then ends `failed(reason)`.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from chunkd.errors import SourceError

T = TypeVar("T")
READ_PIECE = 1024 * 1024  # at most this much per read call: a piece is what a window counts


@dataclass(frozen=True)
class TransferBounds:
    timeout_s: float = 30.0
    min_rate: int = 64 * 1024  # bytes/s the whole-request deadline allows for
    low_speed_limit: int = 16 * 1024  # bytes/s ...
    low_speed_time_s: float = 10.0  # ... over this long, or the transfer is cut

    def deadline_s(self, nbytes: int) -> float:
        return self.timeout_s + max(0, nbytes) / self.min_rate


class Transfer:
    """One bounded request for `nbytes` bytes (what: how errors name it)."""

    def __init__(self, bounds: TransferBounds, nbytes: int, what: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bounds = bounds
        self.what = what
        self._clock = clock
        self.started = clock()
        self.deadline = self.started + bounds.deadline_s(nbytes)
        self._window_start = self.started
        self._window_bytes = 0
        self.received = 0

    def _cut(self, why: str) -> SourceError:
        return SourceError(f"{self.what}: {why}", transient=True)

    def _left(self) -> float:
        return self.deadline - self._clock()

    async def headers(self, aw: Awaitable[T]) -> T:
        """Wait for the answer (connect and headers): at most `timeout`, within the deadline."""
        wait = min(self.bounds.timeout_s, self._left())
        try:
            return await asyncio.wait_for(aw, timeout=max(0.0, wait))
        except asyncio.TimeoutError:
            raise self._cut(f"no answer within {wait:.3g}s") from None
        finally:
            now = self._clock()
            self._window_start, self._window_bytes = now, 0  # the body's rate is measured from here

    def _check_rate(self, now: float) -> None:
        """At the end of a low-speed window: cut if the window was too slow, else start another."""
        span = now - self._window_start
        if span < self.bounds.low_speed_time_s:
            return
        rate = self._window_bytes / span if span > 0 else 0.0
        if rate < self.bounds.low_speed_limit:
            raise self._cut(f"slower than {self.bounds.low_speed_limit} bytes/s for {span:.3g}s "
                            f"({rate:.0f} bytes/s)")
        self._window_start, self._window_bytes = now, 0

    async def read(self, read: Callable[[int], Awaitable[bytes]], n: int) -> bytes:
        """One read of up to `n` body bytes, bounded by the deadline and the low-speed window."""
        while True:
            now = self._clock()
            if now >= self.deadline:
                raise self._cut(f"took longer than its deadline of {self.deadline - self.started:.3g}s "
                                f"({self.received} bytes received)")
            window_end = self._window_start + self.bounds.low_speed_time_s
            wait = max(0.0, min(self.deadline, window_end) - now)
            try:
                async with asyncio.timeout(wait):  # no task per read, unlike wait_for
                    part = await read(n)
            except asyncio.TimeoutError:
                self._check_rate(self._clock())  # raises when too slow; else a new window
                continue
            now = self._clock()
            self._window_bytes += len(part)
            self.received += len(part)
            self._check_rate(now)
            if now > self.deadline and part:
                raise self._cut(f"took longer than its deadline of {self.deadline - self.started:.3g}s")
            return part

    def _take(self, part: bytes) -> None:
        """Count bytes that were already buffered (read without waiting) in the window."""
        now = self._clock()
        if now >= self.deadline:
            raise self._cut(f"took longer than its deadline of {self.deadline - self.started:.3g}s "
                            f"({self.received} bytes received)")
        self._window_bytes += len(part)
        self.received += len(part)
        self._check_rate(now)

    async def body(self, read: Callable[[int], Awaitable[bytes]], length: int,
                   read_nowait: Callable[[int], bytes] | None = None) -> bytes:
        """Up to `length` bytes, read piece by piece (fewer only when the body ends).
        `read_nowait` (aiohttp's StreamReader.read_nowait) takes what is buffered already
        without a timer per piece; the bounds count those bytes all the same."""
        parts: list[bytes] = []
        got = 0
        while got < length:
            want = min(READ_PIECE, length - got)
            part = read_nowait(want) if read_nowait is not None else b""
            if part:
                self._take(part)
            else:
                part = await self.read(read, want)
                if not part:
                    break
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)
