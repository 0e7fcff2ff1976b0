"""Remote sources, measured side by side in one run.

For each remote kind (http: an aiohttp origin in its own process; s3: moto's
server in its own process) and one object of --mib MiB:
  plain   a plain sequential ranged download (aiohttp / aiobotocore), 8 MiB ranges
  source  chunkd's container alone: open + read_at in its read units
  job     the sha256 example over that container end to end (digest checked)
Prints a table and writes JSON (--json, default bench/results/remote.json).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402
from chunkd.sources import build_container  # noqa: E402

RANGE = 8 * 1024 * 1024
BUCKET = "chunkd-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def plain_http(url: str, size: int) -> float:
    t = time.perf_counter()
    async with aiohttp.ClientSession() as s:
        for off in range(0, size, RANGE):
            end = min(off + RANGE, size) - 1
            async with s.get(url, headers={"Range": f"bytes={off}-{end}"}) as r:
                assert r.status == 206
                await r.read()
    return size / (time.perf_counter() - t) / 1e6


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
    return size / (time.perf_counter() - t) / 1e6


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
        rate = size / (time.perf_counter() - t) / 1e6
        await blob.close()
        return rate
    finally:
        await c.close()


async def job(config: Any, container: str, name: str, size: int, digest: str) -> tuple[float, bool]:
    rt = Runtime(config)
    out: list[str] = []
    rt.output_listeners.append(lambda j, c, fd, line: out.append(line))
    await rt.start()
    try:
        t = time.perf_counter()
        j = await rt.run("sha256", ["--chunk-size=1048576", container, name])
        rate = size / (time.perf_counter() - t) / 1e6
    finally:
        await rt.close()
    return rate, (j.state == "completed" and f"{digest}  {name}" in out)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    size = args.mib * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-bench-"))
    folder = tmp / "files"
    folder.mkdir()
    data = os.urandom(size)
    (folder / "obj.bin").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    hport, sport = free_port(), free_port()
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "bench" / "origin.py"), str(folder), str(hport)]),
        subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(sport)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        http_base = f"http://127.0.0.1:{hport}/files"
        s3_url = f"http://127.0.0.1:{sport}"
        await wait_http(f"{http_base}/obj.bin")
        await wait_http(s3_url)
        import boto3
        s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.upload_file(str(folder / "obj.bin"), BUCKET, "obj.bin")
        config = config_from_mapping({
            "daemon": {"state_dir": str(tmp / "state"), "cache_dir": str(ROOT / "state" / "cache")},
            "limits": {"max_chunk_size": "4MiB", "call_timeout": "30s"},
            "containers": {
                "web": {"kind": "http", "base_url": http_base, "range_size": "8MiB"},
                "bkt": {"kind": "s3", "bucket": BUCKET, "endpoint_url": s3_url, "range_size": "8MiB"},
            },
            "components": {"sha256": {"path": str(ROOT / "build" / "guests" / "sha256.wasm"), "prefetch_chunks": 8}},
        }, file="bench")
        cases: list[dict[str, Any]] = []
        for kind, container in (("http", "web"), ("s3", "bkt")):
            plains: list[float] = []
            srcs: list[float] = []
            for _ in range(args.repeat):  # alternate, keep the best of each: warm-up favours neither
                plains.append(await (plain_http(f"{http_base}/obj.bin", size) if kind == "http"
                                     else plain_s3(s3_url, "obj.bin", size)))
                srcs.append(await source_only(config.containers[container], "obj.bin", size))
            plain, src = max(plains), max(srcs)
            rate, ok = await job(config, container, "obj.bin", size, digest)
            cases += [{"kind": kind, "path": "plain", "mb_per_s": round(plain, 1)},
                      {"kind": kind, "path": "source", "mb_per_s": round(src, 1)},
                      {"kind": kind, "path": "job", "mb_per_s": round(rate, 1), "digest_ok": ok}]
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    result = {"object_mib": args.mib, "range_bytes": RANGE, "repeat": args.repeat, "cases": cases}
    print(f"\nremote sources, {args.mib} MiB object, 8 MiB ranges, loopback servers in their own processes")
    print(f"{'kind':<6}{'path':<8}{'MB/s':>10}{'vs plain':>10}  note")
    for kind in ("http", "s3"):
        base = next(c["mb_per_s"] for c in cases if c["kind"] == kind and c["path"] == "plain")
        for c in (c for c in cases if c["kind"] == kind):
            note = {"plain": "aiohttp / aiobotocore ranged GETs", "source": "chunkd container read_at",
                    "job": f"sha256 guest end to end, digest {'ok' if c.get('digest_ok') else 'WRONG'}"}[c["path"]]
            print(f"{kind:<6}{c['path']:<8}{c['mb_per_s']:>10.1f}{c['mb_per_s'] / base:>9.2f}x  {note}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="object size in MiB (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="plain/source rounds, best kept (default 3)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "remote.json"))
    a = ap.parse_args()
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    res = asyncio.run(main(a))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.json}")
    if not all(c.get("digest_ok", True) for c in res["cases"]):
        sys.exit(1)
