"""kind = "gcs": objects under bucket/prefix in Google Cloud Storage (JSON API).

At open, the object's metadata gives its size and generation. Every range is
a media download with `ifGenerationMatch=<generation>` (GCS answers 412 when the
object was replaced), and the answer's `x-goog-generation` is checked too (an
emulator that ignores the condition still cannot mix versions). Credentials:
gcs_auth.py. Names are confined as for every remote kind, and the temp objects
of outputs (`.chunkd-out/` under the prefix, chunkd/sinks/gcs.py) cannot be named.
"""
from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import quote

import aiohttp

from chunkd.errors import NameRefused, SourceError
from chunkd.sources.gcs_auth import GcsCredentials
from chunkd.sources.rest import RestContainer, bounds_of

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
STAGING = ".chunkd-out"  # outputs' parts live under <prefix>/.chunkd-out/ until commit


def object_id(key: str) -> str:
    """An object name as one URL path segment (the JSON API encodes '/' too)."""
    return quote(key, safe="")


class GcsContainer(RestContainer):
    kind = "gcs"

    def __init__(self, name: str, *, bucket: str | None, prefix: str, endpoint_url: str | None,
                 credentials: GcsCredentials, range_size: int, timeout_s: float, options: Mapping[str, Any]) -> None:
        super().__init__(name, prefix=prefix, range_size=range_size, timeout_s=timeout_s, bounds=bounds_of(options))
        self.bucket = bucket
        self.endpoint = (endpoint_url or DEFAULT_ENDPOINT).rstrip("/")
        self.credentials = credentials

    def _bucket(self) -> str:
        if not self.bucket:
            raise SourceError(f"container {self.name!r} has no bucket configured")
        return self.bucket

    def key_for(self, name: str) -> str:
        if name.split("/", 1)[0] == STAGING:
            raise NameRefused(f"{name!r}: names under {STAGING}/ are chunkd's output staging area")
        return super().key_for(name)

    def staging_prefix(self) -> str:
        return f"{self.prefix}/{STAGING}/" if self.prefix else f"{STAGING}/"

    def meta_url(self, key: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{quote(self._bucket(), safe='')}/o/{object_id(key)}"

    def object_url(self, key: str) -> str:
        return f"{self.endpoint}/download/storage/v1/b/{quote(self._bucket(), safe='')}/o/{object_id(key)}?alt=media"

    def pin(self, key: str, version: str) -> tuple[str, dict[str, str]]:
        return f"{self.object_url(key)}&ifGenerationMatch={version}", {}

    def version_of(self, resp: aiohttp.ClientResponse) -> str | None:
        return resp.headers.get("x-goog-generation")

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        headers.update(await self.credentials.headers(self.session()))
        return url, headers

    async def metadata(self, key: str, what: str) -> dict[str, Any]:
        """The object's JSON resource (BlobNotFound when there is none)."""
        async def read(resp: aiohttp.ClientResponse) -> Any:
            return await resp.json(content_type=None)
        _, _, meta = await self.call("GET", self.meta_url(key), what, ok=(200,), read=read)
        if not isinstance(meta, dict):
            raise SourceError(f"{what}: the store's answer is not an object resource")
        return meta

    async def stat(self, key: str, what: str) -> tuple[int, str]:
        meta = await self.metadata(key, what)
        try:
            return int(meta["size"]), str(int(meta["generation"]))
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{what}: the object resource has no size or generation") from None


def build_gcs(name: str, options: Mapping[str, Any]) -> GcsContainer:
    endpoint = options.get("endpoint_url")
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if endpoint is None and emulator:
        endpoint = emulator if "://" in emulator else f"http://{emulator}"
    creds = GcsCredentials(name, credentials_file=options.get("credentials_file"),
                           anonymous=bool(options.get("anonymous")) or endpoint is not None,
                           timeout_s=options["timeout_s"])
    return GcsContainer(name, bucket=options.get("bucket"), prefix=options.get("prefix", ""), endpoint_url=endpoint,
                        credentials=creds, range_size=options["range_size"], timeout_s=options["timeout_s"],
                        options=options)
