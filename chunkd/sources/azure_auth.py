"""Azure Blob credentials: an account key (Shared Key signing), a SAS token, or a
connection string, the three ways Azure Storage users hold them.

From the container's table (${VAR} expanded), else the environment, as the
Azure CLI and SDKs read it: AZURE_STORAGE_CONNECTION_STRING, or
AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN with AZURE_STORAGE_ACCOUNT. With
none of them, requests are anonymous (a public container). No key, signature
or SAS ever appears in an error or a log line: URLs in errors are redacted.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from email.utils import formatdate
from typing import Mapping
from urllib.parse import parse_qsl, urlsplit

from chunkd.errors import SourceError

API_VERSION = "2021-12-02"
# The headers Shared Key signs by position, in order (Content-Length empty when 0).
_SIGNED = ("content-encoding", "content-language", "content-length", "content-md5", "content-type", "date",
           "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")


@dataclass(frozen=True)
class AzureCredentials:
    account: str
    account_key: bytes | None = None  # Shared Key
    sas_token: str | None = None  # a query string, without '?'
    blob_endpoint: str | None = None  # from a connection string

    @property
    def source(self) -> str:
        return "account key" if self.account_key else "SAS token" if self.sas_token else "anonymous"

    def sign(self, method: str, url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The request as sent: x-ms-date and x-ms-version added, then signed."""
        headers.setdefault("x-ms-version", API_VERSION)
        headers["x-ms-date"] = formatdate(usegmt=True)
        if self.sas_token:
            return f"{url}{'&' if '?' in url else '?'}{self.sas_token}", headers
        if self.account_key is None:
            return url, headers
        lower = {k.lower(): v for k, v in headers.items()}
        parts = [method.upper()]
        for h in _SIGNED:
            v = lower.get(h, "")
            if h == "content-length" and v == "0":
                v = ""
            parts.append(v)
        ms = sorted((k, " ".join(v.split())) for k, v in lower.items() if k.startswith("x-ms-"))
        canon_headers = "".join(f"{k}:{v}\n" for k, v in ms)
        u = urlsplit(url)
        resource = f"/{self.account}{u.path or '/'}"
        params: dict[str, list[str]] = {}
        for k, v in parse_qsl(u.query, keep_blank_values=True):
            params.setdefault(k.lower(), []).append(v)
        for k in sorted(params):
            resource += f"\n{k}:{','.join(sorted(params[k]))}"
        to_sign = "\n".join(parts) + "\n" + canon_headers + resource
        sig = base64.b64encode(hmac.new(self.account_key, to_sign.encode("utf-8"), hashlib.sha256).digest())
        headers["Authorization"] = f"SharedKey {self.account}:{sig.decode()}"
        return url, headers


def parse_connection_string(s: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in s.split(";"):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise ValueError("a connection string is KEY=VALUE pairs separated by ';'")
        out[k.strip()] = v.strip()
    return out


def credentials_for(container: str, options: Mapping[str, object]) -> AzureCredentials:
    """The container's credentials (see the module doc); SourceError when they do not fit."""
    def opt(k: str) -> str | None:
        v = options.get(k)
        return str(v) if v else None

    account = opt("account") or os.environ.get("AZURE_STORAGE_ACCOUNT")
    conn = opt("connection_string")
    key, sas = opt("account_key"), opt("sas_token")
    if not (conn or key or sas):
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        if not conn:
            key = os.environ.get("AZURE_STORAGE_KEY") or None
            sas = None if key else (os.environ.get("AZURE_STORAGE_SAS_TOKEN") or None)
    endpoint = None
    if conn:
        try:
            cs = parse_connection_string(conn)
        except ValueError as e:
            raise SourceError(f"container {container!r}: bad connection_string: {e}") from None
        account = cs.get("AccountName", account)
        key = cs.get("AccountKey") or None
        sas = cs.get("SharedAccessSignature") or None
        endpoint = cs.get("BlobEndpoint")
        if endpoint is None and account:
            proto = cs.get("DefaultEndpointsProtocol", "https")
            suffix = cs.get("EndpointSuffix", "core.windows.net")
            endpoint = f"{proto}://{account}.blob.{suffix}"
    if not account:
        raise SourceError(f"container {container!r}: no Azure storage account (set account, a connection_string "
                          "with AccountName, or AZURE_STORAGE_ACCOUNT)")
    raw_key = None
    if key:
        try:
            raw_key = base64.b64decode(key, validate=True)
        except ValueError:
            raise SourceError(f"container {container!r}: the account key is not base64") from None
    return AzureCredentials(account=account, account_key=raw_key, sas_token=sas.lstrip("?") if sas else None,
                            blob_endpoint=endpoint.rstrip("/") if endpoint else None)
