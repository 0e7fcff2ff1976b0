"""Cluster mode against a real nats-server with TLS (a CA, a server certificate, client
certificates required) and a user and password, all made here; the last edges of the
queue: a lost last delivery is reaped, and max_queued_jobs holds in cluster mode."""
from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cluster_support import NatsServer, events, nats_server_binary, node_config, start_node
from tests.service_support import Server, free_port, wait_for


def _certs(folder: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, key: Any, cert: Any) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("chunkd test CA")).issuer_name(name("chunkd test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca)
    for stem, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", [x509.DNSName("chunkd-node")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(stem, key, cert)
    # a second CA the server's certificate is not from
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = (x509.CertificateBuilder().subject_name(name("other CA")).issuer_name(name("other CA"))
             .public_key(other_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(other_key, hashes.SHA256()))
    write("other-ca", other_key, other)
    return {k: folder / f"{k}.pem" for k in ("ca", "server", "client", "other-ca")} | {
        "server-key": folder / "server-key.pem", "client-key": folder / "client-key.pem"}


@pytest.fixture
def secure_nats(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    certs = _certs(tmp_path)
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(f"""
listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{tmp_path / 'js'}" }}
tls {{
  cert_file: "{certs['server']}"
  key_file: "{certs['server-key']}"
  ca_file: "{certs['ca']}"
  verify: true
  timeout: 2
}}
authorization {{ user: "chunkd", password: "s3cret" }}
""")
    log = open(tmp_path / "nats.log", "ab")
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        import socket
        wait_for(lambda: _listening(port, socket), 20, 0.05, "nats-server (TLS) to listen")
        yield port, certs
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _listening(port: int, socket: Any) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _secure_node(tmp: Path, name: str, url: str, certs: dict[str, Path], guests: dict[str, Path], blobs: Path,
                 cache: Path, *, ca: str = "ca", client: bool = True) -> Server:
    cfg, port = node_config(tmp, name, url, guests, blobs, cache)
    tls = f'tls_ca = "{certs[ca]}"\n'
    if client:
        tls += f'tls_cert = "{certs["client"]}"\ntls_key = "{certs["client-key"]}"\n'
    cfg.write_text(cfg.read_text() + tls)
    return Server(cfg, port, tmp / f"{name}.log")


def test_a_node_joins_over_tls_with_a_password_and_runs_jobs(tmp_path: Path, state_dir: Path,
                                                              guests: dict[str, Path], secure_nats: Any) -> None:
    port, certs = secure_nats
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a.bin").write_bytes(b"x" * 100_000)
    node = _secure_node(tmp_path, "n1", f"tls://chunkd:s3cret@127.0.0.1:{port}", certs, guests, blobs,
                        state_dir / "cache")
    try:
        node.start()
        assert events(node, "cluster_joined")
        job = node.wait_job(node.submit("sha256", ["local", "a.bin"]), 60)
        assert job["state"] == "completed" and job["node"] == "n1", job
    finally:
        node.stop()


@pytest.mark.parametrize("case", ["wrong password", "untrusted server", "no client certificate"])
def test_a_wrong_credential_is_a_clear_error_at_start(tmp_path: Path, state_dir: Path, guests: dict[str, Path],
                                                      secure_nats: Any, case: str) -> None:
    port, certs = secure_nats
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    url = f"tls://chunkd:{'nope' if case == 'wrong password' else 's3cret'}@127.0.0.1:{port}"
    node = _secure_node(tmp_path, "bad", url, certs, guests, blobs, state_dir / "cache",
                        ca="other-ca" if case == "untrusted server" else "ca", client=case != "no client certificate")
    t0 = time.monotonic()
    node.start(wait=False)
    try:
        code = node.wait_exit(30)
    finally:
        node.stop()
    took = time.monotonic() - t0
    failed = events(node, "startup_failed")
    assert code != 0 and failed, (code, node.log.read_text()[-2000:])
    assert "cannot reach NATS at" in failed[-1]["error"] and "s3cret" not in failed[-1]["error"], failed
    assert took < 20, took  # not a hang


def test_a_lost_last_delivery_is_reaped(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> None:
    """max_attempts 1: the node running the job's only allowed delivery dies; JetStream will
    not redeliver it, and the record is ended failed by the reaper of another node."""
    nats = NatsServer(tmp_path / "js", tmp_path / "nats.log").start()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "long.bin").write_bytes(b"y" * (12 * 1024 * 1024))
    nodes: list[Server] = []
    try:
        for name in ("n1", "n2"):
            cfg, port = node_config(tmp_path, name, nats.url, guests, blobs, state_dir / "cache")
            cfg.write_text(cfg.read_text().replace("max_attempts = 5", "max_attempts = 1"))
            nodes.append(Server(cfg, port, tmp_path / f"{name}.log").start())
        jid = nodes[0].submit("paced", ["local", "long.bin"])  # ~6 s at 2 MiB/s
        owner = wait_for(lambda: (j := nodes[0].job(jid))["state"] == "running" and j["node"], 30, 0.1,
                         "the job to run")
        victim = nodes[0] if owner == "n1" else nodes[1]
        other = nodes[1] if victim is nodes[0] else nodes[0]
        assert victim.proc is not None
        killed = time.monotonic()
        victim.proc.kill()
        victim.proc.wait(10)
        job = other.wait_job(jid, 60)
        took = time.monotonic() - killed
        assert job["state"] == "failed" and "gave up: its last allowed attempt (1 of" in job["error"], job
        assert events(other, "job_reaped")
        print(f"lost last delivery: reaped {took:.1f} s after the kill (ack_wait 6 s, heartbeat 1 s)")
        assert took < 6 + 1 + 2 * 1 + 10
    finally:
        for n in nodes:
            n.stop()
        nats.stop()


def test_max_queued_jobs_holds_in_cluster_mode(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> None:
    """A burst of 30 submissions to a node whose queue holds 5: the rest get 429, and every
    accepted job completes."""
    nats = NatsServer(tmp_path / "js", tmp_path / "nats.log").start()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "s.bin").write_bytes(b"z" * 2 * 1024 * 1024)
    cfg, port = node_config(tmp_path, "n1", nats.url, guests, blobs, state_dir / "cache")
    cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\nmax_queued_jobs = 5\n"))
    node = Server(cfg, port, tmp_path / "n1.log")
    try:
        node.start()
        body = {"component": "paced", "args": ["local", "s.bin"]}  # ~1 s each, one instance
        with ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(lambda _: node.request("POST", "/v1/jobs", body), range(30)))
        accepted = [b["job_id"] for s, b in answers if s == 202]
        refused = [b for s, b in answers if s == 429]
        assert len(accepted) + len(refused) == 30, answers
        assert refused and all("queue is full" in b["error"] for b in refused)
        assert 5 <= len(accepted) <= 7, len(accepted)  # the queue, plus the job running
        for jid in accepted:
            assert node.wait_job(jid, 90)["state"] == "completed"
    finally:
        node.stop()
        nats.stop()
