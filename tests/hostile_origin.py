"""A hostile HTTP origin on 127.0.0.1 for the adversarial suite: each path misbehaves one way.

  /trickle/NAME     HEAD is honest (size, ranges); every GET sends its headers, then its
                    body one byte every `trickle_s`
  /headhang/NAME    HEAD never answers
  /reset/NAME       a GET sends half its body, then the connection is reset (`resets`
                    times, then it behaves)
  /badrange/NAME    a GET answers 206 with a Content-Range for other bytes
  /etag/NAME        every answer carries a new ETag and ignores If-Match
  /endless/NAME     no ranges, no length: the body never ends
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class HostileOrigin:
    objects: dict[str, bytes] = field(default_factory=dict)
    trickle_s: float = 0.5
    resets: int = 1
    gets: dict[str, int] = field(default_factory=dict)
    port: int = 0
    runner: web.AppRunner | None = None
    _etags: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _obj(self, request: web.Request) -> tuple[str, bytes] | None:
        name = request.match_info["name"]
        data = self.objects.get(name)
        return None if data is None else (name, data)

    @staticmethod
    def _range(request: web.Request, size: int) -> tuple[int, int]:
        spec = request.headers.get("Range", "")
        if spec.startswith("bytes="):
            a, _, b = spec[len("bytes="):].partition("-")
            start = int(a)
            end = min(int(b), size - 1) if b else size - 1
            return start, end
        return 0, size - 1

    def _head(self, data: bytes, etag: str = '"v1"') -> web.Response:
        return web.Response(headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes", "ETag": etag})

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        got = self._obj(request)
        if got is None:
            return web.Response(status=404)
        data = got[1]
        if request.method == "HEAD":
            return self._head(data)
        start, end = self._range(request, len(data))
        resp = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes {start}-{end}/{len(data)}", "Content-Length": str(end - start + 1),
            "ETag": '"v1"'})
        await resp.prepare(request)
        for i in range(start, end + 1):
            await resp.write(data[i:i + 1])
            await asyncio.sleep(self.trickle_s)
        return resp

    async def headhang(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            await asyncio.sleep(3600)
        return web.Response(status=404)

    async def reset(self, request: web.Request) -> web.StreamResponse:
        got = self._obj(request)
        if got is None:
            return web.Response(status=404)
        name, data = got
        if request.method == "HEAD":
            return self._head(data)
        start, end = self._range(request, len(data))
        self.gets[name] = self.gets.get(name, 0) + 1
        resp = web.StreamResponse(status=206, headers={
            "Content-Range": f"bytes {start}-{end}/{len(data)}", "Content-Length": str(end - start + 1),
            "ETag": '"v1"'})
        await resp.prepare(request)
        body = data[start:end + 1]
        if self.gets[name] <= self.resets:
            await resp.write(body[:len(body) // 2])
            assert request.transport is not None
            request.transport.abort()  # a reset mid-body
            return resp
        await resp.write(body)
        return resp

    async def badrange(self, request: web.Request) -> web.StreamResponse:
        got = self._obj(request)
        if got is None:
            return web.Response(status=404)
        data = got[1]
        if request.method == "HEAD":
            return self._head(data)
        start, end = self._range(request, len(data))
        wrong = start + 1
        return web.Response(status=206, body=data[start:end + 1], headers={
            "Content-Range": f"bytes {wrong}-{end + 1}/{len(data)}", "ETag": '"v1"'})

    async def etag(self, request: web.Request) -> web.StreamResponse:
        got = self._obj(request)
        if got is None:
            return web.Response(status=404)
        data = got[1]
        tag = f'"v{next(self._etags)}"'
        if request.method == "HEAD":
            return self._head(data, tag)
        start, end = self._range(request, len(data))
        return web.Response(status=206, body=data[start:end + 1], headers={
            "Content-Range": f"bytes {start}-{end}/{len(data)}", "ETag": tag})

    async def endless(self, request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Transfer-Encoding": "chunked"})  # no length, no ranges
        resp = web.StreamResponse(status=200)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = hashlib.sha256(b"endless").digest() * 2048  # 64 KiB
        try:
            while True:
                await resp.write(block)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        return resp

    async def start(self) -> str:
        app = web.Application()
        for path, handler in (("trickle", self.trickle), ("headhang", self.headhang), ("reset", self.reset),
                              ("badrange", self.badrange), ("etag", self.etag), ("endless", self.endless)):
            app.router.add_route("GET", f"/{path}/{{name}}", handler)
            app.router.add_route("HEAD", f"/{path}/{{name}}", handler)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await asyncio.wait_for(self.runner.cleanup(), 10)
