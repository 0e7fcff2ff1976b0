"""Real servers on 127.0.0.1 for remote-source tests: an HTTP origin with Range and
ETag support, and a fault-injecting proxy to put in front of it or of moto's S3."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from aiohttp import ClientSession, web

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Obj:
    data: bytes
    version: int = 1

    @property
    def etag(self) -> str:
        return '"' + hashlib.md5(self.data).hexdigest() + f'-{self.version}"'


@dataclass
class Origin:
    """GET/HEAD /files/NAME with Range, ETag, If-Match. Modes: ranges off, length off."""

    objects: dict[str, Obj] = field(default_factory=dict)
    ranges: bool = True
    lengths: bool = True
    served: list[tuple[str, int, int, int]] = field(default_factory=list)  # name, version, start, end
    replace_after: dict[str, tuple[int, bytes]] = field(default_factory=dict)  # name -> (after n GETs, new data)
    gets: collections.Counter[str] = field(default_factory=collections.Counter)
    runner: web.AppRunner | None = None
    port: int = 0

    def put(self, name: str, data: bytes) -> None:
        old = self.objects.get(name)
        self.objects[name] = Obj(data, (old.version + 1) if old else 1)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        obj = self.objects.get(name)
        if obj is None:
            return web.Response(status=404)
        if request.method == "GET":
            self.gets[name] += 1
            rep = self.replace_after.get(name)
            if rep and self.gets[name] > rep[0]:
                del self.replace_after[name]
                self.put(name, rep[1])
                obj = self.objects[name]
        headers = {"ETag": obj.etag}
        if self.ranges:
            headers["Accept-Ranges"] = "bytes"
        im = request.headers.get("If-Match")
        if im and im != obj.etag:
            return web.Response(status=412)
        size = len(obj.data)
        rng = request.headers.get("Range") if self.ranges else None
        if request.method == "HEAD":
            if self.lengths:
                headers["Content-Length"] = str(size)
            return web.Response(status=200, headers=headers)
        if rng:
            m = _RANGE.match(rng)
            if not m:
                return web.Response(status=400)
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self.served.append((name, obj.version, start, end))
            return web.Response(status=206, body=obj.data[start:end + 1], headers=headers)
        self.served.append((name, obj.version, 0, size - 1))
        if self.lengths:
            return web.Response(status=200, body=obj.data, headers=headers)
        resp = web.StreamResponse(status=200, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for p in range(0, size, 65536):
            await resp.write(obj.data[p:p + 65536])
        await resp.write_eof()
        return resp

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/files/{name:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/files"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class FaultProxy:
    """Forwards to `upstream`; each queued fault applies to one GET that carries a Range:
    "503", "429", "slowdown" (an S3 503 SlowDown body), "drop" (half the body, then the
    connection is cut), "trickle" (the headers at once, then the body a byte every 0.2 s),
    "hang" (no answer at all until the proxy stops, or 120 s)."""

    upstream: str
    faults: collections.deque[str] = field(default_factory=collections.deque)
    injected: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    session: ClientSession | None = None
    port: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        fault = self.faults.popleft() if (self.faults and request.method == "GET"
                                          and "Range" in request.headers) else None
        if fault == "hang":
            self.injected.append(fault)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.released.wait(), 120)
            return web.Response(status=503)
        if fault in ("503", "429"):
            self.injected.append(fault)
            return web.Response(status=int(fault), headers={"Retry-After": "0"})
        if fault == "slowdown":
            self.injected.append(fault)
            body = b'<?xml version="1.0"?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>'
            return web.Response(status=503, body=body, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        headers["Host"] = self.upstream.split("://", 1)[1].split("/", 1)[0]
        body = await request.read()
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body or None, allow_redirects=False,
                                        auto_decompress=False) as up:
            payload = await up.read()
            out_headers = {k: v for k, v in up.headers.items()
                           if k.lower() not in ("transfer-encoding", "content-length", "connection",
                                                "content-encoding", "server", "date")}
            if fault == "trickle":
                self.injected.append(fault)
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                resp.content_length = len(payload)
                await resp.prepare(request)
                for i in range(len(payload)):
                    await resp.write(payload[i:i + 1])
                    await asyncio.sleep(0.2)
                return resp
            if fault == "drop" and len(payload) > 1:
                self.injected.append(fault)
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                resp.content_length = len(payload)
                await resp.prepare(request)
                await resp.write(payload[: len(payload) // 2])
                assert request.transport is not None
                request.transport.abort()  # the connection dies mid-body
                return resp
            resp2 = web.Response(status=up.status, body=payload if request.method != "HEAD" else None,
                                 headers=out_headers)
            if request.method == "HEAD" and "Content-Length" in up.headers:
                resp2.headers["Content-Length"] = up.headers["Content-Length"]
            return resp2

    async def start(self) -> str:
        self.session = ClientSession()
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.released.set()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.session is not None:
            await self.session.close()
            self.session = None


async def run_forever() -> Any:  # pragma: no cover - manual use
    o = Origin()
    print(await o.start())
    await asyncio.Event().wait()


@contextlib.contextmanager
def moto_server(*buckets: str) -> Iterator[str]:
    """moto's S3 server on loopback (a thread of this process), with `buckets` made: its URL."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    from moto.server import ThreadedMotoServer
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    try:
        host, port = srv.get_host_and_port()
        url = f"http://{host}:{port}"
        client = s3_client(url)
        for b in buckets:
            client.create_bucket(Bucket=b)
        yield url
    finally:
        srv.stop()


def s3_client(url: str) -> Any:
    """A plain boto3 client of the server at `url` (to look at what chunkd left there)."""
    import boto3
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")
