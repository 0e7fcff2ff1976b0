"""Remote sources and sinks, measured side by side in one run.

Servers on loopback, each in its own process: an aiohttp origin and Debian's
nginx (http), moto's server (s3), fake-gcs-server (gcs) and Azurite (azure).
For each kind and one object of --mib MiB:
  plain      a plain sequential ranged download with the library chunkd uses for
             that kind (aiohttp; aiobotocore for s3), 8 MiB ranges
  obstore    the same ranges with obstore (object_store), where it reaches the server
  source     chunkd's container alone: open + read_at in its read units
  job        a receive-only guest end to end (the C core_probe guest touches every byte
             and keeps nothing), so the row measures the host, not the guest; 1 MiB chunks
Each case runs --repeat times, alternating, and the best of each is kept.
  write      plain: a multipart upload with the same library (s3 multipart; gcs parts +
             compose; azure Put Block + Put Block List); sink: chunkd's sink, 1 MiB writes
Prints a table and writes JSON (--json, default bench/results/remote.json).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402
from chunkd.sinks import sink_container  # noqa: E402
from chunkd.sources import build_container  # noqa: E402
from chunkd.sources.azure_auth import AzureCredentials  # noqa: E402

RANGE = 8 * 1024 * 1024
PART = 8 * 1024 * 1024
WRITE_PIECE = 1024 * 1024
BUCKET = "chunkd-bench"
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CACHE_BIN = Path(os.environ.get("CHUNKD_CACHE", Path.home() / ".cache" / "chunkd")) / "bin"
GUEST = ROOT / "build" / "guests" / "core_probe_c.wasm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mbps(n: int, s: float) -> float:
    return n / s / 1e6


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


# -- plain downloads -------------------------------------------------------------------
async def plain_aiohttp(url: str, size: int, sign: Callable[[str, dict[str, str]], dict[str, str]] | None = None
                        ) -> float:
    t = time.perf_counter()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for off in range(0, size, RANGE):
            end = min(off + RANGE, size) - 1
            h = {"Range": f"bytes={off}-{end}"}
            if sign is not None:
                h = sign(url, h)
            async with s.get(url, headers=h) as r:
                assert r.status == 206, r.status
                await r.read()
    return mbps(size, time.perf_counter() - t)


async def plain_s3(endpoint: str, key: str, size: int) -> float:
    import aiobotocore.session
    t = time.perf_counter()
    async with aiobotocore.session.get_session().create_client("s3", endpoint_url=endpoint,
                                                               region_name="us-east-1") as c:
        for off in range(0, size, RANGE):
            end = min(off + RANGE, size) - 1
            r = await c.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{end}")
            async with r["Body"] as b:
                await b.read()
    return mbps(size, time.perf_counter() - t)


async def obstore_ranges(store: Any, key: str, size: int) -> float:
    import obstore
    t = time.perf_counter()
    for off in range(0, size, RANGE):
        data = await obstore.get_range_async(store, key, start=off, end=min(off + RANGE, size))
        assert len(data) == min(RANGE, size - off)
    return mbps(size, time.perf_counter() - t)


def obstore_store(kind: str, urls: dict[str, str]) -> Any:
    from obstore.store import AzureStore, GCSStore, S3Store
    nore: Any = {"max_retries": 0}
    if kind == "s3":
        return S3Store(BUCKET, endpoint=urls["s3"], region="us-east-1", access_key_id="bench",
                       secret_access_key="bench", client_options={"allow_http": True}, retry_config=nore)
    if kind == "gcs":
        return GCSStore(BUCKET, config={"base_url": urls["gcs"], "skip_signature": True},
                        client_options={"allow_http": True}, retry_config=nore)
    return AzureStore(BUCKET, account_name=AZ_ACCOUNT, account_key=AZ_KEY,
                      endpoint=urls["azure"], client_options={"allow_http": True}, retry_config=nore)


async def source_only(cfg: Any, name: str, size: int) -> float:
    c = build_container(cfg)
    try:
        blob = await c.open(name)
        unit = int(getattr(blob, "read_unit", RANGE))
        t = time.perf_counter()
        off = 0
        while off < size:
            data = await blob.read_at(off, unit)
            off += len(data)
        rate = mbps(size, time.perf_counter() - t)
        await blob.close()
        return rate
    finally:
        await c.close()


async def job(config: Any, container: str, name: str, size: int) -> tuple[float, bool]:
    rt = Runtime(config)
    await rt.start()
    try:
        t = time.perf_counter()
        j = await rt.run("touch", [container, name, str(1024 * 1024), "1", "-1", "quiet"])
        rate = mbps(size, time.perf_counter() - t)
        ok = j.state == "completed" and sum(d.stats.bytes for d in j.deliveries) == size
    finally:
        await rt.close()
    return rate, ok


# -- writes ------------------------------------------------------------------------------
async def plain_write_s3(endpoint: str, key: str, data: bytes) -> float:
    import aiobotocore.session
    t = time.perf_counter()
    async with aiobotocore.session.get_session().create_client("s3", endpoint_url=endpoint,
                                                               region_name="us-east-1") as c:
        up = await c.create_multipart_upload(Bucket=BUCKET, Key=key)
        parts = []
        for n, off in enumerate(range(0, len(data), PART), 1):
            r = await c.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=n,
                                    Body=data[off:off + PART])
            parts.append({"PartNumber": n, "ETag": r["ETag"]})
        await c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up["UploadId"],
                                          MultipartUpload={"Parts": parts})
    return mbps(len(data), time.perf_counter() - t)


async def plain_write_gcs(url: str, key: str, data: bytes) -> float:
    t = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        names = []
        for n, off in enumerate(range(0, len(data), PART), 1):
            part = f"plain-parts/{key}.{n}"
            q = urllib.parse.urlencode({"uploadType": "media", "name": part})
            async with s.post(f"{url}/upload/storage/v1/b/{BUCKET}/o?{q}", data=data[off:off + PART]) as r:
                assert r.status == 200, r.status
            names.append(part)
        for i in range(0, len(names), 32):  # 256 MiB at 8 MiB parts: one compose
            assert len(names) <= 32, "the plain writer composes one round"
        dest = urllib.parse.quote(key, safe="")
        async with s.post(f"{url}/storage/v1/b/{BUCKET}/o/{dest}/compose",
                          json={"sourceObjects": [{"name": p} for p in names]}) as r:
            assert r.status == 200, r.status
        for p in names:
            async with s.delete(f"{url}/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(p, safe='')}") as r:
                pass
    return mbps(len(data), time.perf_counter() - t)


async def plain_write_azure(endpoint: str, key: str, data: bytes) -> float:
    creds = AzureCredentials(account=AZ_ACCOUNT, account_key=base64.b64decode(AZ_KEY))
    blob = f"{endpoint}/{BUCKET}/{urllib.parse.quote(key)}"
    t = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        ids = []
        for n, off in enumerate(range(0, len(data), PART), 1):
            bid = base64.b64encode(f"plain{n:08d}".encode()).decode()
            u = f"{blob}?comp=block&blockid={urllib.parse.quote(bid, safe='')}"
            body = data[off:off + PART]
            u, h = creds.sign("PUT", u, {"Content-Length": str(len(body)), "Content-Type": "application/octet-stream"})
            async with s.put(u, data=body, headers=h) as r:
                assert r.status == 201, r.status
            ids.append(bid)
        xml = ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
               + "".join(f"<Latest>{b}</Latest>" for b in ids) + "</BlockList>").encode()
        u, h = creds.sign("PUT", f"{blob}?comp=blocklist",
                          {"Content-Length": str(len(xml)), "Content-Type": "application/octet-stream"})
        async with s.put(u, data=xml, headers=h) as r:
            assert r.status == 201, r.status
    return mbps(len(data), time.perf_counter() - t)


async def sink_write(cfg: Any, name: str, data: bytes, n: int) -> float:
    source = build_container(cfg)
    try:
        w = sink_container(cfg.name, cfg, source)
        t = time.perf_counter()
        sink = await w.create(name, job_id=f"bench-{n}", attempt=1, overwrite=True)
        view = memoryview(data)
        for off in range(0, len(data), WRITE_PIECE):
            await sink.write(bytes(view[off:off + WRITE_PIECE]))
        await sink.commit()
        return mbps(len(data), time.perf_counter() - t)
    finally:
        await source.close()


# -- servers -----------------------------------------------------------------------------
def start_nginx(folder: Path, port: int, tmp: Path) -> subprocess.Popen[bytes] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return None
    conf = tmp / "nginx.conf"
    conf.write_text(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; client_body_temp_path {tmp}/nb; proxy_temp_path {tmp}/np;
  fastcgi_temp_path {tmp}/nf; uwsgi_temp_path {tmp}/nu; scgi_temp_path {tmp}/ns;
  server {{ listen 127.0.0.1:{port}; location /files/ {{ alias {folder}/; }} }} }}
""")
    return subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.DEVNULL)


async def put_object(kind: str, urls: dict[str, str], key: str, path: Path) -> None:
    if kind == "s3":
        import boto3
        s3 = boto3.client("s3", endpoint_url=urls["s3"], region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(path), BUCKET, key)
    elif kind == "gcs":
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{urls['gcs']}/storage/v1/b", json={"name": BUCKET}) as r:
                assert r.status in (200, 409), r.status
            q = urllib.parse.urlencode({"uploadType": "media", "name": key})
            async with s.post(f"{urls['gcs']}/upload/storage/v1/b/{BUCKET}/o?{q}", data=path.read_bytes()) as r:
                assert r.status == 200, r.status
    else:
        creds = AzureCredentials(account=AZ_ACCOUNT, account_key=base64.b64decode(AZ_KEY))
        async with aiohttp.ClientSession() as s:
            u, h = creds.sign("PUT", f"{urls['azure']}/{BUCKET}?restype=container",
                              {"Content-Length": "0", "Content-Type": "application/octet-stream"})
            async with s.put(u, headers=h) as r:
                assert r.status in (201, 409), r.status
        await plain_write_azure(urls["azure"], key, path.read_bytes())


NOTES = {
    "http": "aiohttp origin (own process)", "nginx": "Debian nginx", "s3": "moto server",
    "gcs": "fake-gcs-server", "azure": "Azurite",
}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    size = args.mib * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-bench-"))
    folder = tmp / "files"
    folder.mkdir()
    data = os.urandom(size)
    (folder / "obj.bin").write_bytes(data)
    for path in (tmp, folder, folder / "obj.bin"):  # nginx's workers run as another user
        path.chmod(0o755)
    ports = {k: free_port() for k in ("http", "nginx", "s3", "gcs", "azure")}
    urls = {"http": f"http://127.0.0.1:{ports['http']}/files", "nginx": f"http://127.0.0.1:{ports['nginx']}/files",
            "s3": f"http://127.0.0.1:{ports['s3']}", "gcs": f"http://127.0.0.1:{ports['gcs']}",
            "azure": f"http://127.0.0.1:{ports['azure']}/{AZ_ACCOUNT}"}
    procs: list[subprocess.Popen[bytes]] = [
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "origin.py"), str(folder), str(ports["http"])]),
        subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(CACHE_BIN / "fake-gcs-server"), "-scheme", "http", "-host", "127.0.0.1", "-port",
                          str(ports["gcs"]), "-backend", "memory", "-external-url", urls["gcs"], "-public-host",
                          f"127.0.0.1:{ports['gcs']}", "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp),
        subprocess.Popen([str(CACHE_BIN / "azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort",
                          str(ports["azure"]), "--inMemoryPersistence", "--skipApiVersionCheck", "--loose",
                          "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp),
    ]
    ng = start_nginx(folder, ports["nginx"], tmp)
    kinds = ["http", "nginx", "s3", "gcs", "azure"] if ng is not None else ["http", "s3", "gcs", "azure"]
    if ng is not None:
        procs.append(ng)
    cases: list[dict[str, Any]] = []
    try:
        await wait_http(f"{urls['http']}/obj.bin")
        if ng is not None:
            await wait_http(f"{urls['nginx']}/obj.bin")
        await wait_http(urls["s3"])
        await wait_http(f"{urls['gcs']}/storage/v1/b")
        await wait_http(f"{urls['azure']}?comp=list")
        for kind in ("s3", "gcs", "azure"):
            await put_object(kind, urls, "obj.bin", folder / "obj.bin")
        az = {"account": AZ_ACCOUNT, "account_key": AZ_KEY, "container_name": BUCKET, "endpoint_url": urls["azure"]}
        containers = {
            "http": {"kind": "http", "base_url": urls["http"], "range_size": "8MiB"},
            "nginx": {"kind": "http", "base_url": urls["nginx"], "range_size": "8MiB"},
            "s3": {"kind": "s3", "bucket": BUCKET, "endpoint_url": urls["s3"], "range_size": "8MiB",
                   "writable": True, "part_size": "8MiB"},
            "gcs": {"kind": "gcs", "bucket": BUCKET, "endpoint_url": urls["gcs"], "range_size": "8MiB",
                    "writable": True, "part_size": "8MiB"},
            "azure": {"kind": "azure", **az, "range_size": "8MiB", "writable": True, "part_size": "8MiB"},
        }
        config = config_from_mapping({
            "daemon": {"state_dir": str(tmp / "state"), "cache_dir": str(ROOT / "state" / "cache")},
            "limits": {"max_chunk_size": "4MiB", "call_timeout": "30s"},
            "containers": {k: v for k, v in containers.items() if k in kinds},
            "components": {"touch": {"path": str(GUEST), "prefetch_chunks": 8}},
        }, file="bench")
        creds = AzureCredentials(account=AZ_ACCOUNT, account_key=base64.b64decode(AZ_KEY))

        def plain(kind: str) -> Awaitable[float]:
            if kind in ("http", "nginx"):
                return plain_aiohttp(f"{urls[kind]}/obj.bin", size)
            if kind == "s3":
                return plain_s3(urls["s3"], "obj.bin", size)
            if kind == "gcs":
                return plain_aiohttp(f"{urls['gcs']}/download/storage/v1/b/{BUCKET}/o/obj.bin?alt=media", size)
            return plain_aiohttp(f"{urls['azure']}/{BUCKET}/obj.bin", size,
                                 sign=lambda u, h: creds.sign("GET", u, h)[1])

        for kind in kinds:
            plains: list[float] = []
            srcs: list[float] = []
            obs: list[float] = []
            jobs: list[tuple[float, bool]] = []
            for _ in range(args.repeat):  # alternate, keep the best of each: warm-up favours neither
                plains.append(await plain(kind))
                srcs.append(await source_only(config.containers[kind], "obj.bin", size))
                if kind in ("s3", "gcs", "azure"):
                    try:
                        obs.append(await obstore_ranges(obstore_store(kind, urls), "obj.bin", size))
                    except Exception as e:  # noqa: BLE001 - a peer that cannot reach the server is reported
                        print(f"obstore {kind}: {type(e).__name__}: {str(e)[:200]}", file=sys.stderr)
                jobs.append(await job(config, kind, "obj.bin", size))
            cases += [{"kind": kind, "path": "plain", "mb_per_s": round(max(plains), 1)},
                      {"kind": kind, "path": "source", "mb_per_s": round(max(srcs), 1)},
                      {"kind": kind, "path": "job", "mb_per_s": round(max(r for r, _ in jobs), 1),
                       "bytes_ok": all(ok for _, ok in jobs)}]
            if obs:
                cases.append({"kind": kind, "path": "obstore", "mb_per_s": round(max(obs), 1)})
        for kind in ("s3", "gcs", "azure"):
            pw: list[float] = []
            sw: list[float] = []
            for i in range(args.write_repeat):  # the same two names each round: the emulators keep
                # one copy each, not one per round (fake-gcs-server's memory backend slows as it grows)
                pw.append(await (plain_write_s3(urls["s3"], "w/plain.bin", data) if kind == "s3" else
                                 plain_write_gcs(urls["gcs"], "w/plain.bin", data) if kind == "gcs" else
                                 plain_write_azure(urls["azure"], "w/plain.bin", data)))
                sw.append(await sink_write(config.containers[kind], "w/sink.bin", data, i))
            cases += [{"kind": kind, "path": "write_plain", "mb_per_s": round(max(pw), 1)},
                      {"kind": kind, "path": "write_sink", "mb_per_s": round(max(sw), 1)}]
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    result = {"object_mib": args.mib, "range_bytes": RANGE, "part_bytes": PART, "repeat": args.repeat,
              "write_repeat": args.write_repeat,
              "cases": cases}
    print(f"\nremote sources and sinks, {args.mib} MiB object, 8 MiB ranges and parts, loopback servers "
          "in their own processes")
    print(f"{'kind':<7}{'path':<13}{'MB/s':>9}{'vs plain':>10}  note")
    for kind in kinds:
        rows = [c for c in cases if c["kind"] == kind]
        base = next(c["mb_per_s"] for c in rows if c["path"] == "plain")
        wbase = next((c["mb_per_s"] for c in rows if c["path"] == "write_plain"), None)
        for c in rows:
            ref = wbase if c["path"].startswith("write") else base
            note = {"plain": f"ranged GETs, {'aiobotocore' if kind == 's3' else 'aiohttp'} ({NOTES[kind]})",
                    "obstore": "obstore (object_store) ranged GETs", "source": "chunkd container read_at",
                    "job": f"receive-only guest end to end, bytes {'ok' if c.get('bytes_ok') else 'WRONG'}",
                    "write_plain": "plain multipart upload, same library",
                    "write_sink": "chunkd sink: create, 1 MiB writes, commit"}[c["path"]]
            print(f"{kind:<7}{c['path']:<13}{c['mb_per_s']:>9.1f}{c['mb_per_s'] / (ref or 1):>9.2f}x  {note}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="object size in MiB (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of each plain/source/write case, best kept")
    ap.add_argument("--write-repeat", type=int, default=5, help="rounds of each write case, best kept")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "remote.json"))
    a = ap.parse_args()
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    res = asyncio.run(main(a))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.json}")
    if not all(c.get("bytes_ok", True) for c in res["cases"]):
        sys.exit(1)
