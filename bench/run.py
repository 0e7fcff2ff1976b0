"""chunkd's data paths, measured side by side in one run.

  raw        readinto a reused buffer from page cache (the baseline)
  component  chunkd's component path end to end: the C touch guest (tests/guests/core_probe)
             componentized with jco, so the ratio to `core` measures the host, not the guest
  component_python  the same path with the Python touch guest (bench/guests/touch, componentize-py)
  streams    the streams world (consumer-streams, WASI 0.3 style) end to end: the Rust probe
             (tests/guests/streams_probe) reads one stream<u8> with a chunk-size buffer and
             touches every byte the same way the C probe does (xor of 8-byte words, SIMD)
  streams_receive  the same, the guest only receiving the bytes (compare component_receive:
             the C probe componentized, receiving only; the two rows differ by the worlds'
             delivery machinery alone)
  core       chunkd's core-module path end to end (tests/guests/core_probe, C)
  core_receive  the same, the guest only receiving the bytes (no pass over them): the data
             path alone
  extism     the peer: read each chunk, pass it to an Extism plugin (bench/guests/extism_touch,
             WAT) with the Extism Python SDK, as a Python user would without chunkd
each guest touches every byte (but core_receive); chunk sizes 64 KiB, 1 MiB, 4 MiB. Plus:
the reference row, wasmtime-py's C-API ceiling for the component call (bench/ceiling.py:
measured in this run when wasmtime-py is installed, else quoted), scheduling overhead per
chunk over 1,000 concurrent small streams, pacing error, and 1 vs 2 instance threads.

Every case is the best of a few runs (raw 3, component 3, core 5, Extism 2): the
development machines are shared, and interference only ever slows a run down.

Usage: bench/run [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import ceiling  # noqa: E402
from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402

SIZES = [64 * 1024, 1024 * 1024, 4 * 1024 * 1024]
MiB = 1024 * 1024


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def config(folder: Path, state: Path, comps: dict[str, dict[str, Any]], **limits: Any) -> Any:
    return config_from_mapping({
        "daemon": {"state_dir": str(state), "cache_dir": str(ROOT / "state" / "cache")},
        "limits": {"max_chunk_size": "4MiB", "call_timeout": "60s", "instance_memory": "256MiB", **limits},
        "containers": {"local": {"kind": "file", "root": str(folder)}},
        "components": comps,
    }, file="bench")


GUEST = {"component": str(ROOT / "build" / "guests" / "core_probe_c.wasm"),
         "component_python": str(ROOT / "build" / "guests" / "touch.wasm"),
         "core": str(ROOT / "build" / "guests" / "core_probe.wasm"),
         "streams": str(ROOT / "build" / "guests" / "streams_probe.wasm")}


def job_args(kind: str, name: str, chunk: int, mode: str = "quiet") -> list[str]:
    if kind == "component_python":
        return ["local", name, str(chunk)]
    return ["local", name, str(chunk), "1", "-1", mode]


def extism_read(path: Path, chunk: int) -> float:
    """The peer: plain reads, each chunk handed to an Extism plugin that touches every byte."""
    import extism

    from chunkd import _native
    wasm = _native.wat2wasm((ROOT / "bench" / "guests" / "extism_touch" / "touch.wat").read_text())
    plugin = extism.Plugin(wasm, wasi=False)
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while data := f.read(chunk):
            plugin.call("touch", data)
    return mbps(size, time.perf_counter() - t)


def raw_two_threads(paths: list[Path], chunk: int) -> tuple[float, float]:
    """The machine's own scaling: raw reads of one file on one thread, then of two files
    on two threads at once (aggregate MB/s)."""
    import threading
    one = max(raw_read(paths[0], chunk) for _ in range(2))
    speeds: list[float] = []
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda p=p: speeds.append(raw_read(p, chunk))) for p in paths]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two = mbps(sum(p.stat().st_size for p in paths), time.perf_counter() - t)
    return one, two


def reset_peak_rss() -> bool:
    """Linux: reset the process's peak resident set size (VmHWM), so the peak read after
    a case is that case's, not an earlier compile's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def raw_read(path: Path, chunk: int) -> float:
    buf = bytearray(chunk)
    mv = memoryview(buf)
    size = path.stat().st_size
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(mv):
            pass
    return mbps(size, time.perf_counter() - t)


async def chunkd_path(rt: Runtime, kind: str, name: str, size: int, chunk: int, mode: str = "quiet") -> float:
    t = time.perf_counter()
    job = await rt.run(kind, job_args(kind, name, chunk, mode))
    dt = time.perf_counter() - t
    if job.state != "completed":
        raise RuntimeError(f"{kind} job failed: {job.error}")
    return mbps(size, dt)


async def guest_call_us(rt: Runtime, comp: str, chunk: int, calls: int) -> float:
    """The guest's own cost per handle-chunk call: one native batch of `calls` calls with
    prepared bytes (no read, no scheduling), on an instance of `comp`."""
    pool = rt.pools[comp]
    inst = await pool.acquire()
    try:
        data = os.urandom(chunk)
        t = time.perf_counter()
        result = await inst.handle_chunks([(1, 0, i, 0, data) for i in range(calls)])
        dt = time.perf_counter() - t
        assert result.trap is None and len(result.outcomes) == calls, result.trap
        return dt / calls * 1e6
    finally:
        pool.give_back(inst)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    size = (64 if args.quick else 512) * MiB
    py_size = size // 8  # the Python guest's own scan is far slower than a copy
    ceiling_bytes = (16 if args.quick else 64) * MiB
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-bench-"))
    folder = tmp / "blobs"
    folder.mkdir()
    with open(folder / "blob.bin", "wb") as f:  # written in pieces: the bench's own RSS stays small
        for _ in range(size // (8 * MiB)):
            f.write(os.urandom(8 * MiB))
    shutil.copyfile(folder / "blob.bin", folder / "blob2.bin")
    shutil.copyfile(folder / "blob.bin", folder / "py.bin")
    os.truncate(folder / "py.bin", py_size)
    (folder / "small.bin").write_bytes(os.urandom(64 * 1024))
    with open(folder / "blob.bin", "rb") as f:  # into the page cache
        while f.read(8 * MiB):
            pass
    cases: list[dict[str, Any]] = []
    ceiling_mbps: dict[str, float] = {}
    notes: dict[str, Any] = {}
    measured_ceiling = ceiling.available()

    rt = Runtime(config(folder, tmp / "state", {
        "component": {"path": GUEST["component"], "prefetch_chunks": 2},
        "component_python": {"path": GUEST["component_python"], "prefetch_chunks": 2},
        "core": {"path": GUEST["core"], "prefetch_chunks": 2},
        "streams": {"path": GUEST["streams"], "prefetch_chunks": 2}}))
    await rt.start()
    try:
        # scheduling: 1,000 concurrent small streams (64 KiB, 4 KiB chunks) on the core path
        streams, chunk = 1000, 4096
        await rt.run("core", job_args("core", "small.bin", 4096))  # the guest in quiet mode
        per_call_us = await guest_call_us(rt, "core", chunk, 4000)
        peak_reset = reset_peak_rss()  # a first run compiles the components: not this case's memory
        t = time.perf_counter()
        job = await rt.run("core", ["many", "local", "small.bin", str(chunk), str(streams)])
        wall = time.perf_counter() - t
        chunks = sum(d.stats.chunks for d in job.deliveries)
        assert job.state == "completed" and chunks == streams * 16, (job.state, job.error, chunks)
        sched_us = wall / chunks * 1e6 - per_call_us
        notes["sched"] = {"streams": streams, "chunks": chunks, "wall_s": round(wall, 3),
                          "per_chunk_total_us": round(wall / chunks * 1e6, 1),
                          "guest_call_us": round(per_call_us, 1),
                          "peak_rss_mb": round(peak_rss_kib() / 1024, 1),
                          "peak_rss_scope": "this run (VmHWM reset before it)" if peak_reset else "process lifetime"}
        for chunk in SIZES:
            raw = max(raw_read(folder / "blob.bin", chunk) for _ in range(3))
            cases.append({"path": "raw", "chunk_size": chunk, "mb_per_s": round(raw, 1)})
            comp = max([await chunkd_path(rt, "component", "blob.bin", size, chunk) for _ in range(3)])
            cases.append({"path": "component", "chunk_size": chunk, "mb_per_s": round(comp, 1)})
            crecv = max([await chunkd_path(rt, "component", "blob.bin", size, chunk, "receive") for _ in range(3)])
            cases.append({"path": "component_receive", "chunk_size": chunk, "mb_per_s": round(crecv, 1)})
            strm = max([await chunkd_path(rt, "streams", "blob.bin", size, chunk) for _ in range(3)])
            cases.append({"path": "streams", "chunk_size": chunk, "mb_per_s": round(strm, 1)})
            srecv = max([await chunkd_path(rt, "streams", "blob.bin", size, chunk, "receive") for _ in range(3)])
            cases.append({"path": "streams_receive", "chunk_size": chunk, "mb_per_s": round(srecv, 1)})
            pyc = max([await chunkd_path(rt, "component_python", "py.bin", py_size, chunk) for _ in range(2)])
            cases.append({"path": "component_python", "chunk_size": chunk, "mb_per_s": round(pyc, 1),
                          "bytes_measured": py_size})
            if measured_ceiling:
                loop = asyncio.get_running_loop()
                ceil = max([await loop.run_in_executor(None, ceiling.c_api_ceiling, Path(GUEST["component_python"]),
                                                       chunk, ceiling_bytes) for _ in range(2)])
            else:
                ceil = ceiling.QUOTED_MB_PER_S
            ceiling_mbps[str(chunk)] = round(ceil, 1)
            cases.append({"path": "c_api_ceiling", "chunk_size": chunk, "mb_per_s": round(ceil, 1),
                          "source": "measured (wasmtime-py, this run)" if measured_ceiling else "quoted"})
            core = max([await chunkd_path(rt, "core", "blob.bin", size, chunk) for _ in range(5)])
            cases.append({"path": "core", "chunk_size": chunk, "mb_per_s": round(core, 1)})
            recv = max([await chunkd_path(rt, "core", "blob.bin", size, chunk, "receive") for _ in range(5)])
            cases.append({"path": "core_receive", "chunk_size": chunk, "mb_per_s": round(recv, 1)})
            peer = max(extism_read(folder / "blob.bin", chunk) for _ in range(2))
            cases.append({"path": "extism", "chunk_size": chunk, "mb_per_s": round(peer, 1)})
            print(f"  {chunk:>8} B: raw {raw:.1f} component {comp:.1f} streams {strm:.1f} (receive-only "
                  f"{srecv:.1f}) component_python {pyc:.1f} "
                  f"ceiling {ceil:.1f} core {core:.1f} (receive-only {recv:.1f}) extism {peer:.1f} MB/s",
                  file=sys.stderr)
    finally:
        await rt.close()

    # pacing error on the core path (fast enough to be held back by the pacer)
    rate = 128 * MiB
    paced_size = (32 if args.quick else 128) * MiB
    shutil.copyfile(folder / "blob.bin", folder / "paced.bin")
    os.truncate(folder / "paced.bin", paced_size)
    rt = Runtime(config(folder, tmp / "state", {"core": {"path": GUEST["core"], "max_bytes_per_second": rate}}))
    await rt.start()
    try:
        t = time.perf_counter()
        job = await rt.run("core", job_args("core", "paced.bin", MiB))
        wall = time.perf_counter() - t
        expected = (paced_size - MiB) / rate  # the first chunk goes at once
        pacing_error = abs(wall - expected) / expected * 100
        notes["pacing"] = {"rate_bytes_per_s": rate, "bytes": paced_size, "expected_s": round(expected, 3),
                           "measured_s": round(wall, 3)}
    finally:
        await rt.close()

    # 1 vs 2 threads: the raw read (what the machine allows), then the component and core paths
    with open(folder / "blob2.bin", "rb") as f:  # into the page cache too
        while f.read(8 * MiB):
            pass
    raw_one, raw_two = raw_two_threads([folder / "blob.bin", folder / "blob2.bin"], MiB)
    notes["threads_raw"] = {"one_mb_per_s": round(raw_one, 1), "two_mb_per_s": round(raw_two, 1)}
    rt = Runtime(config(folder, tmp / "state", {"component": {"path": GUEST["component"], "instances": 2},
                                                "core": {"path": GUEST["core"], "instances": 2}}))
    await rt.start()
    try:
        speed: dict[str, float] = {}
        for kind in ("component", "core"):
            one = await chunkd_path(rt, kind, "blob.bin", size, MiB)
            t = time.perf_counter()
            jobs = [rt.submit(kind, job_args(kind, n, MiB)) for n in ("blob.bin", "blob2.bin")]
            await asyncio.gather(*(j.done.wait() for j in jobs))
            two = mbps(2 * size, time.perf_counter() - t)
            assert all(j.state == "completed" for j in jobs)
            speed[kind] = two / one
            notes[f"threads_{kind}"] = {"one_mb_per_s": round(one, 1), "two_mb_per_s": round(two, 1)}
    finally:
        await rt.close()

    result = {
        "blob_bytes": size,
        "cases": cases,
        "c_api_ceiling_mb_per_s": ceiling_mbps,
        "c_api_ceiling_source": "measured" if measured_ceiling else "quoted",
        "sched_overhead_us": round(sched_us, 1),
        "pacing_error_pct": round(pacing_error, 2),
        "threads_speedup": round(speed["component"], 2),
        "threads_speedup_core": round(speed["core"], 2),
        "threads_speedup_raw": round(raw_two / raw_one, 2),
        "core_vs_extism": {str(c["chunk_size"]): round(c["mb_per_s"] / next(
            e["mb_per_s"] for e in cases if e["path"] == "extism" and e["chunk_size"] == c["chunk_size"]), 2)
            for c in cases if c["path"] == "core"},
        "core_vs_raw_pct": {str(c["chunk_size"]): round(c["mb_per_s"] / next(
            e["mb_per_s"] for e in cases if e["path"] == "raw" and e["chunk_size"] == c["chunk_size"]) * 100, 1)
            for c in cases if c["path"] == "core"},
        "core_receive_vs_raw_pct": {str(c["chunk_size"]): round(c["mb_per_s"] / next(
            e["mb_per_s"] for e in cases if e["path"] == "raw" and e["chunk_size"] == c["chunk_size"]) * 100, 1)
            for c in cases if c["path"] == "core_receive"},
        "component_vs_raw_pct": ratio(cases, "component", "raw", 100),
        "component_vs_ceiling_x": ratio(cases, "component", "c_api_ceiling", 1),
        "component_python_vs_ceiling_x": ratio(cases, "component_python", "c_api_ceiling", 1),
        "component_vs_core_pct": ratio(cases, "component", "core", 100),
        "streams_vs_raw_pct": ratio(cases, "streams", "raw", 100),
        "streams_vs_component_pct": ratio(cases, "streams", "component", 100),
        "streams_receive_vs_raw_pct": ratio(cases, "streams_receive", "raw", 100),
        "streams_receive_vs_component_receive_pct": ratio(cases, "streams_receive", "component_receive", 100),
        "notes": notes,
    }
    print_table(result)
    return result


def ratio(cases: list[dict[str, Any]], a: str, b: str, scale: float) -> dict[str, float]:
    """Per chunk size: row a's MB/s over row b's, times `scale`."""
    out = {}
    for c in cases:
        if c["path"] == a:
            other = next(e["mb_per_s"] for e in cases if e["path"] == b and e["chunk_size"] == c["chunk_size"])
            out[str(c["chunk_size"])] = round(c["mb_per_s"] / other * scale, 2)
    return out


def print_table(r: dict[str, Any]) -> None:
    raw = {c["chunk_size"]: c["mb_per_s"] for c in r["cases"] if c["path"] == "raw"}
    print(f"\nchunkd data paths, {r['blob_bytes'] // MiB} MiB blob from page cache, guests touch every byte "
          "(but core_receive's); c_api_ceiling is a reference row")
    print(f"{'path':<14}{'chunk':>10}{'MB/s':>12}{'x raw':>9}")
    for c in r["cases"]:
        print(f"{c['path']:<14}{c['chunk_size']:>10}{c['mb_per_s']:>12.1f}{c['mb_per_s'] / raw[c['chunk_size']]:>9.3f}")
    for k, pct in r["core_vs_raw_pct"].items():
        print(f"core path vs raw {k:>8}: {pct:5.1f}% (guest touches every byte); "
              f"receive-only guest {r['core_receive_vs_raw_pct'][k]:5.1f}%")
    for k, ratio in r["core_vs_extism"].items():
        print(f"core path vs Extism {k:>8}: {ratio:.2f}x")
    for k, pct in r["component_vs_raw_pct"].items():
        print(f"component path vs raw {k:>8}: {pct:5.1f}%; {r['component_vs_ceiling_x'][k]:7.1f}x the C-API ceiling "
              f"({r['c_api_ceiling_source']}); {r['component_vs_core_pct'][k]:5.1f}% of the core path; "
              f"Python guest {r['component_python_vs_ceiling_x'][k]:.1f}x the ceiling")
    for k, pct in r["streams_vs_raw_pct"].items():
        print(f"streams world vs raw {k:>8}: {pct:5.1f}%; {r['streams_vs_component_pct'][k]:5.1f}% of the handle-chunk "
              f"component path; receive-only guest {r['streams_receive_vs_raw_pct'][k]:5.1f}% of raw, "
              f"{r['streams_receive_vs_component_receive_pct'][k]:5.1f}% of the receive-only handle-chunk guest")
    s = r["notes"]["sched"]
    print(f"scheduling overhead: {r['sched_overhead_us']} us/chunk ({s['streams']} streams, {s['chunks']} chunks, "
          f"{s['per_chunk_total_us']} us total - {s['guest_call_us']} us guest call); peak RSS {s['peak_rss_mb']} MB")
    print(f"pacing error: {r['pacing_error_pct']}% ({r['notes']['pacing']})")
    print(f"threads: component {r['threads_speedup']}x {r['notes']['threads_component']}, "
          f"core {r['threads_speedup_core']}x {r['notes']['threads_core']}; "
          f"raw reads {r['threads_speedup_raw']}x {r['notes']['threads_raw']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 MiB instead of 512 MiB, smaller samples")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "run.json"))
    a = ap.parse_args()
    res = asyncio.run(main(a))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.json}")
