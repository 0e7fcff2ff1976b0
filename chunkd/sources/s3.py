"""kind = "s3": objects under bucket/prefix, fetched with ranged GetObject (aiobotocore).

Credentials come from botocore's standard chain (environment, shared config
and credentials files, SSO, container and instance metadata). The object's
ETag is pinned at open and sent as If-Match on every range. botocore's own
retries are off: chunkd retries transient errors itself, from the failed
offset, so every retry is counted and logged.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Mapping

import aiobotocore.session
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from chunkd.errors import BlobNotFound, SourceError
from chunkd.sources.bounds import Transfer, TransferBounds
from chunkd.sources.names import quote_key, safe_key

TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                   "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "503", "500", "502", "504"}


def error_code(e: ClientError) -> tuple[str, int, bool]:
    """An S3 ClientError's (code, HTTP status, transient): shared by reads and sinks."""
    err = e.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status, code in TRANSIENT_CODES or status in (429, 500, 502, 503, 504)


def _client_error(e: ClientError, what: str) -> SourceError:
    code, status, transient = error_code(e)
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return BlobNotFound(f"{what}: not found")
    if code in ("PreconditionFailed", "412") or status == 412:
        return SourceError(f"{what}: the object changed since it was opened (412 PreconditionFailed)")
    return SourceError(f"{what}: {code or status}{' (will retry)' if transient else ''}", transient=transient)


class S3Blob:
    def __init__(self, container: "S3Container", key: str, label: str, size: int, etag: str | None) -> None:
        self._c = container
        self.key = key
        self.label = label
        self._size = size
        self.etag = etag
        self.read_unit = container.range_size

    @property
    def size(self) -> int | None:
        return self._size

    async def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self._size:
            return b""
        length = min(length, self._size - offset)
        what = f"{self.label} bytes {offset}-{offset + length - 1}"
        kw: dict[str, Any] = {"Bucket": self._c.bucket, "Key": self.key, "Range": f"bytes={offset}-{offset + length - 1}"}
        if self.etag:
            kw["IfMatch"] = self.etag
        client = await self._c.client()
        t = Transfer(self._c.bounds, length, what)
        try:
            resp = await t.headers(client.get_object(**kw))
            etag = resp.get("ETag")
            if self.etag and etag and etag != self.etag:
                resp["Body"].close()
                raise SourceError(f"{what}: the object changed since it was opened (ETag {etag} != {self.etag})")
            cr = resp.get("ContentRange", "")
            if cr and not cr.startswith(f"bytes {offset}-"):
                resp["Body"].close()
                raise SourceError(f"{what}: bad Content-Range {cr!r}")
            async with resp["Body"] as body:
                data: bytes = await t.body(body.read, length)
        except SourceError:
            raise
        except ClientError as e:
            raise _client_error(e, what) from None
        except (BotoCoreError, asyncio.TimeoutError, OSError) as e:
            raise SourceError(f"{what}: {type(e).__name__}: {e}", transient=True) from None
        except Exception as e:  # aiohttp payload errors surface here when the connection drops mid-body
            if type(e).__module__.startswith("aiohttp"):
                raise SourceError(f"{what}: {type(e).__name__}: {e}", transient=True) from None
            raise
        if len(data) != length:
            raise SourceError(f"{what}: got {len(data)} bytes", transient=True)
        return data

    async def close(self) -> None:
        pass


class S3Container:
    kind = "s3"

    def __init__(self, name: str, *, bucket: str | None, prefix: str, region: str, endpoint_url: str | None,
                 range_size: int, timeout_s: float, bounds: TransferBounds | None = None) -> None:
        self.name = name
        self.bounds = bounds or TransferBounds(timeout_s=timeout_s)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.range_size = range_size
        self.timeout_s = timeout_s
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    session = aiobotocore.session.get_session()
                    cfg = AioConfig(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=self.timeout_s,
                                    read_timeout=self.timeout_s, max_pool_connections=32)
                    self._client = await self._stack.enter_async_context(session.create_client(
                        "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=cfg))
        return self._client

    def key_for(self, name: str) -> str:
        key = safe_key(name, self.name)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def open(self, name: str) -> S3Blob:
        if not self.bucket:
            raise SourceError(f"container {self.name!r} has no bucket configured")
        key = self.key_for(name)
        label = f"{self.name}/{name}"
        what = f"open s3://{self.bucket}/{quote_key(key)}"
        client = await self.client()
        try:
            head = await Transfer(self.bounds, 0, what).headers(client.head_object(Bucket=self.bucket, Key=key))
        except SourceError:
            raise
        except ClientError as e:
            raise _client_error(e, what) from None
        except (BotoCoreError, asyncio.TimeoutError, OSError) as e:
            raise SourceError(f"{what}: {type(e).__name__}: {e}", transient=True) from None
        return S3Blob(self, key, label, int(head["ContentLength"]), head.get("ETag"))

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()


def build_s3(name: str, options: Mapping[str, Any]) -> S3Container:
    return S3Container(name, bucket=options.get("bucket"), prefix=options.get("prefix", ""),
                       region=options.get("region", "us-east-1"), endpoint_url=options.get("endpoint_url"),
                       range_size=options["range_size"], timeout_s=options["timeout_s"],
                       bounds=TransferBounds(timeout_s=options["timeout_s"],
                                             min_rate=options.get("min_rate", 64 * 1024),
                                             low_speed_limit=options.get("low_speed_limit", 16 * 1024),
                                             low_speed_time_s=options.get("low_speed_time_s", 10.0)))
