"""A guard in front of the control API's connections: bounds for hostile clients.

aiohttp reads a request head for as long as the client takes to send it, and
takes every connection offered. The guard wraps the server's protocol factory:
at most `daemon.max_connections` connections at once (one more is closed as
soon as it is accepted), and the first request head of a connection must be
complete within `daemon.request_head_timeout` (a slowloris is cut). Idle
keep-alive connections are closed by aiohttp after KEEPALIVE_S. Not bounded: a
later request trickled on a connection whose first head came at once (the
connection limit still caps how many such connections there are).
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
        self.tail = b""
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
        if self.timer is not None:
            seen = self.tail + data
            if HEAD_END in seen:
                self.timer.cancel()
                self.timer = None
            else:
                self.tail = seen[-(len(HEAD_END) - 1):]
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
