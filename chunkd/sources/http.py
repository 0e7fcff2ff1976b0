"""kind = "http": blobs under base_url, fetched with Range requests.

One shared aiohttp session per container with a connection limit. At open
the blob's size comes from HEAD (or a first ranged GET) and its ETag (or
Last-Modified) is pinned; every range then carries If-Match (or
If-Unmodified-Since), so a blob that changes mid-stream fails the stream
instead of mixing versions. A server without Range support, or without a
length, is streamed in order (size unknown, total-chunks 0).
"""
from __future__ import annotations

import asyncio
import os
import re
from typing import Any, Mapping

import aiohttp

from chunkd.errors import BlobNotFound, ConfigError, SourceError
from chunkd.sources.bounds import Transfer, TransferBounds
from chunkd.sources.names import quote_key, redact_url, safe_key

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


def resolve_headers(headers: Mapping[str, str], file: str, key: str) -> dict[str, str]:
    """Header values of the form ${NAME} come from the environment (for tokens)."""
    out = {}
    for h, v in headers.items():
        m = _ENV_REF.match(v)
        if m:
            if m.group(1) not in os.environ:
                raise ConfigError(file, f"{key}.headers.{h}", f"environment variable {m.group(1)} is not set")
            v = os.environ[m.group(1)]
        out[h] = v
    return out


def _status_error(status: int, what: str) -> SourceError:
    if status == 404:
        return BlobNotFound(f"{what}: not found (HTTP 404)")
    if status == 412:
        return SourceError(f"{what}: the blob changed since it was opened (HTTP 412)")
    transient = status in TRANSIENT_STATUS
    return SourceError(f"{what}: HTTP {status}{' (will retry)' if transient else ''}", transient=transient)


def _transport_error(e: BaseException, what: str) -> SourceError:
    kind = "timed out" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}"
    return SourceError(f"{what}: {kind}", transient=True)


class HttpBlob:
    def __init__(self, container: "HttpContainer", url: str, label: str, size: int | None, etag: str | None,
                 last_modified: str | None, ranged: bool) -> None:
        self._c = container
        self._url = url
        self.label = label
        self._size = size
        self.etag = etag
        self.last_modified = last_modified
        self.ranged = ranged
        self.read_unit = container.range_size
        self._resp: aiohttp.ClientResponse | None = None  # streaming mode
        self._pos = 0

    @property
    def size(self) -> int | None:
        return self._size

    def _conditions(self) -> dict[str, str]:
        if self.etag:
            return {"If-Match": self.etag}
        if self.last_modified:
            return {"If-Unmodified-Since": self.last_modified}
        return {}

    def _check_version(self, resp: aiohttp.ClientResponse) -> None:
        etag = resp.headers.get("ETag")
        if self.etag and etag and etag != self.etag:
            raise SourceError(f"{self.label}: the blob changed since it was opened (ETag {etag} != {self.etag})")

    async def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if self.ranged:
            return await self._ranged(offset, length)
        return await self._streamed(offset, length)

    async def _ranged(self, offset: int, length: int) -> bytes:
        if self._size is not None:
            if offset >= self._size:
                return b""
            length = min(length, self._size - offset)
        what = f"{self.label} bytes {offset}-{offset + length - 1}"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}", **self._conditions()}
        t = Transfer(self._c.bounds, length, what)
        try:
            resp = await t.headers(self._c.session().get(self._url, headers=headers))
            try:
                if resp.status == 416:
                    return b""
                if resp.status != 206:
                    if resp.status == 200:
                        raise SourceError(f"{what}: the server stopped honouring Range requests")
                    raise _status_error(resp.status, what)
                self._check_version(resp)
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    raise SourceError(f"{what}: bad Content-Range {resp.headers.get('Content-Range')!r}")
                if int(m.group(2)) != offset + length - 1:
                    raise SourceError(f"{what}: bad Content-Range {resp.headers.get('Content-Range')!r}")
                if m.group(3) != "*" and self._size is not None and int(m.group(3)) != self._size:
                    raise SourceError(f"{what}: the blob changed size ({m.group(3)} != {self._size})")
                cl = resp.headers.get("Content-Length", "")
                if cl.isdigit() and int(cl) != length:
                    raise SourceError(f"{what}: the server answered {cl} bytes")
                data = await t.body(resp.content.read, length, resp.content.read_nowait)
                if len(data) != length:
                    raise SourceError(f"{what}: body ended after {len(data)} bytes", transient=True)
            finally:
                resp.release()
        except SourceError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _transport_error(e, what) from None
        return data

    async def _open_stream(self, skip: int) -> None:
        await self._drop_stream()
        what = f"{self.label} (streamed from {skip})"
        t = Transfer(self._c.bounds, skip, what)
        try:
            resp = await t.headers(self._c.session().get(self._url, headers=self._conditions()))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _transport_error(e, what) from None
        if resp.status != 200:
            resp.release()
            raise _status_error(resp.status, what)
        try:
            self._check_version(resp)
            left = skip
            while left > 0:  # resume after a failure: skip what was delivered already
                got = await t.read(resp.content.read, min(left, 1 << 20))
                if not got:
                    raise SourceError(f"{what}: body ended while skipping to {skip}", transient=True)
                left -= len(got)
        except SourceError:
            resp.release()
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            resp.release()
            raise _transport_error(e, what) from None
        self._resp = resp
        self._pos = skip

    async def _drop_stream(self) -> None:
        if self._resp is not None:
            self._resp.release()
            self._resp = None

    async def _streamed(self, offset: int, length: int) -> bytes:
        if self._resp is None or offset != self._pos:
            await self._open_stream(offset)
        assert self._resp is not None
        what = f"{self.label} bytes from {offset}"
        t = Transfer(self._c.bounds, length, what)
        try:
            data = await t.body(self._resp.content.read, length, self._resp.content.read_nowait)
        except SourceError:
            await self._drop_stream()  # the retry opens a new stream and skips to the offset
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            await self._drop_stream()
            raise _transport_error(e, what) from None
        self._pos += len(data)
        return data

    async def close(self) -> None:
        await self._drop_stream()


class HttpContainer:
    kind = "http"

    def __init__(self, name: str, base_url: str, headers: Mapping[str, str], *, timeout_s: float,
                 range_size: int, max_connections: int, bounds: TransferBounds | None = None) -> None:
        self.name = name
        self.bounds = bounds or TransferBounds(timeout_s=timeout_s)
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.timeout_s = timeout_s
        self.range_size = range_size
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
                auto_decompress=False,  # byte ranges of the stored representation
            )
        return self._session

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/{quote_key(safe_key(name, self.name))}"

    async def open(self, name: str) -> HttpBlob:
        url = self.url_for(name)
        label = f"{self.name}/{name}"
        what = f"open {redact_url(url)}"
        try:
            resp = await Transfer(self.bounds, 0, what).headers(self.session().head(url, allow_redirects=True))
            resp.release()
            status, h = resp.status, resp.headers
        except SourceError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _transport_error(e, what) from None
        size: int | None = None
        etag = last_modified = None
        ranged = False
        if status == 200:
            etag, last_modified = h.get("ETag"), h.get("Last-Modified")
            if h.get("Content-Length", "").isdigit() and "Content-Encoding" not in h:
                size = int(h["Content-Length"])
            ranged = "bytes" in h.get("Accept-Ranges", "").lower()
        elif status not in (405, 501):
            raise _status_error(status, what)
        if not ranged or size is None:
            size, etag, last_modified, ranged = await self._probe(url, what, etag, last_modified)
        if etag and etag.startswith("W/"):
            etag = None  # a weak validator cannot pin bytes; fall back to Last-Modified
        return HttpBlob(self, url, label, size if ranged else None, etag, last_modified, ranged)

    async def _probe(self, url: str, what: str, etag: str | None,
                     last_modified: str | None) -> tuple[int | None, str | None, str | None, bool]:
        """A first ranged GET tells whether Range works and the total size."""
        try:
            resp = await Transfer(self.bounds, 1, what).headers(self.session().get(url, headers={"Range": "bytes=0-0"}))
            async with resp:
                h = resp.headers
                if resp.status == 206:
                    m = _CONTENT_RANGE.match(h.get("Content-Range", ""))
                    if m and m.group(3) != "*":
                        return int(m.group(3)), h.get("ETag", etag), h.get("Last-Modified", last_modified), True
                    return None, h.get("ETag", etag), h.get("Last-Modified", last_modified), False
                if resp.status == 416:  # empty blob
                    return 0, h.get("ETag", etag), h.get("Last-Modified", last_modified), True
                if resp.status == 200:
                    return None, h.get("ETag", etag), h.get("Last-Modified", last_modified), False
                raise _status_error(resp.status, what)
        except SourceError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _transport_error(e, what) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def build_http(name: str, options: Mapping[str, Any], file: str) -> HttpContainer:
    headers = resolve_headers(options.get("headers", {}), file, f"containers.{name}")
    bounds = TransferBounds(timeout_s=options["timeout_s"], min_rate=options.get("min_rate", 64 * 1024),
                            low_speed_limit=options.get("low_speed_limit", 16 * 1024),
                            low_speed_time_s=options.get("low_speed_time_s", 10.0))
    return HttpContainer(name, options["base_url"], headers, timeout_s=options["timeout_s"],
                         range_size=options["range_size"], max_connections=options["max_connections"],
                         bounds=bounds)
