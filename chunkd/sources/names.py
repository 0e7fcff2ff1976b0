"""Blob names for remote containers: never escape the container's base or prefix."""
from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

from chunkd.errors import NameRefused

_BAD = re.compile(r"[\x00-\x1f\x7f\\?#]")

# An output being written to a `file` container is a temp file named
# `.chunkd-out.<job>.<attempt>.<random>.tmp` beside its target (chunkd/sinks/file.py):
# no read or write may name a file whose last part starts with this.
OUTPUT_TEMP_PREFIX = ".chunkd-out."


def safe_key(name: str, container: str) -> str:
    """A relative key made of plain segments, or NameRefused."""
    if not name or _BAD.search(name):
        raise NameRefused(f"invalid blob name {name!r}")
    if name.startswith("/") or "://" in name:
        raise NameRefused(f"absolute names are not allowed: {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise NameRefused(f"{name!r} has an empty, '.' or '..' segment: it could leave container {container!r}")
    return name


def quote_key(key: str) -> str:
    return quote(key, safe="/-_.~")


def redact_url(url: str) -> str:
    """The URL without user:password@ (credentials never reach a log line)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
