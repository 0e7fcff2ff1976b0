"""A guard in front of the control API's connections: bounds for hostile clients.

aiohttp reads a request head for as long as the client takes to send it, and
takes every connection offered. The guard wraps the server's protocol factory:
at most `daemon.max_connections` connections at once (one more is closed as
soon as it is accepted), and every request head must be complete within
`daemon.request_head_timeout`: the first from the moment the connection is
accepted, each later one on a keep-alive connection from its first byte (a
slowloris is cut, on the first request or on any later one). To know where a
head starts, the guard follows the requests on the connection (HeadTracker:
each head's Content-Length says how many body bytes follow it). A chunked
request body ends the tracking for that connection (the API's clients send
Content-Length; aiohttp bounds the rest). Idle keep-alive connections are
closed by aiohttp after KEEPALIVE_S.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
from aiohttp import web

log = structlog.get_logger("chunkd.api")

KEEPALIVE_S = 15.0
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 64 * 1024  # past this aiohttp refuses the head itself


class HeadTracker:
    """Where a connection is in its stream of HTTP/1.1 requests: in a head, in a body
    (Content-Length bytes), between requests, or past what it can follow (a chunked
    body, a malformed head: aiohttp answers those). `heads` counts the heads begun."""

    def __init__(self) -> None:
        self.state = "head"  # a connection begins with a head
        self.heads = 1
        self.head = bytearray()
        self.body_left = 0

    @property
    def in_head(self) -> bool:
        return self.state == "head"

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n and self.state != "lost":
            if self.state == "body":
                take = min(self.body_left, n - i)
                self.body_left -= take
                i += take
                if self.body_left == 0:
                    self.state = "idle"
                continue
            if self.state == "idle":
                self.state, self.heads = "head", self.heads + 1
                self.head.clear()
            before = len(self.head)
            self.head += data[i:]
            end = self.head.find(HEAD_END)
            if end < 0:
                if len(self.head) > MAX_HEAD:
                    self.state = "lost"
                return
            i += end + len(HEAD_END) - before
            self.state, self.body_left = self._after(bytes(self.head[:end]))
            self.head.clear()

    @staticmethod
    def _after(head: bytes) -> tuple[str, int]:
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                return "lost", 0
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    return "lost", 0
                if length < 0:
                    return "lost", 0
        return ("body", length) if length > 0 else ("idle", 0)


@dataclass
class ConnectionGuard:
    limit: int
    head_timeout_s: float
    open: int = 0
    refused: int = 0
    cut: int = 0
    _factory: Callable[[], Any] | None = field(default=None, repr=False)

    def wrap(self, factory: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        self._factory = factory
        return lambda: _Guarded(self)


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard) -> None:
        assert guard._factory is not None
        self.guard = guard
        self.inner: Any = guard._factory()
        self.transport: Any = None  # asyncio's or uvloop's transport (TCP or TLS)
        self.timer: asyncio.TimerHandle | None = None
        self.requests = HeadTracker()
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        g = self.guard
        if g.open >= g.limit:
            g.refused += 1
            if g.refused in (1, 10, 100, 1000) or g.refused % 10000 == 0:
                log.warning("api_connection_refused", open=g.open, limit=g.limit, refused_total=g.refused)
            self.transport.abort()
            return
        g.open += 1
        self.counted = True
        self.timer = asyncio.get_running_loop().call_later(g.head_timeout_s, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        self.guard.cut += 1
        log.warning("api_request_head_too_slow", timeout_s=self.guard.head_timeout_s, cut_total=self.guard.cut)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.counted:
            return
        heads = self.requests.heads
        self.requests.feed(data)
        if self.timer is not None and (not self.requests.in_head or self.requests.heads != heads):
            self.timer.cancel()  # that head is complete
            self.timer = None
        if self.timer is None and self.requests.in_head and self.requests.heads != heads:
            # a later request began in this data: its head has the same bound
            self.timer = asyncio.get_running_loop().call_later(self.guard.head_timeout_s, self._too_slow)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.guard.open -= 1
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.counted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.counted:
            self.inner.resume_writing()


class GuardedTCPSite(web.TCPSite):
    """aiohttp's TCPSite with the guard around its protocol factory."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard, *,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.guard = guard

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard.wrap(server), self._host, self._port,
                                                ssl=self._ssl_context, backlog=self._backlog,
                                                reuse_address=self._reuse_address, reuse_port=self._reuse_port)
