"""Who a request is: its bearer token mapped to a principal (docs/tenants.md).

- `daemon.auth_token` (or CHUNKD_AUTH_TOKEN) is the admin: every job, every endpoint.
- A `[tenants.NAME]` token is that tenant with its role: `read` sees its own jobs,
  `submit` also submits and cancels them, `admin` sees and cancels every job (its own
  submissions still carry its name, its weight and its quotas).
- With no tenants configured nothing changes: the one token (if any) is the admin.
- With tenants configured every request on TCP needs a known token (no token: 401),
  and the admin exists only when an admin token is set. On a unix socket a request
  with no Authorization header is the admin (the socket's file permissions are the
  gate, as without tenants); one that sends a token is who the token says.

Tokens are compared in constant time: the SHA-256 of the presented token against the
SHA-256 of every configured token, all of them, every time (hmac.compare_digest on
equal-length digests: neither the length of a token nor which one matched shows in
the time taken).
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Mapping

from chunkd.config import TenantConfig
from chunkd.errors import ConfigError


@dataclass(frozen=True)
class Principal:
    """The one a request acts for. `tenant` None: the admin token (or no auth at all)."""

    tenant: str | None
    role: str  # "admin" | "submit" | "read"
    components: frozenset[str] | None = None  # the components it may submit to; None: all

    @property
    def scope(self) -> str | None:
        """The tenant whose jobs it sees; None: every job."""
        return None if self.role == "admin" else self.tenant

    @property
    def may_submit(self) -> bool:
        return self.role in ("submit", "admin")

    def sees(self, job_tenant: str | None) -> bool:
        return self.scope is None or job_tenant == self.scope

    def describe(self) -> str:
        return "the admin token" if self.tenant is None else f"tenant {self.tenant!r}"


ADMIN = Principal(tenant=None, role="admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Tokens:
    """Every configured token (as digests) and whom it names."""

    def __init__(self, admin_token: str, tenants: Mapping[str, TenantConfig], *, file: str = "") -> None:
        self.admin_token = admin_token
        self.tenants = tenants
        self._entries: list[tuple[bytes, Principal]] = []
        if admin_token:
            self._entries.append((_digest(admin_token), ADMIN))
        for t in tenants.values():
            if admin_token and hmac.compare_digest(_digest(t.token), _digest(admin_token)):
                raise ConfigError(file, f"tenants.{t.name}.token",
                                  "the same token as the admin token (CHUNKD_AUTH_TOKEN or daemon.auth_token): "
                                  "every tenant needs its own")
            self._entries.append((_digest(t.token), Principal(t.name, t.role, t.components)))

    def lookup(self, token: str) -> Principal | None:
        """The principal `token` names, or None. Compares against every token, always."""
        got = _digest(token)
        found: Principal | None = None
        for digest, principal in self._entries:
            match = hmac.compare_digest(got, digest)
            found = principal if match else found
        return found

    def resolve(self, authorization: str, *, unix: bool = False) -> Principal | None:
        """The principal of a request's Authorization header ("" when absent); None: 401."""
        if not self.tenants:  # the rules from before tenants, unchanged
            if unix or not self.admin_token:
                return ADMIN
            ok = authorization.startswith("Bearer ") and self.lookup(authorization[7:]) is not None
            return ADMIN if ok else None
        if not authorization:
            return ADMIN if unix else None
        if not authorization.startswith("Bearer "):
            return None
        return self.lookup(authorization[7:])
