"""kind = "azure": block blobs under container_name/prefix in Azure Blob Storage (REST).

At open, a HEAD (Get Blob Properties) gives the size and the ETag. Every range
is a Get Blob with `Range` and `If-Match: <ETag>` (412 when the blob was
replaced), and the answer's ETag is checked too. Credentials: azure_auth.py.
The endpoint is `https://<account>.blob.core.windows.net`, a connection
string's BlobEndpoint, or `endpoint_url` (Azurite: http://127.0.0.1:10000/devstoreaccount1).
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict

from chunkd.errors import SourceError
from chunkd.sources.azure_auth import AzureCredentials, credentials_for
from chunkd.sources.rest import RestContainer, bounds_of


class AzureContainer(RestContainer):
    kind = "azure"

    def __init__(self, name: str, *, container_name: str | None, prefix: str, endpoint_url: str,
                 credentials: AzureCredentials, range_size: int, timeout_s: float,
                 options: Mapping[str, Any]) -> None:
        super().__init__(name, prefix=prefix, range_size=range_size, timeout_s=timeout_s, bounds=bounds_of(options))
        self.container_name = container_name
        self.endpoint = endpoint_url.rstrip("/")
        self.credentials = credentials

    def _cname(self) -> str:
        if not self.container_name:
            raise SourceError(f"container {self.name!r} has no container_name configured")
        return self.container_name

    def object_url(self, key: str) -> str:
        return f"{self.endpoint}/{quote(self._cname(), safe='')}/{self.quoted(key)}"

    def pin(self, key: str, version: str) -> tuple[str, dict[str, str]]:
        return self.object_url(key), {"If-Match": version}

    def version_of(self, resp: aiohttp.ClientResponse) -> str | None:
        return resp.headers.get("ETag")

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        return self.credentials.sign(method, url, headers)

    async def properties(self, key: str, what: str) -> Mapping[str, str]:
        """Get Blob Properties: the headers (BlobNotFound when there is no such blob)."""
        _, headers, _ = await self.call("HEAD", self.object_url(key), what, ok=(200,))
        return CIMultiDict(headers)

    async def stat(self, key: str, what: str) -> tuple[int, str]:
        h = await self.properties(key, what)
        size, etag = h.get("Content-Length", ""), h.get("ETag")
        if not size.isdigit() or not etag:
            raise SourceError(f"{what}: the blob's properties have no length or ETag")
        return int(size), etag


def build_azure(name: str, options: Mapping[str, Any]) -> AzureContainer:
    creds = credentials_for(name, options)
    endpoint = options.get("endpoint_url") or creds.blob_endpoint or f"https://{creds.account}.blob.core.windows.net"
    return AzureContainer(name, container_name=options.get("container_name"), prefix=options.get("prefix", ""),
                          endpoint_url=endpoint, credentials=creds, range_size=options["range_size"],
                          timeout_s=options["timeout_s"], options=options)
