"""TOML configuration -> frozen, validated dataclasses.

Unknown keys and bad values are refused with the file, the dotted key and
the reason. Relative paths are resolved against the config file's folder.
"""
from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from chunkd.errors import ConfigError
from chunkd.units import parse_duration, parse_size

T = TypeVar("T")

CONTAINER_KINDS = ("file", "s3", "http", "gcs", "azure")
CLOUD_KINDS = ("s3", "gcs", "azure")  # object stores: read and written
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (but the last)
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024  # and its largest
DEFAULT_PART_SIZE = 8 * 1024 * 1024
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DaemonConfig:
    listen: str = "127.0.0.1:7878"
    state_dir: Path = Path("state")
    cache_dir: Path | None = None  # compiled-component cache; None = state_dir/cache
    log_format: str = "json"
    log_level: str = "info"
    auth_token: str = ""  # bearer token for the API on TCP; CHUNKD_AUTH_TOKEN overrides
    shutdown_grace_s: float = 30.0
    max_attempts: int = 3
    job_retention_s: float = 7 * 86400.0
    max_request_bytes: int = 64 * 1024
    watchdog: bool = True
    # a TCP listen address other than loopback needs a token unless this is set
    allow_unauthenticated: bool = False
    tls_cert: Path | None = None  # serve the API over HTTPS with this certificate chain (PEM) ...
    tls_key: Path | None = None  # ... and this private key (PEM)
    max_connections: int = 512  # API connections at once (TCP); more are closed when accepted
    request_head_timeout_s: float = 10.0  # a connection's first request head must arrive within this
    # handle-chunk batches (of all jobs) run at once; the next goes to the flow furthest behind
    # its weighted byte share (chunkd/fairshare.py). 0 = the core count
    delivery_workers: int = 0
    default_weight: int = 1  # the weight of a job with no tenant when its component sets none


@dataclass(frozen=True)
class LimitsConfig:
    max_chunk_size_bytes: int = 4 * 1024 * 1024
    call_timeout_s: float = 5.0
    instance_memory_bytes: int = 128 * 1024 * 1024
    max_buffered_bytes: int = 256 * 1024 * 1024
    max_pending_streams: int = 10000
    max_queued_jobs: int = 1000
    max_job_duration_s: float = 0.0  # a running job past this ends failed; 0 = no bound
    source_retries: int = 3
    source_retry_backoff_s: float = 0.1
    max_output_bytes: int = 0  # bytes one job attempt may write to its outputs, all together; 0 = no bound


@dataclass(frozen=True)
class ContainerConfig:
    name: str
    kind: str
    root: Path | None = None  # file
    options: Mapping[str, Any] = field(default_factory=dict)  # s3 / gcs / azure / http keys
    writable: bool = False  # guests may write outputs here (file, s3, gcs, azure; http is read-only)
    overwrite: bool = True  # false: an output whose name exists fails (conditional create)
    part_size: int = DEFAULT_PART_SIZE  # s3 / gcs / azure: upload part size, >= MIN_PART_SIZE


class Secret(str):
    """A credential read from the config (after ${VAR} expansion): a str whose repr
    never shows it, so a config dump, a log line or a traceback cannot leak it."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class ComponentConfig:
    name: str
    path: Path
    instances: int = 1
    max_bytes_per_second: int = 0
    prefetch_chunks: int = 2
    # the containers this component may open and create in; None (the key unset): every
    # container for reads and every writable one for outputs
    containers: frozenset[str] | None = None
    # the weight of this component's jobs in the byte-fair share when they have no tenant
    # (admin-submitted or single-tenant); a tenant's jobs share by the tenant's weight
    weight: int = 0  # 0 = daemon.default_weight


TENANT_ROLES = ("read", "submit", "admin")


@dataclass(frozen=True)
class TenantConfig:
    """[tenants.NAME]: one team sharing the daemon (docs/tenants.md)."""

    name: str
    token: "Secret"  # its bearer token (${VAR} expanded); unique among tenants and auth_token
    role: str = "submit"  # read: see its jobs; submit: also submit and cancel; admin: every job
    components: frozenset[str] | None = None  # the components it may submit to; None: all
    weight: int = 1  # its weight in the byte-fair share of delivery
    max_jobs: int = 0  # its jobs queued and running at once; 0 = no bound
    max_bytes_per_second: int = 0  # bytes delivered to its jobs per second, all together; 0 = no bound
    max_buffered_bytes: int = 0  # read-ahead bytes its streams may hold of the shared budget; 0 = no bound


@dataclass(frozen=True)
class TelemetryConfig:
    """[telemetry]: OpenTelemetry traces over OTLP; off unless otlp_endpoint is set."""

    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318 (OTLP/HTTP); None: no traces
    service_name: str = "chunkd"
    sample_ratio: float = 1.0  # of jobs with no incoming traceparent


@dataclass(frozen=True)
class ClusterConfig:
    """[cluster]: several nodes sharing one job queue on NATS JetStream (docs/cluster.md)."""

    nats_urls: tuple[str, ...]  # ${ENV} already expanded
    node: str
    stream: str = "CHUNKD_JOBS"
    kv_bucket: str = "chunkd_jobs"
    ack_wait_s: float = 30.0
    heartbeat_s: float = 5.0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    creds_file: Path | None = None


@dataclass(frozen=True)
class Config:
    file: str
    daemon: DaemonConfig
    limits: LimitsConfig
    containers: Mapping[str, ContainerConfig]
    components: Mapping[str, ComponentConfig]
    cluster: ClusterConfig | None = None
    tenants: Mapping[str, TenantConfig] = field(default_factory=dict)
    telemetry: TelemetryConfig = TelemetryConfig()


class _Table:
    """One TOML table being read: tracks which keys were consumed."""

    def __init__(self, file: str, prefix: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, prefix or None, f"expected a table, got {type(data).__name__}")
        self.file = file
        self.prefix = prefix
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: T, conv: Callable[[Any], T]) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        try:
            return conv(self.data[name])
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(self.file, self.key(name), str(e)) from None

    def require(self, name: str, conv: Callable[[Any], T]) -> T:
        if name not in self.data:
            raise ConfigError(self.file, self.key(name), "required key is missing")
        self.seen.add(name)
        try:
            return conv(self.data[name])
        except (ValueError, TypeError) as e:
            raise ConfigError(self.file, self.key(name), str(e)) from None

    def sub(self, name: str) -> "_Table":
        self.seen.add(name)
        return _Table(self.file, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(self.file, self.key(unknown[0]), "unknown key")


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = _str(v)
        if s not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {s!r}")
        return s
    return conv


MAX_INT = 10 ** 9  # no count chunkd takes is meaningful above this
MAX_SIZE = 1 << 50  # 1 PiB: no size chunkd takes is meaningful above this


def _int(minimum: int, maximum: int = MAX_INT) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected an integer, got {type(v).__name__}")
        if v < minimum:
            raise ValueError(f"must be at least {minimum}, got {v}")
        if v > maximum:
            raise ValueError(f"must be at most {maximum}, got {v}")
        return v
    return conv


def _size(minimum: int, maximum: int = MAX_SIZE) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        n = parse_size(v)
        if n < minimum:
            raise ValueError(f"must be at least {minimum} bytes, got {v!r}")
        if n > maximum:
            raise ValueError(f"must be at most {maximum} bytes, got {v!r}")
        return n
    return conv


MAX_DURATION_S = 10 * 365 * 86400.0  # ten years


def _duration(positive: bool) -> Callable[[Any], float]:
    def conv(v: Any) -> float:
        s = parse_duration(v)
        if positive and s <= 0:
            raise ValueError(f"must be above zero, got {v!r}")
        if s > MAX_DURATION_S:
            raise ValueError(f"must be at most ten years, got {v!r}")
        return s
    return conv


def _path(base: Path) -> Callable[[Any], Path]:
    def conv(v: Any) -> Path:
        p = Path(_str(v)).expanduser()
        return p if p.is_absolute() else (base / p)
    return conv


def _listen(v: Any) -> str:
    s = _str(v)
    if s.startswith("unix:"):
        if len(s) <= len("unix:"):
            raise ValueError("unix: needs a socket path, e.g. unix:/run/chunkd/chunkd.sock")
        return s
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT or unix:/path, got {s!r}")
    return s


def _url(v: Any) -> str:
    s = _str(v)
    if not (s.startswith("http://") or s.startswith("https://")) or len(s.split("://", 1)[1]) == 0:
        raise ValueError(f"expected an http:// or https:// URL, got {s!r}")
    return s


def _string_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise TypeError("expected a table of string values")
    return dict(v)


def _grants(containers: Mapping[str, "ContainerConfig"]) -> Callable[[Any], frozenset[str]]:
    """components.NAME.containers: a list of configured container names."""
    def conv(v: Any) -> frozenset[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TypeError("expected a list of container names")
        unknown = sorted(set(v) - set(containers))
        if unknown:
            raise ValueError(f"no container named {unknown[0]!r} (configured: {', '.join(sorted(containers)) or 'none'})")
        return frozenset(v)
    return conv


def _bounds(t: "_Table") -> dict[str, Any]:
    """The bounds of every remote read (chunkd/sources/bounds.py)."""
    return {
        "min_rate": t.get("min_rate", 64 * 1024, _size(1)),
        "low_speed_limit": t.get("low_speed_limit", 16 * 1024, _size(1)),
        "low_speed_time_s": t.get("low_speed_time", 10.0, _duration(True)),
    }


def _secret(v: Any) -> Secret:
    """A credential: ${VAR} is read from the environment (a missing variable is an error)."""
    return Secret(_expand_env(_str(v)))


def _cloud_keys(kind: str, t: "_Table") -> dict[str, Any]:
    """The keys of one cloud kind (docs/config.md, "Containers")."""
    if kind == "s3":
        return {"bucket": t.get("bucket", None, _str), "region": t.get("region", "us-east-1", _str)}
    if kind == "gcs":
        return {"bucket": t.get("bucket", None, _str),
                "credentials_file": t.get("credentials_file", None, _secret),
                "anonymous": t.get("anonymous", False, _bool)}
    keys = {"account": t.get("account", None, _str),
            "container_name": t.get("container_name", None, _str),
            "account_key": t.get("account_key", None, _secret),
            "sas_token": t.get("sas_token", None, _secret),
            "connection_string": t.get("connection_string", None, _secret)}
    given = [k for k in ("account_key", "sas_token", "connection_string") if keys[k] is not None]
    if len(given) > 1:
        raise ConfigError(t.file, t.key(given[1]), f"give one of account_key, sas_token and connection_string, "
                                                   f"not {' and '.join(given)}")
    return keys


def load_config(path: str | Path) -> Config:
    p = Path(path)
    file = str(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(file, None, f"cannot read: {e.strerror or e}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(file, None, f"not UTF-8 text: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, None, f"invalid TOML: {e}") from None
    return config_from_mapping(data, file=file, base=p.resolve().parent)


def config_from_mapping(data: Mapping[str, Any], *, file: str = "<config>", base: Path | None = None) -> Config:
    base = base or Path.cwd()
    top = _Table(file, "", dict(data))

    d = top.sub("daemon")
    daemon = DaemonConfig(
        listen=d.get("listen", DaemonConfig.listen, _listen),
        state_dir=d.get("state_dir", base / "state", _path(base)),
        cache_dir=d.get("cache_dir", None, _path(base)),
        log_format=d.get("log_format", DaemonConfig.log_format, _choice(LOG_FORMATS)),
        log_level=d.get("log_level", DaemonConfig.log_level, _choice(LOG_LEVELS)),
        auth_token=d.get("auth_token", "", _str),
        shutdown_grace_s=d.get("shutdown_grace", DaemonConfig.shutdown_grace_s, _duration(False)),
        max_attempts=d.get("max_attempts", DaemonConfig.max_attempts, _int(1)),
        job_retention_s=d.get("job_retention", DaemonConfig.job_retention_s, _duration(True)),
        max_request_bytes=d.get("max_request_bytes", DaemonConfig.max_request_bytes, _size(1024)),
        watchdog=d.get("watchdog", True, _bool),
        allow_unauthenticated=d.get("allow_unauthenticated", False, _bool),
        tls_cert=d.get("tls_cert", None, _path(base)),
        tls_key=d.get("tls_key", None, _path(base)),
        max_connections=d.get("max_connections", DaemonConfig.max_connections, _int(1, 100_000)),
        request_head_timeout_s=d.get("request_head_timeout", DaemonConfig.request_head_timeout_s, _duration(True)),
        delivery_workers=d.get("delivery_workers", 0, _int(0, 1024)),
        default_weight=d.get("default_weight", 1, _int(1, 1_000_000)),
    )
    d.finish()
    if (daemon.tls_cert is None) != (daemon.tls_key is None):
        raise ConfigError(file, "daemon.tls_cert" if daemon.tls_cert is None else "daemon.tls_key",
                          "tls_cert and tls_key go together")
    if daemon.tls_cert is not None and daemon.listen.startswith("unix:"):
        raise ConfigError(file, "daemon.tls_cert", "TLS is for a TCP listen address, not a unix socket")

    lt = top.sub("limits")
    dl = LimitsConfig()
    limits = LimitsConfig(
        max_chunk_size_bytes=lt.get("max_chunk_size", dl.max_chunk_size_bytes, _size(1, 1 << 31)),
        call_timeout_s=lt.get("call_timeout", dl.call_timeout_s, _duration(True)),
        instance_memory_bytes=lt.get("instance_memory", dl.instance_memory_bytes, _size(64 * 1024, 1 << 40)),
        max_buffered_bytes=lt.get("max_buffered_bytes", dl.max_buffered_bytes, _size(1)),
        max_pending_streams=lt.get("max_pending_streams", dl.max_pending_streams, _int(1)),
        max_queued_jobs=lt.get("max_queued_jobs", dl.max_queued_jobs, _int(1)),
        max_job_duration_s=lt.get("max_job_duration", 0.0, _duration(False)),
        source_retries=lt.get("source_retries", dl.source_retries, _int(0)),
        source_retry_backoff_s=lt.get("source_retry_backoff", dl.source_retry_backoff_s, _duration(False)),
        max_output_bytes=lt.get("max_output_bytes", dl.max_output_bytes, _size(0)),
    )
    lt.finish()
    if limits.max_buffered_bytes < limits.max_chunk_size_bytes:
        raise ConfigError(file, "limits.max_buffered_bytes",
                          "must be at least limits.max_chunk_size, or no chunk could ever be buffered")

    containers: dict[str, ContainerConfig] = {}
    ct = top.sub("containers")
    for name in list(ct.data):
        t = ct.sub(name)
        kind = t.require("kind", _choice(CONTAINER_KINDS))
        writable = t.get("writable", False, _bool)
        if kind == "http" and writable:
            raise ConfigError(file, t.key("writable"), "an http container is read-only: outputs go to "
                                                       "a file, s3, gcs or azure container")
        if kind == "file":
            root = t.require("root", _path(base))
            containers[name] = ContainerConfig(name=name, kind=kind, root=root, writable=writable,
                                               overwrite=t.get("overwrite", True, _bool))
        elif kind in CLOUD_KINDS:
            opts = {
                "prefix": t.get("prefix", "", _str),
                "endpoint_url": t.get("endpoint_url", None, _url),
                "range_size": t.get("range_size", 8 * 1024 * 1024, _size(1)),
                "timeout_s": t.get("timeout", 30.0, _duration(True)),
                **_bounds(t),
                **_cloud_keys(kind, t),
            }
            containers[name] = ContainerConfig(
                name=name, kind=kind, options=opts, writable=writable, overwrite=t.get("overwrite", True, _bool),
                part_size=t.get("part_size", DEFAULT_PART_SIZE, _size(MIN_PART_SIZE, MAX_PART_SIZE)))
        else:
            opts = {
                "base_url": t.get("base_url", None, _url),
                "headers": t.get("headers", dict[str, str](), _string_map),
                "timeout_s": t.get("timeout", 30.0, _duration(True)),
                "range_size": t.get("range_size", 8 * 1024 * 1024, _size(1)),
                "max_connections": t.get("max_connections", 16, _int(1)),
                **_bounds(t),
            }
            containers[name] = ContainerConfig(name=name, kind=kind, options=opts)
        t.finish()

    components: dict[str, ComponentConfig] = {}
    cp = top.sub("components")
    for name in list(cp.data):
        t = cp.sub(name)
        components[name] = ComponentConfig(
            name=name,
            path=t.require("path", _path(base)),
            instances=t.get("instances", 1, _int(1, 1024)),  # a thread and a store each
            max_bytes_per_second=t.get("max_bytes_per_second", 0, _size(0)),
            prefetch_chunks=t.get("prefetch_chunks", 2, _int(1)),
            containers=t.get("containers", None, _grants(containers)),
            weight=t.get("weight", 0, _int(1, 1_000_000)),
        )
        t.finish()
    tenants = _tenants(top, file, daemon, components) if "tenants" in top.data else {}
    telemetry = _telemetry(top) if "telemetry" in top.data else TelemetryConfig()
    cluster = _cluster(top, file, base, limits, components) if "cluster" in top.data else None
    top.finish()
    return Config(file=file, daemon=daemon, limits=limits, containers=containers, components=components,
                  cluster=cluster, tenants=tenants, telemetry=telemetry)


def _component_names(components: Mapping[str, ComponentConfig]) -> Callable[[Any], frozenset[str]]:
    def conv(v: Any) -> frozenset[str]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TypeError("expected a list of component names")
        unknown = sorted(set(v) - set(components))
        if unknown:
            raise ValueError(f"no component named {unknown[0]!r} (configured: {', '.join(sorted(components)) or 'none'})")
        return frozenset(v)
    return conv


MIN_TOKEN_LEN = 16


def _tenants(top: "_Table", file: str, daemon: DaemonConfig,
             components: Mapping[str, ComponentConfig]) -> dict[str, TenantConfig]:
    tenants: dict[str, TenantConfig] = {}
    owner: dict[str, str] = {}
    if daemon.auth_token:
        owner[daemon.auth_token] = "daemon.auth_token"
    tt = top.sub("tenants")
    for name in list(tt.data):
        t = tt.sub(name)
        if not _NAME.match(name):
            raise ConfigError(file, t.prefix, "a tenant name may only use letters, digits, '_' and '-'")
        token = t.require("token", _secret)
        if len(token) < MIN_TOKEN_LEN:
            raise ConfigError(file, t.key("token"), f"must be at least {MIN_TOKEN_LEN} characters")
        if token in owner:
            raise ConfigError(file, t.key("token"), f"the same token as {owner[token]}: every tenant needs its own")
        owner[token] = t.key("token")
        tenants[name] = TenantConfig(
            name=name, token=token,
            role=t.get("role", "submit", _choice(TENANT_ROLES)),
            components=t.get("components", None, _component_names(components)),
            weight=t.get("weight", 1, _int(1, 1_000_000)),
            max_jobs=t.get("max_jobs", 0, _int(0)),
            max_bytes_per_second=t.get("max_bytes_per_second", 0, _size(0)),
            max_buffered_bytes=t.get("max_buffered_bytes", 0, _size(0)),
        )
        t.finish()
    return tenants


def _ratio(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number from 0 to 1, got {type(v).__name__}")
    if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"must be from 0 to 1, got {v}")
    return float(v)


def _telemetry(top: "_Table") -> TelemetryConfig:
    t = top.sub("telemetry")
    c = TelemetryConfig(
        otlp_endpoint=t.get("otlp_endpoint", None, lambda v: _url(_expand_env(_str(v)))),
        service_name=t.get("service_name", "chunkd", _str),
        sample_ratio=t.get("sample_ratio", 1.0, _ratio),
    )
    t.finish()
    return c


_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(v: str) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ValueError(f"environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]
    return _ENV.sub(one, v)


def _nats_urls(v: Any) -> tuple[str, ...]:
    urls = [v] if isinstance(v, str) else v
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise TypeError("expected a URL or a non-empty list of URLs")
    out = []
    for u in urls:
        u = _expand_env(u)
        if not u.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"expected a nats://HOST:PORT URL, got {u.split('@')[-1]!r}")
        out.append(u)
    return tuple(out)


def _subject_token(what: str) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = _str(v)
        if not _NAME.match(s):
            raise ValueError(f"{what} may only use letters, digits, '_' and '-', got {s!r}")
        return s
    return conv


def _cluster(top: _Table, file: str, base: Path, limits: LimitsConfig,
             components: Mapping[str, ComponentConfig]) -> ClusterConfig:
    t = top.sub("cluster")
    c = ClusterConfig(
        nats_urls=t.require("nats_url", _nats_urls),
        node=t.get("node", socket.gethostname(), _subject_token("node")),
        stream=t.get("stream", ClusterConfig.stream, _subject_token("stream")),
        kv_bucket=t.get("kv_bucket", ClusterConfig.kv_bucket, _subject_token("kv_bucket")),
        ack_wait_s=t.get("ack_wait", ClusterConfig.ack_wait_s, _duration(True)),
        heartbeat_s=t.get("heartbeat", ClusterConfig.heartbeat_s, _duration(True)),
        tls_ca=t.get("tls_ca", None, _path(base)),
        tls_cert=t.get("tls_cert", None, _path(base)),
        tls_key=t.get("tls_key", None, _path(base)),
        creds_file=t.get("creds_file", None, _path(base)),
    )
    t.finish()
    # a node must stop delivering before JetStream redelivers: one heartbeat of margin,
    # plus the longest guest call that may be running when it decides to stop
    need = 2 * c.heartbeat_s + limits.call_timeout_s
    if c.ack_wait_s <= need:
        raise ConfigError(file, "cluster.ack_wait", f"must be above 2 x cluster.heartbeat + limits.call_timeout "
                                                    f"({need:g}s), got {c.ack_wait_s:g}s")
    if (c.tls_cert is None) != (c.tls_key is None):
        raise ConfigError(file, "cluster.tls_cert", "tls_cert and tls_key go together")
    for name in components:
        if not _NAME.match(name):
            raise ConfigError(file, f"components.{name}", "in cluster mode a component name is a NATS subject "
                                                          "token: only letters, digits, '_' and '-'")
    return c
