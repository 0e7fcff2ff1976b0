"""Secure defaults of the control API: no open API by accident, TLS that the client verifies."""
from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from chunkd.cli import EXIT_CONFIG, main
from chunkd.config import load_config
from chunkd.errors import ConfigError
from chunkd.security import is_loopback_host
from tests.service_support import ROOT, Server, free_port, wait_for
from tests.waits import accepted_from


def _config(tmp_path: Path, state_dir: Path, guests: dict[str, Path], listen: str, extra: str = "") -> Path:
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "{listen}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
{extra}
[containers.local]
kind = "file"
root = "{tmp_path}"
[components.sha256]
path = "{guests['sha256']}"
""")
    return cfg


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True),
                                           ("[::1]", True), ("0.0.0.0", False), ("[::]", False),
                                           ("10.1.2.3", False), ("example.org", False)])
def test_which_hosts_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_an_open_api_on_a_public_address_is_refused_at_start(tmp_path: Path, state_dir: Path,
                                                              guests: dict[str, Path], capsys: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHUNKD_AUTH_TOKEN", raising=False)
    cfg = _config(tmp_path, state_dir, guests, f"0.0.0.0:{free_port()}")
    assert main(["serve", "-c", str(cfg)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{cfg}: daemon.listen:" in err and "no token is set" in err and "allow_unauthenticated" in err, err
    assert not (tmp_path / "state").exists()  # refused before anything started


def test_a_token_or_an_explicit_opt_out_lets_it_start(tmp_path: Path, state_dir: Path,
                                                      guests: dict[str, Path]) -> None:
    for extra, env in (("", {"CHUNKD_AUTH_TOKEN": "s3cret"}), ("allow_unauthenticated = true", {})):
        port = free_port()
        cfg = _config(tmp_path, state_dir, guests, f"0.0.0.0:{port}", extra)
        s = Server(cfg, port, tmp_path / "daemon.log", env)
        try:
            s.start()
            serving = [e for e in s.log_events() if e.get("event") == "serving"]
            assert serving and serving[-1]["auth"] is bool(env), serving
        finally:
            s.stop()


def test_tls_keys_go_together(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\ntls_cert = "cert.pem"\n')
    with pytest.raises(ConfigError, match="daemon.tls_key: tls_cert and tls_key go together"):
        load_config(cfg)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chunkd test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunkd", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_the_api_over_tls_is_verified_by_the_client(tmp_path: Path, state_dir: Path,
                                                    guests: dict[str, Path]) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    cfg = _config(tmp_path, state_dir, guests, f"127.0.0.1:{port}",
                  f'tls_cert = "{cert}"\ntls_key = "{key}"\nauth_token = "t0ken"')
    s = Server(cfg, port, tmp_path / "daemon.log")
    ctx = ssl.create_default_context(cafile=str(cert))

    def healthy() -> bool:
        assert s.proc is not None and s.proc.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=5, context=ctx) as r:
                return bool(r.status == 200 and json.loads(r.read())["status"] == "ok")
        except OSError:
            return False
    try:
        s.start(wait=False)
        wait_for(healthy, 90, 0.2, "the TLS daemon to answer")
        assert [e for e in s.log_events() if e.get("event") == "serving"][-1]["tls"] is True
        url = f"https://127.0.0.1:{port}"
        ok = _cli("status", "--url", url, "--token", "t0ken", "--cacert", str(cert))
        assert ok.returncode == 0, ok.stderr
        via_config = _cli("status", "-c", str(cfg))  # https, the daemon's own certificate as the CA
        assert via_config.returncode == 0, via_config.stderr
        unverified = _cli("status", "--url", url, "--token", "t0ken")  # the system CAs do not know it
        assert unverified.returncode == 5 and "certificate verify failed" in unverified.stderr, unverified.stderr
        wrong_token = _cli("status", "--url", url, "--token", "nope", "--cacert", str(cert))
        assert wrong_token.returncode != 0 and "401" in wrong_token.stderr + wrong_token.stdout
        with pytest.raises(OSError):  # plain HTTP to the TLS port gets nothing
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        s.stop()


def test_the_image_config_asks_for_a_token(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config" / "docker.toml")
    assert not is_loopback_host(cfg.daemon.listen.rpartition(":")[0])
    assert not cfg.daemon.auth_token and not cfg.daemon.allow_unauthenticated  # CHUNKD_AUTH_TOKEN is required


def test_slow_and_surplus_api_connections_are_cut(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> None:
    """A slowloris (request heads that never end) holds a connection for at most
    daemon.request_head_timeout; past daemon.max_connections a connection is closed at
    once; the API keeps answering everyone else."""
    import socket
    import time as _time
    port = free_port()
    cfg = _config(tmp_path, state_dir, guests, f"127.0.0.1:{port}",
                  'max_connections = 8\nrequest_head_timeout = "1s"')
    s = Server(cfg, port, tmp_path / "daemon.log")
    held: list[socket.socket] = []
    try:
        s.start()
        for _ in range(8):
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
            held.append(c)
        # once the daemon has accept()ed all 8 (it counts connections in the order it accepts
        # them), the next one is over the limit
        assert s.proc is not None
        pid, ports = s.proc.pid, {c.getsockname()[1] for c in held}
        wait_for(lambda: accepted_from(pid, ports) == 8, 10, 0.01, "the daemon to accept the 8 connections")
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = _time.monotonic()
        assert extra.recv(100) == b"" and _time.monotonic() - t0 < 1  # closed at once: over the limit
        extra.close()
        t0 = _time.monotonic()
        for c in held:  # each slowloris is cut after the head timeout
            assert c.recv(100) == b""
        assert _time.monotonic() - t0 < 3
        assert s.healthy()  # everyone else is served again
        events = [e["event"] for e in s.log_events()]
        assert "api_connection_refused" in events and "api_request_head_too_slow" in events
    finally:
        for c in held:
            c.close()
        s.stop()


def test_the_head_tracker_follows_requests_on_a_connection() -> None:
    """Pure logic: heads, Content-Length bodies, pipelined requests, any split of the bytes."""
    from chunkd.apiguard import HeadTracker
    reqs = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"a\": \"\r\n\r\n\"}"
            b"GET /b HTTP/1.1\r\n")
    for cut in range(1, len(reqs)):
        for step in (1, 7, cut):
            t = HeadTracker()
            data = reqs
            while data:
                t.feed(data[:step])
                data = data[step:]
            assert t.heads == 3 and t.in_head, (cut, step, t.state)
    t = HeadTracker()
    t.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert t.state == "body" and t.body_left == 2 and t.heads == 1
    t.feed(b"cd")
    assert t.state == "idle" and not t.in_head
    t.feed(b"G")
    assert t.in_head and t.heads == 2
    t = HeadTracker()
    t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n")
    assert t.state == "lost"  # not followed further (aiohttp bounds it)


def test_a_slowloris_on_a_later_keep_alive_request_is_cut(tmp_path: Path, state_dir: Path,
                                                          guests: dict[str, Path]) -> None:
    """A client that sends one request at once, then trickles the next head on the same
    keep-alive connection, is cut after request_head_timeout, like a first-head slowloris."""
    import socket
    import time as _time
    port = free_port()
    cfg = _config(tmp_path, state_dir, guests, f"127.0.0.1:{port}", 'request_head_timeout = "1s"')
    s = Server(cfg, port, tmp_path / "daemon.log")
    try:
        s.start()
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = c.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        t0 = _time.monotonic()
        cut = False
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n":  # never the end of the head
            try:
                c.sendall(bytes([b]))
                c.settimeout(0.3)
                if c.recv(100) == b"":
                    cut = True
                    break
            except socket.timeout:
                continue
            except OSError:
                cut = True
                break
        took = _time.monotonic() - t0
        assert cut and took < 4, (cut, took)
        c.close()
        assert s.healthy()
        assert "api_request_head_too_slow" in [e["event"] for e in s.log_events()]
    finally:
        s.stop()
