"""Guest-language benchmark: the sha256 example in each language, 1 MiB chunks.

Each row digests the same blob (from the page cache) through `chunkd`'s runtime in
this process and checks the digest; the baseline is hashlib.sha256 over plain reads
of the same file in the same process. What each row measures is the guest's own
hashing plus chunkd's delivery on that guest's path:
  python     componentize-py component (CPython in wasm)      -> component path
  python-streams  the same sha256 in the streams world (examples/sha256-streams: an async
             consume reads a stream<u8>)                       -> component path, streams
  js         componentize-js component (SpiderMonkey, interpreted in wasm) -> component path
  c-core     the C example as a core module                    -> core path (direct reads)
  c-component  the same C, componentized with jco              -> component path
Usage: bench/languages [--mib N] [--js-mib N] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB
ROWS = [("python", "sha256"), ("python-streams", "sha256_streams"), ("js", "sha256_js"), ("c-core", "sha256_c_core"),
        ("c-component", "sha256_c"), ("rust", "sha256_rs")]


def raw_sha256(path: Path) -> tuple[float, str]:
    h = hashlib.sha256()
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while data := f.read(CHUNK):
            h.update(data)
    return path.stat().st_size / (time.perf_counter() - t) / 1e6, h.hexdigest()


async def main(a: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        blobs = {"big.bin": a.mib, "js.bin": a.js_mib}
        for name, mib in blobs.items():
            with open(tmp / name, "wb") as f:
                for _ in range(mib):
                    f.write(os.urandom(MiB))
        cfg = config_from_mapping({
            "daemon": {"state_dir": str(tmp / "state"), "cache_dir": str(ROOT / "state" / "cache")},
            "limits": {"max_chunk_size": "4MiB", "call_timeout": "60s", "instance_memory": "256MiB"},
            "containers": {"local": {"kind": "file", "root": str(tmp)}},
            "components": {comp: {"path": str(ROOT / "build" / "guests" / f"{comp}.wasm")} for _, comp in ROWS},
        }, file="bench")
        rt = Runtime(cfg)
        lines: dict[str, list[str]] = {}
        rt.output_listeners.append(lambda job, comp, fd, line: lines.setdefault(job.id if job else "-", []).append(line))
        await rt.start()
        rows = []
        try:
            for kind, comp in ROWS:
                name = "js.bin" if kind == "js" else "big.bin"
                raw, want = raw_sha256(tmp / name)
                await rt.run(comp, [f"--chunk-size={CHUNK}", "local", name])  # warm: instance up, pages cached
                t = time.perf_counter()
                job = await rt.run(comp, [f"--chunk-size={CHUNK}", "local", name])
                dt = time.perf_counter() - t
                if job.state != "completed" or f"{want}  {name}" not in lines.get(job.id, []):
                    raise RuntimeError(f"{comp}: {job.state} {job.error} {lines.get(job.id)}")
                size = blobs[name] * MiB
                rows.append({"language": kind, "component": comp, "kind": rt.pools[comp].comp.kind,
                             "blob_mib": blobs[name], "chunk_size": CHUNK, "seconds": round(dt, 3),
                             "mb_per_s": round(size / dt / 1e6, 2), "hashlib_mb_per_s": round(raw, 1)})
        finally:
            await rt.close()
    return {"chunk_size": CHUNK, "rows": rows, "cpu_count": os.cpu_count()}


def print_table(r: dict[str, Any]) -> None:
    print(f"\nsha256 example per guest language, {r['chunk_size'] // MiB} MiB chunks, blob from page cache")
    print(f"{'language':<16}{'path':<11}{'blob':>8}{'MB/s':>10}{'hashlib MB/s':>14}{'x hashlib':>11}")
    for c in r["rows"]:
        print(f"{c['language']:<16}{c['kind']:<11}{c['blob_mib']:>6}Mi{c['mb_per_s']:>10.2f}"
              f"{c['hashlib_mb_per_s']:>14.1f}{c['mb_per_s'] / c['hashlib_mb_per_s']:>11.4f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256, help="blob size for python and C (MiB)")
    ap.add_argument("--js-mib", type=int, default=16, help="blob size for JS, which hashes ~1 MB/s (MiB)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "languages.json"))
    a = ap.parse_args()
    res = asyncio.run(main(a))
    print_table(res)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.json}")
