"""Guests writing blobs back (issue 25), measured side by side with plain tools in one run.

  local   copy-through of one blob from the page cache into a writable file container at
          1 MiB chunks, against `cp` of the same file (a subprocess) and shutil.copyfile
          in the same run:
            copy_rs       the handle-chunk world (examples/copy-rs: create, write each
                          chunk unchanged, finish)
            streams_copy  the streams world (examples/transform-rs --mode=copy: write-blob
                          with a stream<u8>)
          chunkd's times include the commit (the file sink fsyncs the temp file, renames
          it and fsyncs the folder); `cp` does not fsync, so a `cp + fsync` row is shown
          beside it for reference (the ratio the target names is to plain `cp`)
  s3      the same bytes to moto's S3 server (its own process on 127.0.0.1), against a
          plain multipart upload with the same aiobotocore client setup as chunkd's s3
          container and the same part size (sequential parts, as chunkd's sink uploads)
  rss     peak RSS of this process (VmHWM, reset before the case) during a large ROT13
          transform (examples/transform-rs) into a file container with
          limits.max_buffered_bytes = 64 MiB, against 150 MB + max_buffered_bytes; the
          budget's peak in use is reported beside it (sampled from the loop, and the
          budget's own high-water mark)

Every throughput case is the best of a few runs (the machine is shared: interference
only ever slows a run down); the RSS case reports the worst peak of its runs. Outputs
are checked (size, and the bytes: whole for local and s3, sampled for the big transform).

Usage: bench/outputs [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import shutil
import socket
import subprocess
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
PART = 8 * MiB  # the s3 container's part_size, and the baseline's
BUDGET = 64 * MiB  # limits.max_buffered_bytes of the RSS case
RSS_TARGET_MB = 150.0  # + max_buffered_bytes
BUCKET = "chunkd-bench"
GUESTS = ROOT / "build" / "guests"
# tr 'A-Za-z' 'N-ZA-Mn-za-m'
ROT13 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                        b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def reset_peak_rss() -> bool:
    """Linux: reset the process's peak resident set size (VmHWM) to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_blob(path: Path, size: int, *, text: bool = False) -> None:
    """Random bytes (with letters in every 7th byte when `text`, so ROT13 changes
    something), written in 8 MiB pieces: the bench's own RSS stays small. A blob past
    64 MiB repeats one 64 MiB random block (writing GiBs of fresh randomness is slow)."""
    block = bytearray(os.urandom(min(size, 64 * MiB)))
    if text:
        letters = b"The quick brown fox jumps over the lazy dog. PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS! "
        for at in range(0, len(block), 7):
            block[at] = letters[at % len(letters)]
    with open(path, "wb") as f:
        left = size
        while left:
            for at in range(0, len(block), 8 * MiB):
                piece = memoryview(block)[at:at + min(8 * MiB, left)]
                f.write(piece)
                left -= len(piece)
                if not left:
                    break
    del block
    with open(path, "rb") as f:  # into the page cache
        while f.read(8 * MiB):
            pass


def timed_cp(src: Path, dst: Path, *, fsync: bool = False) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    if fsync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    dt = time.perf_counter() - t
    return mbps(src.stat().st_size, dt)


def timed_copyfile(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    shutil.copyfile(src, dst)
    return mbps(src.stat().st_size, time.perf_counter() - t)


def config(tmp: Path, folder: Path, out: Path, *, s3_url: str | None = None, budget: int | None = None) -> Any:
    containers: dict[str, Any] = {"local": {"kind": "file", "root": str(folder)},
                                  "out": {"kind": "file", "root": str(out), "writable": True}}
    if s3_url:
        containers["s3out"] = {"kind": "s3", "bucket": BUCKET, "endpoint_url": s3_url, "region": "us-east-1",
                               "writable": True, "part_size": PART, "timeout": "60s"}
    limits: dict[str, Any] = {"max_chunk_size": "4MiB", "call_timeout": "60s", "instance_memory": "256MiB"}
    if budget:
        limits["max_buffered_bytes"] = budget
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp / "state"), "cache_dir": str(ROOT / "state" / "cache")},
        "limits": limits,
        "containers": containers,
        "components": {"copy_rs": {"path": str(GUESTS / "copy_rs.wasm"), "prefetch_chunks": 2},
                       "transform_rs": {"path": str(GUESTS / "transform_rs.wasm"), "prefetch_chunks": 2}},
    }, file="bench")


def guest_args(guest: str, name: str, out_container: str, out_name: str, mode: str = "copy") -> tuple[str, list[str]]:
    """(component, args) of one copy-through (or, mode rot13, a transform) at 1 MiB chunks."""
    args = [f"--chunk-size={CHUNK}", "local", name, out_container, out_name]
    if guest == "streams_copy":
        return "transform_rs", ["--mode=copy", *args]
    if guest == "rot13":
        return "transform_rs", ["--mode=rot13", *args]
    return "copy_rs", args


async def chunkd_job(rt: Runtime, guest: str, name: str, size: int, out_container: str, out_name: str) -> float:
    comp, args = guest_args(guest, name, out_container, out_name)
    t = time.perf_counter()
    job = await rt.run(comp, args)
    dt = time.perf_counter() - t
    if job.state != "completed":
        raise RuntimeError(f"{guest} job failed: {job.error}")
    return mbps(size, dt)


# --- s3 ------------------------------------------------------------------------------

def s3_client_config() -> Any:
    """The client setup of chunkd's s3 container (chunkd/sources/s3.py), for the baseline."""
    from aiobotocore.config import AioConfig
    return AioConfig(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=60.0,
                     read_timeout=60.0, max_pool_connections=32)


async def plain_multipart(s3_url: str, src: Path, key: str) -> float:
    """A plain multipart upload of `src` in PART-sized parts, one after another, the
    parts read from the file as they go (as a Python user would without chunkd)."""
    import aiobotocore.session
    size = src.stat().st_size
    session = aiobotocore.session.get_session()
    async with session.create_client("s3", region_name="us-east-1", endpoint_url=s3_url,
                                     config=s3_client_config()) as c:
        t = time.perf_counter()
        up = await c.create_multipart_upload(Bucket=BUCKET, Key=key)
        parts = []
        with open(src, "rb", buffering=0) as f:
            number = 1
            while body := f.read(PART):
                r = await c.upload_part(Bucket=BUCKET, Key=key, UploadId=up["UploadId"], PartNumber=number, Body=body)
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
                number += 1
        await c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up["UploadId"],
                                          MultipartUpload={"Parts": parts})
        dt = time.perf_counter() - t
    return mbps(size, dt)


def s3_check_and_delete(s3: Any, key: str, expect: bytes) -> bool:
    got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    ok = bool(got == expect)
    s3.delete_object(Bucket=BUCKET, Key=key)  # moto keeps objects in its memory
    return ok


async def wait_http(url: str, timeout: float = 60) -> None:
    import aiohttp
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
    raise RuntimeError(f"{url} did not come up within {timeout:g}s")


# --- the RSS case --------------------------------------------------------------------

def rot13_sampled_ok(src: Path, dst: Path, size: int) -> bool:
    """The output's size, and its bytes against the ROT13 of the input at 16 places."""
    if dst.stat().st_size != size:
        return False
    with open(src, "rb") as a, open(dst, "rb") as b:
        for i in range(16):
            at = min(size - 1, i * (size // 15)) if size else 0
            a.seek(at)
            b.seek(at)
            want = a.read(MiB).translate(ROT13)
            if b.read(len(want)) != want:
                return False
    return True


async def rss_case(rt: Runtime, src: Path, out: Path, size: int) -> dict[str, Any]:
    budget = rt.budget
    sampled = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal sampled
        while not stop.is_set():
            sampled = max(sampled, budget.in_use)
            try:
                await asyncio.wait_for(stop.wait(), 0.005)
            except asyncio.TimeoutError:
                pass

    base_kib = status_kib("VmRSS")
    reset = reset_peak_rss()
    budget.peak = budget.in_use
    sampler = asyncio.ensure_future(sample())
    try:
        rate = await chunkd_job(rt, "rot13", src.name, size, "out", "rot13.out")
    finally:
        stop.set()
        await sampler
    peak_kib = status_kib("VmHWM")
    ok = rot13_sampled_ok(src, out / "rot13.out", size)
    (out / "rot13.out").unlink()
    return {"mb_per_s": rate, "peak_rss_mb": peak_kib * 1024 / 1e6, "rss_before_mb": base_kib * 1024 / 1e6,
            "budget_peak_bytes": budget.peak, "budget_sampled_max_bytes": sampled, "output_ok": ok,
            "peak_scope": "this case (VmHWM reset before it)" if reset else "process lifetime"}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    size = (128 if args.quick else 1024) * MiB
    s3_size = (64 if args.quick else 256) * MiB
    rss_size = (256 if args.quick else 4096) * MiB
    runs = 2 if args.quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-bench-outputs-"))
    folder, out = tmp / "blobs", tmp / "out"
    folder.mkdir()
    out.mkdir()
    result: dict[str, Any] = {"blob_bytes": size, "s3_bytes": s3_size, "rss_bytes": rss_size, "chunk_size": CHUNK,
                              "part_size": PART, "max_buffered_bytes_rss": BUDGET, "runs": runs}
    try:
        write_blob(folder / "blob.bin", size)
        # --- local ---------------------------------------------------------------------
        local: dict[str, list[float]] = {"cp": [], "cp_fsync": [], "copyfile": [], "copy_rs": [], "streams_copy": []}
        ok: dict[str, bool] = {}
        rt = Runtime(config(tmp, folder, out))
        await rt.start()
        try:
            for guest in ("copy_rs", "streams_copy"):  # compile and warm up: not measured
                await chunkd_job(rt, guest, "blob.bin", size, "out", "warm.out")
                (out / "warm.out").unlink()
            for _ in range(runs):  # alternate, keep the best of each: warm-up favours none
                local["cp"].append(timed_cp(folder / "blob.bin", tmp / "cp.out"))
                (tmp / "cp.out").unlink()
                local["cp_fsync"].append(timed_cp(folder / "blob.bin", tmp / "cp.out", fsync=True))
                (tmp / "cp.out").unlink()
                local["copyfile"].append(timed_copyfile(folder / "blob.bin", tmp / "cp.out"))
                (tmp / "cp.out").unlink()
                for guest in ("copy_rs", "streams_copy"):
                    local[guest].append(await chunkd_job(rt, guest, "blob.bin", size, "out", f"{guest}.out"))
                    ok[guest] = ok.get(guest, True) and filecmp.cmp(folder / "blob.bin", out / f"{guest}.out",
                                                                    shallow=False)
                    (out / f"{guest}.out").unlink()
        finally:
            await rt.close()
        best = {k: max(v) for k, v in local.items()}
        result["local"] = {k: round(v, 1) for k, v in best.items()}
        result["local_runs"] = {k: [round(x, 1) for x in v] for k, v in local.items()}
        result["local_vs_cp_pct"] = {g: round(best[g] / best["cp"] * 100, 1) for g in ("copy_rs", "streams_copy")}
        result["local_output_ok"] = ok
        print(f"  local: cp {best['cp']:.1f} (+fsync {best['cp_fsync']:.1f}) copyfile {best['copyfile']:.1f} "
              f"copy_rs {best['copy_rs']:.1f} streams_copy {best['streams_copy']:.1f} MB/s", file=sys.stderr)

        # --- s3 --------------------------------------------------------------------------
        s3_src = folder / "s3.bin"
        write_blob(s3_src, s3_size)
        s3_data = s3_src.read_bytes()
        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            s3_url = f"http://127.0.0.1:{port}"
            await wait_http(s3_url)
            import boto3
            s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
            s3.create_bucket(Bucket=BUCKET)
            remote: dict[str, list[float]] = {"plain": [], "copy_rs": []}
            s3_ok = True
            rt = Runtime(config(tmp, folder, out, s3_url=s3_url))
            await rt.start()
            try:
                await chunkd_job(rt, "copy_rs", "s3.bin", s3_size, "s3out", "warm.bin")  # connections, not measured
                s3_ok = s3_check_and_delete(s3, "warm.bin", s3_data) and s3_ok
                for _ in range(runs):
                    remote["plain"].append(await plain_multipart(s3_url, s3_src, "plain.bin"))
                    s3_ok = s3_check_and_delete(s3, "plain.bin", s3_data) and s3_ok
                    remote["copy_rs"].append(await chunkd_job(rt, "copy_rs", "s3.bin", s3_size, "s3out", "c.bin"))
                    s3_ok = s3_check_and_delete(s3, "c.bin", s3_data) and s3_ok
                open_uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
            finally:
                await rt.close()
        finally:
            moto.terminate()
            moto.wait(10)
        del s3_data
        rbest = {k: max(v) for k, v in remote.items()}
        result["s3"] = {k: round(v, 1) for k, v in rbest.items()}
        result["s3_runs"] = {k: [round(x, 1) for x in v] for k, v in remote.items()}
        result["s3_vs_plain_pct"] = round(rbest["copy_rs"] / rbest["plain"] * 100, 1)
        result["s3_output_ok"] = s3_ok
        result["s3_open_uploads_after"] = len(open_uploads)
        print(f"  s3: plain multipart {rbest['plain']:.1f} copy_rs {rbest['copy_rs']:.1f} MB/s", file=sys.stderr)
        s3_src.unlink()

        # --- peak RSS during a large transform -----------------------------------------
        (folder / "blob.bin").unlink()  # room in the page cache for the big one
        write_blob(folder / "big.bin", rss_size, text=True)
        # a fresh process, as a daemon would be: this one's RSS carries the cases above
        child = subprocess.run([sys.executable, __file__, "--rss-child", str(tmp), str(rss_size)],
                               check=True, stdout=subprocess.PIPE, text=True)
        cases, process_peak = json.loads(child.stdout.strip().splitlines()[-1])
        worst = max(cases, key=lambda c: c["peak_rss_mb"])
        result["rss"] = {
            "process_peak_rss_mb": round(process_peak, 1),
            "peak_rss_mb": round(worst["peak_rss_mb"], 1),
            "peak_rss_runs_mb": [round(c["peak_rss_mb"], 1) for c in cases],
            "rss_before_mb": round(worst["rss_before_mb"], 1),
            "target_mb": round(RSS_TARGET_MB + BUDGET / 1e6, 1),
            "mb_per_s": round(max(c["mb_per_s"] for c in cases), 1),
            "budget_peak_bytes": max(c["budget_peak_bytes"] for c in cases),
            "budget_sampled_max_bytes": max(c["budget_sampled_max_bytes"] for c in cases),
            "output_ok": all(c["output_ok"] for c in cases),
            "peak_scope": worst["peak_scope"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["targets"] = {
        "local_copy_rs_ge_40pct_cp": result["local_vs_cp_pct"]["copy_rs"] >= 40,
        "local_streams_copy_ge_40pct_cp": result["local_vs_cp_pct"]["streams_copy"] >= 40,
        "s3_ge_70pct_plain": result["s3_vs_plain_pct"] >= 70,
        "rss_le_150mb_plus_budget": result["rss"]["peak_rss_mb"] <= result["rss"]["target_mb"],
    }
    print_table(result)
    return result


def print_table(r: dict[str, Any]) -> None:
    loc, s3, rss, t = r["local"], r["s3"], r["rss"], r["targets"]

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"\nchunkd outputs: copy-through at {r['chunk_size'] // MiB} MiB chunks, best of {r['runs']} runs")
    print(f"{'case':<50}{'MB/s':>10}{'vs base':>10}  note")
    print(f"{'local cp (baseline)':<50}{loc['cp']:>10.1f}{1:>9.2f}x  {r['blob_bytes'] // MiB} MiB from page cache")
    print(f"{'local cp + fsync (reference)':<50}{loc['cp_fsync']:>10.1f}{loc['cp_fsync'] / loc['cp']:>9.2f}x")
    print(f"{'local shutil.copyfile (reference)':<50}{loc['copyfile']:>10.1f}{loc['copyfile'] / loc['cp']:>9.2f}x")
    for g, label in (("copy_rs", "local chunkd copy_rs (handle-chunk)"),
                     ("streams_copy", "local chunkd transform_rs --mode=copy (streams)")):
        print(f"{label:<50}{loc[g]:>10.1f}{loc[g] / loc['cp']:>9.2f}x  output "
              f"{'exact' if r['local_output_ok'].get(g) else 'WRONG'}; target >= 40% of cp: "
              f"{met(t['local_' + g + '_ge_40pct_cp'])}")
    print(f"{'s3 plain multipart (baseline)':<50}{s3['plain']:>10.1f}{1:>9.2f}x  {r['s3_bytes'] // MiB} MiB, "
          f"{r['part_size'] // MiB} MiB parts, moto on 127.0.0.1")
    print(f"{'s3 chunkd copy_rs':<50}{s3['copy_rs']:>10.1f}{s3['copy_rs'] / s3['plain']:>9.2f}x  output "
          f"{'exact' if r['s3_output_ok'] else 'WRONG'}, open uploads after: {r['s3_open_uploads_after']}; "
          f"target >= 70%: {met(t['s3_ge_70pct_plain'])}")
    print(f"{'rot13 transform_rs (streams), peak RSS':<50}{rss['mb_per_s']:>10.1f}{'':>10}  "
          f"{r['rss_bytes'] // MiB} MiB, max_buffered_bytes {r['max_buffered_bytes_rss'] // MiB} MiB: "
          f"peak RSS {rss['peak_rss_mb']:.1f} MB (runs {rss['peak_rss_runs_mb']}, {rss['rss_before_mb']:.1f} MB "
          f"before the case, {rss['process_peak_rss_mb']:.1f} MB the process's whole life) vs target {rss['target_mb']:.1f} MB: {met(t['rss_le_150mb_plus_budget'])}; budget peak "
          f"{rss['budget_peak_bytes'] / MiB:.1f} MiB (sampled {rss['budget_sampled_max_bytes'] / MiB:.1f}); output "
          f"{'ok' if rss['output_ok'] else 'WRONG'}")


async def rss_child(tmp: Path, size: int) -> None:
    """The RSS case in this (fresh) process: a runtime with max_buffered_bytes = BUDGET, one
    warm-up transform, then two measured ones; prints [cases, the process's peak RSS over
    its whole life, start and warm-up included]."""
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    folder, out = tmp / "blobs", tmp / "out"
    rt = Runtime(config(tmp, folder, out, budget=BUDGET))
    await rt.start()
    try:
        warm = folder / "warm.bin"
        shutil.copyfile(folder / "big.bin", warm)
        os.truncate(warm, min(size, 64 * MiB))
        await chunkd_job(rt, "rot13", "warm.bin", warm.stat().st_size, "out", "w.out")
        (out / "w.out").unlink()  # compiled and warm: the cases start from here
        warm.unlink()
        before = status_kib("VmHWM") * 1024 / 1e6  # start, compile, warm-up: before any reset
        cases = [await rss_case(rt, folder / "big.bin", out, size) for _ in range(2)]
    finally:
        await rt.close()
    print(json.dumps([cases, max(before, *(c["peak_rss_mb"] for c in cases))]))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        asyncio.run(rss_child(Path(sys.argv[2]), int(sys.argv[3])))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128 MiB / 64 MiB (s3) / 256 MiB (rss), 2 runs")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "outputs.json"))
    a = ap.parse_args()
    res = asyncio.run(main(a))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.json}")
    if not (all(res["local_output_ok"].values()) and res["s3_output_ok"] and res["rss"]["output_ok"]):
        sys.exit(1)
