"""What the `gcs` and `azure` kinds share: ranged GETs over REST with aiohttp.

One aiohttp session per container (a connection limit, no automatic
decompression). Each kind says how to sign a request (`sign`), where a key's
object lives (`object_url`), how to learn its size and version at open
(`stat`) and how to pin that version on every range (`pin`, `version_of`).
Every request is bounded by the container's TransferBounds (bounds.py); the
answer's status is classified once here (404 not found, 412 changed, 408/425/
429/5xx transient), and every error names the blob, never a credential.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Awaitable, Callable, Mapping

import aiohttp
from yarl import URL

from chunkd.errors import BlobNotFound, SourceError
from chunkd.sources.bounds import Transfer, TransferBounds
from chunkd.sources.names import quote_key, safe_key

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def status_error(status: int, what: str, code: str = "") -> SourceError:
    """The SourceError of an unexpected HTTP status (code: the store's error code, if any)."""
    detail = f"HTTP {status}{f' {code}' if code else ''}"
    if status == 404:
        return BlobNotFound(f"{what}: not found ({detail})")
    if status == 412:
        return SourceError(f"{what}: the blob changed since it was opened ({detail})")
    transient = status in TRANSIENT_STATUS
    return SourceError(f"{what}: {detail}{' (will retry)' if transient else ''}", transient=transient)


def transport_error(e: BaseException, what: str) -> SourceError:
    kind = "timed out" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}"
    return SourceError(f"{what}: {kind}", transient=True)


def error_code(resp: aiohttp.ClientResponse) -> str:
    """The store's own error code, from a header (Azure: x-ms-error-code) when there is one."""
    return resp.headers.get("x-ms-error-code", "")


class RestBlob:
    """An opened object: its size and the version every range is pinned to."""

    def __init__(self, container: "RestContainer", key: str, label: str, size: int, version: str) -> None:
        self._c = container
        self.key = key
        self.label = label
        self._size = size
        self.version = version
        self.read_unit = container.range_size

    @property
    def size(self) -> int | None:
        return self._size

    async def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self._size:
            return b""
        length = min(length, self._size - offset)
        what = f"{self.label} bytes {offset}-{offset + length - 1}"
        c = self._c
        t = Transfer(c.bounds, length, what)
        try:
            url, headers = c.pin(self.key, self.version)
            headers["Range"] = f"bytes={offset}-{offset + length - 1}"
            resp = await t.headers(c.send("GET", url, headers))
            try:
                if resp.status not in (200, 206):
                    raise status_error(resp.status, what, error_code(resp))
                found = c.version_of(resp)
                if found is not None and found != self.version:
                    raise SourceError(f"{what}: the blob changed since it was opened "
                                      f"(version {found} != {self.version})")
                if resp.status == 200:  # the whole object: only right when the range was all of it
                    if offset != 0 or length != self._size:
                        raise SourceError(f"{what}: the store ignored the Range header")
                else:
                    m = CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset or int(m.group(2)) != offset + length - 1:
                        raise SourceError(f"{what}: bad Content-Range {resp.headers.get('Content-Range')!r}")
                    if m.group(3) != "*" and int(m.group(3)) != self._size:
                        raise SourceError(f"{what}: the blob changed size ({m.group(3)} != {self._size})")
                data = await t.body(resp.content.read, length, resp.content.read_nowait)
                if len(data) != length:
                    raise SourceError(f"{what}: body ended after {len(data)} bytes", transient=True)
            finally:
                resp.release()
        except SourceError:
            raise
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, what) from None
        return data

    async def close(self) -> None:
        pass


class RestContainer:
    """The base of the `gcs` and `azure` containers (sources and, through sinks/, writes)."""

    kind = "rest"

    def __init__(self, name: str, *, prefix: str, range_size: int, timeout_s: float, bounds: TransferBounds,
                 max_connections: int = 32) -> None:
        self.name = name
        self.prefix = prefix.strip("/")
        self.range_size = range_size
        self.timeout_s = timeout_s
        self.bounds = bounds
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    # -- what each kind provides ------------------------------------------------------
    def object_url(self, key: str) -> str:
        """The object's URL (already percent-encoded)."""
        raise NotImplementedError

    def pin(self, key: str, version: str) -> tuple[str, dict[str, str]]:
        """The URL and headers of a read of `key` pinned to `version`."""
        raise NotImplementedError

    def version_of(self, resp: aiohttp.ClientResponse) -> str | None:
        """The version an answer carries (None: it does not say)."""
        raise NotImplementedError

    async def stat(self, key: str, what: str) -> tuple[int, str]:
        """(size, version) of `key`, or BlobNotFound / SourceError."""
        raise NotImplementedError

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The request as sent: auth added (a header, or a query for SAS)."""
        return url, headers

    # -- shared ----------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
                auto_decompress=False,  # byte ranges of the stored representation
            )
        return self._session

    def key_for(self, name: str) -> str:
        key = safe_key(name, self.name)
        return f"{self.prefix}/{key}" if self.prefix else key

    def quoted(self, key: str) -> str:
        return quote_key(key)

    async def send(self, method: str, url: str, headers: Mapping[str, str] | None = None,
                   data: bytes | bytearray | memoryview | None = None) -> aiohttp.ClientResponse:
        """One signed request; the caller releases the answer (unbounded here: callers wrap
        it in a Transfer or a deadline)."""
        h = dict(headers or {})
        if data is not None or method in ("PUT", "POST"):
            h["Content-Length"] = str(len(data) if data is not None else 0)
            if not any(k.lower() == "content-type" for k in h):  # aiohttp would add one after signing
                h["Content-Type"] = "application/octet-stream"
        url, h = await self.sign(method, url, h)
        return await self.session().request(method, URL(url, encoded=True), headers=h, data=data,
                                            allow_redirects=False)

    async def call(self, method: str, url: str, what: str, *, headers: Mapping[str, str] | None = None,
                   data: bytes | bytearray | memoryview | None = None,
                   ok: tuple[int, ...] = (200, 201, 202, 204),
                   read: Callable[[aiohttp.ClientResponse], Awaitable[Any]] | None = None) -> tuple[int, Any, Any]:
        """A small request within the container's deadline: (status, headers, what `read`
        made of the body). A status outside `ok` raises status_error (404 BlobNotFound)."""
        nbytes = len(data) if data is not None else 0
        t = Transfer(self.bounds, nbytes, what)
        try:
            resp = await t.headers(self.send(method, url, headers, data))
            try:
                if resp.status not in ok:
                    raise status_error(resp.status, what, error_code(resp))
                body = await asyncio.wait_for(read(resp), timeout=max(0.0, t.deadline - t._clock())) \
                    if read is not None else None
                return resp.status, resp.headers, body
            finally:
                resp.release()
        except SourceError:
            raise
        except TRANSPORT_ERRORS as e:
            raise transport_error(e, what) from None

    async def open(self, name: str) -> RestBlob:
        key = self.key_for(name)
        label = f"{self.name}/{name}"
        size, version = await self.stat(key, f"open {label}")
        return RestBlob(self, key, label, size, version)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def bounds_of(options: Mapping[str, Any]) -> TransferBounds:
    return TransferBounds(timeout_s=options["timeout_s"], min_rate=options.get("min_rate", 64 * 1024),
                          low_speed_limit=options.get("low_speed_limit", 16 * 1024),
                          low_speed_time_s=options.get("low_speed_time_s", 10.0))
