"""Secure defaults for the control API: who may listen without a token, and TLS.

A TCP listen address that other hosts can reach (anything but loopback) with
no bearer token is refused at start, unless `daemon.allow_unauthenticated =
true` says the operator means it. `daemon.tls_cert` and `daemon.tls_key`
serve the API over HTTPS. Tokens are compared in constant time (tenancy.py). With
[tenants] configured the API is never open: each request needs a tenant's token or
the admin token.
"""
from __future__ import annotations

import ipaddress
import ssl

from chunkd.config import Config
from chunkd.errors import ConfigError


def is_loopback_host(host: str) -> bool:
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def listen_guard(config: Config, token: str) -> ssl.SSLContext | None:
    """Raise ConfigError for an open API; return the TLS context to serve with, if any."""
    d = config.daemon
    if d.listen.startswith("unix:"):
        return None
    host = d.listen.rpartition(":")[0]
    # with tenants every request needs a token (a tenant's or the admin's): not open
    if not token and not config.tenants and not d.allow_unauthenticated and not is_loopback_host(host):
        raise ConfigError(config.file, "daemon.listen",
                          f"{d.listen} is reachable from other hosts and no token is set: set daemon.auth_token "
                          f"(or CHUNKD_AUTH_TOKEN), or daemon.allow_unauthenticated = true to serve it open")
    if d.tls_cert is None or d.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(d.tls_cert), str(d.tls_key))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(config.file, "daemon.tls_cert",
                          f"cannot load {d.tls_cert} with {d.tls_key}: {getattr(e, 'strerror', None) or e}") from None
    return ctx
