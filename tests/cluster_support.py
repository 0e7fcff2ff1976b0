"""A real nats-server (JetStream) on loopback, a TCP proxy that can cut a node off
from it, and chunkd nodes configured for cluster mode."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.service_support import Server, free_port, wait_for


_NATS_SERVER: str | None = None


def nats_server_binary() -> str:
    """A current nats-server, built by scripts/install-nats-server (go install) into
    ~/.cache/chunkd/bin; CHUNKD_NATS_SERVER names another (e.g. Debian's 2.9.10)."""
    global _NATS_SERVER
    if _NATS_SERVER is None:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run([str(root / "scripts" / "install-nats-server")], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()
        _NATS_SERVER = out[-1]
    return _NATS_SERVER


@dataclass
class NatsServer:
    store: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", str(self.store)], stdout=self._logf, stderr=subprocess.STDOUT)
        wait_for(self._listening, 20, 0.05, "nats-server to listen")
        return self

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if hasattr(self, "_logf"):
            self._logf.close()


class CuttableProxy:
    """Forwards 127.0.0.1:port to the NATS server until cut (then drops every connection
    and refuses new ones until healed)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", self.port))
        self._srv.listen(16)
        self._srv.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                continue
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._cut.is_set():
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._socks.clear()

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._srv.close()
        self._thread.join(2)


def node_config(tmp: Path, name: str, nats_url: str, guests: dict[str, Path], blobs: Path, cache: Path, *,
                ack_wait: str = "6s", heartbeat: str = "1s", extra_components: str = "",
                daemon_extra: str = "") -> tuple[Path, int]:
    port = free_port()
    cfg = tmp / f"{name}.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / name}"
cache_dir = "{cache}"
log_format = "json"
watchdog = false
max_attempts = 5
shutdown_grace = "1s"
{daemon_extra}
[limits]
call_timeout = "2s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256]
path = "{guests['sha256']}"
instances = 1
[components.paced]
path = "{guests['sha256']}"
instances = 1
max_bytes_per_second = "2MiB"
{extra_components}
[cluster]
nats_url = "{nats_url}"
node = "{name}"
ack_wait = "{ack_wait}"
heartbeat = "{heartbeat}"
""")
    return cfg, port


def start_node(tmp: Path, name: str, nats_url: str, guests: dict[str, Path], blobs: Path, cache: Path,
               env: dict[str, str] | None = None, **kw: str) -> Server:
    cfg, port = node_config(tmp, name, nats_url, guests, blobs, cache, **kw)
    return Server(cfg, port, tmp / f"{name}.log", env=dict(env or {})).start()


def events(server: Server, name: str) -> list[dict[str, Any]]:
    return [e for e in server.log_events() if e.get("event") == name]


def wait_all(server: Server, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    out = {}
    for jid in ids:
        out[jid] = server.wait_job(jid, max(1.0, deadline - time.monotonic()))
    return out
