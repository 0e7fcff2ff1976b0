"""The blob-store emulators, real servers on 127.0.0.1, started per test session:
fake-gcs-server (GCS) and Azurite (Azure Blob), both installed by
scripts/install-emulators into ~/.cache/chunkd/bin (or named by CHUNKD_FAKE_GCS /
CHUNKD_AZURITE). moto's S3 server is in remote_support.moto_server.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

CACHE_BIN = Path(os.environ.get("CHUNKD_CACHE", Path.home() / ".cache" / "chunkd")) / "bin"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public: it is in Microsoft's docs).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
START_TIMEOUT_S = 30.0


def _binary(env: str, name: str) -> str:
    found = os.environ.get(env) or (str(CACHE_BIN / name) if (CACHE_BIN / name).exists() else shutil.which(name))
    if not found:
        raise RuntimeError(f"{name} is not installed: run scripts/install-emulators")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not answer at {url} within {START_TIMEOUT_S}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _process(args: list[str], ready_url: str) -> Iterator[None]:
    with tempfile.TemporaryDirectory(prefix="chunkd-emu-") as tmp:
        log = Path(tmp) / "log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            _wait_http(ready_url, proc, log)
            yield
        finally:
            proc.terminate()  # Azurite ignores SIGTERM: a short wait, then SIGKILL (in-memory stores)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def gcs_create_bucket(url: str, bucket: str) -> None:
    req = urllib.request.Request(f"{url}/storage/v1/b", data=f'{{"name": "{bucket}"}}'.encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=10).close()


@contextlib.contextmanager
def fake_gcs_server(*buckets: str) -> Iterator[str]:
    """fake-gcs-server (in memory, plain HTTP) with `buckets` made: its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [_binary("CHUNKD_FAKE_GCS", "fake-gcs-server"), "-scheme", "http", "-host", "127.0.0.1",
            "-port", str(port), "-backend", "memory", "-external-url", url, "-public-host", f"127.0.0.1:{port}",
            "-log-level", "error"]
    with _process(args, f"{url}/storage/v1/b"):
        for b in buckets:
            gcs_create_bucket(url, b)
        yield url


@contextlib.contextmanager
def azurite(*containers: str) -> Iterator[str]:
    """Azurite's blob service (in memory) with `containers` made: the account's endpoint URL
    (http://127.0.0.1:PORT/devstoreaccount1)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [_binary("CHUNKD_AZURITE", "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent"]
    with _process(args, f"{base}/{AZURITE_ACCOUNT}?comp=list"):
        endpoint = f"{base}/{AZURITE_ACCOUNT}"
        for c in containers:
            azure_blob(endpoint).create_container(c)
        yield endpoint


def azure_connection_string(endpoint: str) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};")


def azure_blob(endpoint: str) -> Any:
    """azure-storage-blob's own client of the Azurite at `endpoint` (an independent view of
    what chunkd left there)."""
    from azure.storage.blob import BlobServiceClient
    return BlobServiceClient.from_connection_string(azure_connection_string(endpoint))
