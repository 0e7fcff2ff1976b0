"""Fairness: how the daemon shares delivery between two flows of CPU-bound jobs.

Two flows, each its own component running the C sha256 guest (examples/sha256-c,
componentized: build/guests/sha256_c.wasm, ~180 MB/s of real hashing per core), each
with more instances than the machine has cores, each kept busy by `--jobs` jobs at
once (a job that ends is replaced at once). Flow A reads 64 KiB chunks, flow B 4 MiB
chunks. A flow is a tenant when the code runs tenant-submitted jobs (Runtime.submit
takes `tenant`: flow weights from [tenants.NAME].weight), else a component (weights
from components.NAME.weight): the same benchmark measures the code before and after
the byte-fair scheduler (chunkd/fairshare.py), feature-detected.

  equal    weights 1:1: bytes delivered to each flow over a --window (default 20 s)
           after a --warmup (default 5 s); target: within 10% of 1:1
  weighted weights 3:1 (the 64 KiB flow has 3): target within 10% of 3:1
  uneven   weights 1:1, but flow A runs 2 jobs and flow B 6: a flow's share is by its
           weight, not by how many jobs or instances it has; target within 10% of 1:1
  wait     flow A saturates the daemon (--jobs jobs); then, --probes times, one job
           of flow B (idle until then) starts: the time from its stream being ready
           (a file read directly is ready at once) to its first batch starting on its
           instance thread (its turn), against one batch time: the median wall time of
           flow A's handle-chunk batches meanwhile, timed around
           InstanceBase.handle_chunks (the guest's calls, not any wait for a turn);
           target: ready -> turn within one batch time, checked per probe against
           the end of the first of A's batches running when B became ready (+5 ms)

Bytes per flow: each handle-chunk batch of the flow's component, timed around
InstanceBase.handle_chunks, its bytes spread over its wall time, the part inside the
window (the daemon's own counter, chunkd_bytes_delivered_total of the component, moves
a whole batch of up to 32 MiB at once: it is kept in the JSON as counted_bytes). Runs in-process, as bench/run does. Prints a table and writes JSON
(--json, default bench/results/fairness.json; --label names the run, e.g. before).

Usage: bench/fairness [--window 20] [--warmup 5] [--jobs 4] [--instances 4] [--label L] [--json PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.host.instance import DirectRun, InstanceBase  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
GUEST = ROOT / "build" / "guests" / "sha256_c.wasm"
FLOWS = {"a": 64 * KiB, "b": 4 * MiB}  # flow -> chunk size
TOKENS = {"a": "fairness-bench-token-a", "b": "fairness-bench-token-b"}

# (component, start, seconds, bytes) of every handle-chunk batch; bounded
BATCHES: deque[tuple[str, float, float, int]] = deque(maxlen=200_000)


def time_batches() -> None:
    """Time each trip of a batch to an instance thread (the guest's calls, not the wait
    for a turn before it): the batch time the bound on waiting is measured against."""
    original = InstanceBase.handle_chunks

    async def timed(self: InstanceBase, calls: Any, fresh: bool = True) -> Any:
        t = time.perf_counter()
        result = await original(self, calls, fresh)
        n = sum(c[4].length if isinstance(c[4], DirectRun) else len(c[4]) for c in calls)
        BATCHES.append((self.comp.name, t, time.perf_counter() - t, n))
        return result

    InstanceBase.handle_chunks = timed  # type: ignore[method-assign]


def tenant_jobs() -> bool:
    """Does this code run jobs on behalf of a tenant (Runtime.submit(..., tenant=))?"""
    return "tenant" in inspect.signature(Runtime.submit).parameters


def has_fairshare() -> bool:
    try:
        import chunkd.fairshare  # noqa: F401
    except ImportError:
        return False
    return True


def comp(flow: str) -> str:
    return f"flow_{flow}"


def make_config(folder: Path, state: Path, weights: dict[str, int], instances: int, budget: str | None,
                tenants: bool) -> Any:
    limits: dict[str, Any] = {"max_chunk_size": "4MiB", "call_timeout": "60s"}
    if budget:
        limits["max_buffered_bytes"] = budget
    m: dict[str, Any] = {
        "daemon": {"state_dir": str(state), "cache_dir": str(ROOT / "state" / "cache")},
        "limits": limits,
        "containers": {"local": {"kind": "file", "root": str(folder)}},
        "components": {comp(f): {"path": str(GUEST), "instances": instances, "weight": weights[f]} for f in FLOWS},
    }
    if tenants:
        m["tenants"] = {f"tenant_{f}": {"token": TOKENS[f], "role": "submit", "components": [comp(f)],
                                        "weight": weights[f]} for f in FLOWS}
    return config_from_mapping(m, file="bench/fairness")


class Flows:
    """Submits the jobs of each flow, on behalf of its tenant when the code has tenants."""

    def __init__(self, rt: Runtime, tenants: bool) -> None:
        self.rt = rt
        self.tenants = tenants

    def submit(self, flow: str, blob: str) -> Any:
        args = [f"--chunk-size={FLOWS[flow]}", "local", blob]
        if self.tenants:
            rt: Any = self.rt  # the code before tenants has no `tenant` (not called there)
            job = rt.submit(comp(flow), args, tenant=f"tenant_{flow}")
        else:
            job = self.rt.submit(comp(flow), args)
        return job

    async def keep_busy(self, flow: str, slots: int, stop: asyncio.Event) -> None:
        """`slots` jobs of this flow at all times until `stop`; then cancel what runs."""
        async def slot() -> None:
            while not stop.is_set():
                job = self.submit(flow, "big.bin")
                done = asyncio.ensure_future(job.done.wait())
                halt = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait([done, halt], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    halt.cancel()
                    if not done.done():
                        self.rt.cancel(job.id)
                        await asyncio.wait_for(done, 120)
                if job.state not in ("completed", "cancelled"):
                    raise RuntimeError(f"flow {flow} job failed: {job.error}")
        async with asyncio.TaskGroup() as tg:
            for _ in range(slots):
                tg.create_task(slot())


def delivered(rt: Runtime) -> dict[str, int]:
    return {f: int(rt.metrics.value("chunkd_bytes_delivered_total", component=comp(f))) for f in FLOWS}


async def share_case(name: str, weights: dict[str, int], a: argparse.Namespace, folder: Path, tmp: Path,
                     jobs: dict[str, int] | None = None) -> dict[str, Any]:
    tenants = tenant_jobs()
    jobs = jobs or {f: a.jobs for f in FLOWS}
    rt = Runtime(make_config(folder, tmp / f"state-{name}", weights, max(a.instances, *jobs.values()), a.budget,
                             tenants))
    await rt.start()
    try:
        flows = Flows(rt, tenants)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for f in FLOWS:
                tg.create_task(flows.keep_busy(f, jobs[f], stop))
            await asyncio.sleep(a.warmup)
            before, t0 = delivered(rt), time.perf_counter()
            cpu0 = os.times()
            await asyncio.sleep(a.window)
            after, t1 = delivered(rt), time.perf_counter()
            cpu1 = os.times()
            await asyncio.sleep(a.tail)  # the batches running at t1 end, and are timed
            stop.set()
    finally:
        await rt.close()
    counted = {f: after[f] - before[f] for f in FLOWS}
    secs = t1 - t0
    # the counter moves a whole batch (up to 32 MiB) at a time: spread each batch's bytes
    # over its wall time and take the part inside the window
    got = {f: 0 for f in FLOWS}
    for c, start, dur, n in BATCHES:
        overlap = min(start + dur, t1) - max(start, t0)
        if overlap > 0 and c in (comp("a"), comp("b")):
            got[c[-1]] += int(n * overlap / dur) if dur > 0 else n
    BATCHES.clear()
    # weighted shares: bytes / weight per flow; 1.0 is exactly the weighted share
    norm = {f: got[f] / weights[f] for f in FLOWS}
    ratio = got["a"] / got["b"] if got["b"] else float("inf")
    want = weights["a"] / weights["b"]
    err = (norm["a"] / norm["b"] - 1) if norm["b"] else float("inf")
    return {"case": name, "weights": weights, "jobs": jobs, "chunk_size": FLOWS, "window_s": round(secs, 2),
            "bytes": got, "counted_bytes": counted, "mb_per_s": {f: round(got[f] / secs / 1e6, 1) for f in FLOWS},
            "ratio_a_to_b": round(ratio, 3), "target_ratio": want, "error": round(err, 3),
            "met": abs(err) <= 0.10, "cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1)}


async def first_delivery(job: Any, t0: float, deadline: float) -> dict[str, float]:
    """The probe job's milestones, in ms after submit: `ready` its first stream started
    and had a chunk to deliver (a file read directly is ready at once, a read-ahead
    stream once its first chunk is read), `turn` its first batch started on the
    instance thread, `done` that batch was accounted for (its bytes counted)."""
    ready = None
    while time.perf_counter() < deadline:
        ds = job.deliveries
        if ds:
            d = ds[0]
            if ready is None and (d.direct_fd is not None or d.stats.read_bytes > 0 or d.stats.chunks > 0):
                ready = time.perf_counter()
            if d.stats.chunks > 0:
                done = time.perf_counter()
                starts = [t for c, t, _, _ in BATCHES if c == comp("b") and t >= t0]
                turn = min(starts) if starts else done
                ready = min(ready if ready is not None else turn, turn)
                return {"ready": (ready - t0) * 1e3, "turn": (turn - t0) * 1e3, "done": (done - t0) * 1e3}
        if job.done.is_set():
            raise RuntimeError(f"probe job ended before a delivery: {job.state} {job.error}")
        await asyncio.sleep(0.0005)
    raise RuntimeError("probe job had no delivery by the deadline")


async def wait_case(a: argparse.Namespace, folder: Path, tmp: Path) -> dict[str, Any]:
    tenants = tenant_jobs()
    weights = {"a": 1, "b": 1}
    rt = Runtime(make_config(folder, tmp / "state-wait", weights, max(a.instances, a.jobs), a.budget, tenants))
    await rt.start()
    probes: list[dict[str, float]] = []
    try:
        flows = Flows(rt, tenants)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(flows.keep_busy("a", a.jobs, stop))
            await asyncio.sleep(a.warmup)
            BATCHES.clear()
            try:
                for _ in range(a.probes):
                    t0 = time.perf_counter()
                    job = flows.submit("b", "probe.bin")
                    m = await first_delivery(job, t0, t0 + 60)
                    rt.cancel(job.id)
                    await asyncio.wait_for(job.done.wait(), 60)
                    probes.append({"submit_to_turn_ms": m["turn"], "ready_to_turn_ms": m["turn"] - m["ready"],
                                   "submit_to_first_counted_ms": m["done"], "ready_at": t0 + m["ready"] / 1e3})
                    await asyncio.sleep(0.5)
                await asyncio.sleep(a.tail)  # the batches running at the last probe end, and are timed
            finally:
                stop.set()
        for p in probes:
            # the bound: a flow that becomes ready takes the first slot that frees, so its
            # turn comes when the first of the batches running at that moment ends
            ends = [st + d for c, st, d, _ in BATCHES if c == comp("a") and st <= p["ready_at"] < st + d]
            p["bound_ms"] = (min(ends) - p["ready_at"]) * 1e3 if ends else 0.0
        batches = [s for c, _, s, _ in BATCHES if c == comp("a")]
        batch_bytes = [n for c, _, _, n in BATCHES if c == comp("a")]
    finally:
        await rt.close()
    batch_ms = statistics.median(batches) * 1e3 if batches else float("nan")

    def stat(key: str) -> dict[str, float]:
        vals = [p[key] for p in probes]
        return {"median": round(statistics.median(vals), 1), "max": round(max(vals), 1)}
    worst = max(p["ready_to_turn_ms"] for p in probes)
    # met: every probe's turn came by the end of the first batch running when it became ready
    # (+ 5 ms for the loop to account for that batch and hand the slot on), which is within
    # one batch time
    within = all(p["ready_to_turn_ms"] <= p["bound_ms"] + 5.0 for p in probes)
    return {"case": "wait", "saturating_jobs": a.jobs, "probes": len(probes),
            "ready_to_turn_ms": stat("ready_to_turn_ms"), "submit_to_turn_ms": stat("submit_to_turn_ms"),
            "submit_to_first_counted_ms": stat("submit_to_first_counted_ms"),
            "batch_ms": {"median": round(batch_ms, 1),
                         "max": round(max(batches) * 1e3, 1) if batches else None,
                         "batches": len(batches),
                         "median_bytes": int(statistics.median(batch_bytes)) if batch_bytes else 0},
            "per_probe_ms": [{"ready_to_turn": round(p["ready_to_turn_ms"], 1),
                              "first_running_batch_ends": round(p["bound_ms"], 1)} for p in probes],
            "worst_vs_median_batch": round(worst / batch_ms, 2) if batch_ms else None,
            "met": within}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


async def main(a: argparse.Namespace) -> dict[str, Any]:
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    if not GUEST.exists():
        raise SystemExit(f"{GUEST} is missing: scripts/build-guests sha256_c")
    time_batches()
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-fairness-"))
    folder = tmp / "blobs"
    folder.mkdir()
    with open(folder / "big.bin", "wb") as f:
        for _ in range(a.blob_mib // 8):
            f.write(os.urandom(8 * MiB))
    (folder / "probe.bin").write_bytes(os.urandom(64 * MiB))
    for name in ("big.bin", "probe.bin"):  # into the page cache
        with open(folder / name, "rb") as f:
            while f.read(8 * MiB):
                pass
    out: dict[str, Any] = {
        "label": a.label, "commit": git_commit(), "cores": os.cpu_count(), "load_avg_before": os.getloadavg(),
        "flows_are": "tenants" if tenant_jobs() else "components", "fairshare": has_fairshare(),
        "instances_per_flow": a.instances, "jobs_per_flow": a.jobs, "window_s": a.window, "warmup_s": a.warmup,
        "budget": a.budget or "default", "guest": "sha256_c (C, component)", "cases": []}
    cases = set(a.cases.split(","))
    if "equal" in cases:
        out["cases"].append(await share_case("equal", {"a": 1, "b": 1}, a, folder, tmp))
        print(f"equal    {out['cases'][-1]}", file=sys.stderr)
    if "weighted" in cases:
        out["cases"].append(await share_case("weighted", {"a": 3, "b": 1}, a, folder, tmp))
        print(f"weighted {out['cases'][-1]}", file=sys.stderr)
    if "uneven" in cases:
        out["cases"].append(await share_case("uneven", {"a": 1, "b": 1}, a, folder, tmp, {"a": 2, "b": 6}))
        print(f"uneven   {out['cases'][-1]}", file=sys.stderr)
    if "wait" in cases:
        out["cases"].append(await wait_case(a, folder, tmp))
        print(f"wait     {out['cases'][-1]}", file=sys.stderr)
    out["load_avg_after"] = os.getloadavg()
    return out


def report(out: dict[str, Any]) -> None:
    print(f"\nchunkd fairness ({out['label']}, commit {out['commit']}): flows are {out['flows_are']}, "
          f"fair-share scheduler {'on' if out['fairshare'] else 'absent'}; {out['instances_per_flow']} instances and "
          f"{out['jobs_per_flow']} jobs per flow on {out['cores']} cores; sha256_c guest; load avg "
          f"{out['load_avg_before'][0]:.1f}")
    print(f"{'case':<10}{'jobs a:b':>9}{'weights a:b':>12}{'A 64KiB MB/s':>14}{'B 4MiB MB/s':>13}{'A:B':>8}{'target':>8}"
          f"{'error':>8}  met")
    for c in out["cases"]:
        if c["case"] == "wait":
            continue
        w = c["weights"]
        j = c["jobs"]
        print(f"{c['case']:<10}{j['a']:>7}:{j['b']:<1}{w['a']:>10}:{w['b']:<1}{c['mb_per_s']['a']:>14}{c['mb_per_s']['b']:>13}"
              f"{c['ratio_a_to_b']:>8}{c['target_ratio']:>8}{c['error'] * 100:>7.1f}%  {c['met']}")
    for c in out["cases"]:
        if c["case"] == "wait":
            print(f"wait: {c['probes']} jobs of flow B started while {c['saturating_jobs']} jobs of flow A "
                  f"saturate: ready -> its first batch started {c['ready_to_turn_ms']['median']} ms median, "
                  f"{c['ready_to_turn_ms']['max']} max (submit -> first batch {c['submit_to_turn_ms']['median']} ms, "
                  f"-> first bytes counted {c['submit_to_first_counted_ms']['median']} ms); one batch of flow A: "
                  f"{c['batch_ms']['median']} ms median wall time ({c['batch_ms']['median_bytes'] / MiB:.0f} MiB, "
                  f"max {c['batch_ms']['max']} ms); each turn by the end of the first batch running when it "
                  f"became ready: {c['met']}")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per share case")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    ap.add_argument("--jobs", type=int, default=4, help="jobs of each flow at once")
    ap.add_argument("--instances", type=int, default=4, help="instances per flow's component")
    ap.add_argument("--tail", type=float, default=4.0, help="seconds run after the window (its last batches end)")
    ap.add_argument("--probes", type=int, default=10, help="flow B jobs started in the wait case")
    ap.add_argument("--budget", default=None, help="limits.max_buffered_bytes (default: the config default)")
    ap.add_argument("--blob-mib", type=int, default=256)
    ap.add_argument("--cases", default="equal,weighted,uneven,wait")
    ap.add_argument("--label", default="run")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "fairness.json"))
    args = ap.parse_args()
    result = asyncio.run(main(args))
    report(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
