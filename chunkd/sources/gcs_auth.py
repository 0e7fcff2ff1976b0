"""Google Cloud Storage credentials, the way gcloud users expect them.

In order:
1. `credentials_file` in the container's table (${VAR} expanded), else the file
   named by GOOGLE_APPLICATION_CREDENTIALS: a service-account key (a signed JWT
   exchanged at its `token_uri`) or an `authorized_user` file from
   `gcloud auth application-default login` (a refresh token);
2. `anonymous = true`, or an emulator (`endpoint_url` set, or
   STORAGE_EMULATOR_HOST): no Authorization header at all;
3. otherwise the GCE / GKE metadata server's default service account.

Tokens are cached until a minute before they expire, refreshed by one task at a
time. No key, assertion or token ever appears in an error or a log line.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any, Awaitable, Callable

import aiohttp

from chunkd.errors import SourceError

SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
METADATA_TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
REFRESH_MARGIN_S = 60.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_assertion(info: dict[str, Any], now: float | None = None) -> str:
    """The RS256-signed JWT a service account exchanges for an access token."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    now = time.time() if now is None else now
    header = {"alg": "RS256", "typ": "JWT"}
    if info.get("private_key_id"):
        header["kid"] = str(info["private_key_id"])
    claims = {"iss": info["client_email"], "scope": SCOPE, "aud": info.get("token_uri", DEFAULT_TOKEN_URI),
              "iat": int(now), "exp": int(now) + 3600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
    key = serialization.load_pem_private_key(str(info["private_key"]).encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service account's private_key is not an RSA key")
    sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{_b64(sig)}"


class GcsCredentials:
    """Where a container's bearer tokens come from (see the module doc)."""

    def __init__(self, container: str, *, credentials_file: str | None, anonymous: bool,
                 timeout_s: float = 30.0) -> None:
        self.container = container
        self.file = credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        self.anonymous = anonymous and self.file is None
        self.timeout_s = timeout_s
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        self._info: dict[str, Any] | None = None
        if self.file is not None:
            self._info = self._load(self.file)

    @property
    def source(self) -> str:
        """What the tokens come from, for logs (never the secret itself)."""
        if self.anonymous:
            return "anonymous"
        if self._info is not None:
            return f"{self._info.get('type')} file {self.file}"
        return "metadata server"

    def _load(self, path: str) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                info = json.loads(f.read())
        except OSError as e:
            raise SourceError(f"container {self.container!r}: cannot read the GCS credentials file {path}: "
                              f"{e.strerror or e}") from None
        except ValueError:
            raise SourceError(f"container {self.container!r}: the GCS credentials file {path} is not JSON") from None
        kind = info.get("type") if isinstance(info, dict) else None
        need = {"service_account": ("client_email", "private_key"),
                "authorized_user": ("client_id", "client_secret", "refresh_token")}.get(str(kind))
        if need is None:
            raise SourceError(f"container {self.container!r}: the GCS credentials file {path} has type {kind!r}; "
                              "expected service_account or authorized_user")
        missing = [k for k in need if not info.get(k)]
        if missing:
            raise SourceError(f"container {self.container!r}: the GCS credentials file {path} has no "
                              f"{', '.join(missing)}")
        assert isinstance(info, dict)
        return info

    async def headers(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """The Authorization header for the next request ({} when anonymous)."""
        if self.anonymous:
            return {}
        if self._token is None or time.monotonic() >= self._expires:
            async with self._lock:
                if self._token is None or time.monotonic() >= self._expires:
                    await self._refresh(session)
        return {"Authorization": f"Bearer {self._token}"}

    async def _refresh(self, session: aiohttp.ClientSession) -> None:
        info = self._info
        if info is None:
            request: Callable[[], Awaitable[aiohttp.ClientResponse]] = lambda: session.get(  # noqa: E731
                METADATA_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
            where = "the metadata server"
        elif info["type"] == "service_account":
            try:
                assertion = service_account_assertion(info)
            except Exception as e:  # a malformed key: say which file, never the key
                raise SourceError(f"container {self.container!r}: the service account key in {self.file} "
                                  f"cannot sign: {type(e).__name__}") from None
            form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
            uri = str(info.get("token_uri", DEFAULT_TOKEN_URI))
            request = lambda: session.post(uri, data=form)  # noqa: E731
            where = uri
        else:
            form = {"grant_type": "refresh_token", "client_id": info["client_id"],
                    "client_secret": info["client_secret"], "refresh_token": info["refresh_token"]}
            uri = str(info.get("token_uri", DEFAULT_TOKEN_URI))
            request = lambda: session.post(uri, data=form)  # noqa: E731
            where = uri
        what = f"container {self.container!r}: GCS token from {where}"
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await request()
                async with resp:
                    if resp.status != 200:
                        raise SourceError(f"{what}: HTTP {resp.status}", transient=resp.status >= 500)
                    body = await resp.json(content_type=None)
        except SourceError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            raise SourceError(f"{what}: {type(e).__name__}", transient=True) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise SourceError(f"{what}: the answer has no access_token")
        expires_in = float(body.get("expires_in", 3600) or 3600)
        self._token = token
        self._expires = time.monotonic() + max(0.0, expires_in - REFRESH_MARGIN_S)
