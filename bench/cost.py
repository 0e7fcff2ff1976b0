"""What issue 28's machinery costs one tenant: bench/cost [--reps N] [--json PATH].

Three runtimes in one process, each with the same components (bench/run's receive-only
probes: the C component, the core module, the streams world), run the same 256 MiB file
job in turn, their order rotated every round so load drifts hit all three alike:
  - `baseline`: the byte-fair scheduler off (StreamSettings.fairshare = None, the delivery
    path before issue 28) and traces off;
  - `fair`: the scheduler on (one flow: the fast path), traces off: what every daemon now runs;
  - `fair+traces`: the scheduler on and traces exported over OTLP to a real Jaeger on
    loopback (skipped, and said, when scripts/install-jaeger has not built it).
A raw read of the same file (bench/run's raw_read) is the row to compare against. It prints
a table (best and median MB/s of each, and fair / baseline, traces / baseline) and writes
JSON (bench/results/cost.json). Targets (issue 28): fair no more than 3% below baseline,
fair+traces no more than 5% below.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import GUEST, MiB, chunkd_path, raw_read  # noqa: E402
from chunkd import jobrunner  # noqa: E402
from chunkd.config import config_from_mapping  # noqa: E402
from chunkd.runtime import Runtime  # noqa: E402

SIZE = 256 * MiB  # --size-mib
CHUNKS = (64 * 1024, 1024 * 1024)
PATHS = ("component", "core", "streams")
UNFAIR: set[int] = set()  # ids of the runtimes whose jobs run with the scheduler off

_settings = jobrunner.JobRunner._settings


def _maybe_unfair(self: Any, pool: Any) -> Any:
    s = _settings(self, pool)
    return dataclasses.replace(s, fairshare=None) if id(self.rt) in UNFAIR else s


jobrunner.JobRunner._settings = _maybe_unfair  # type: ignore[method-assign]


def config(folder: Path, state: Path, otlp: str | None) -> Any:
    data: dict[str, Any] = {
        "daemon": {"state_dir": str(state), "cache_dir": str(ROOT / "state" / "cache")},
        "limits": {"max_chunk_size": "4MiB", "call_timeout": "60s", "instance_memory": "256MiB"},
        "containers": {"local": {"kind": "file", "root": str(folder)}},
        "components": {p: {"path": GUEST[p]} for p in PATHS},
    }
    if otlp:
        data["telemetry"] = {"otlp_endpoint": otlp}
    return config_from_mapping(data, file="bench")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    global SIZE
    SIZE = args.size_mib * MiB
    from chunkd.logging import configure_logging
    configure_logging("console", "warning", stream=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="chunkd-cost-"))
    with open(tmp / "blob.bin", "wb") as f:
        for i in range(SIZE // MiB):
            f.write(bytes([i % 256]) * MiB)
    jaeger = None
    try:
        from tests.jaeger_support import Jaeger
        jaeger = Jaeger(tmp / "jaeger").start()
    except Exception as e:  # not built here: say so, run the rest
        print(f"traces on: skipped ({type(e).__name__}: {e}); run scripts/install-jaeger", file=sys.stderr)
    variants: dict[str, Runtime] = {}
    for name, otlp in (("baseline", None), ("fair", None),
                       ("fair+traces", jaeger.otlp_endpoint if jaeger else None)):
        if name == "fair+traces" and jaeger is None:
            continue
        rt = Runtime(config(tmp, tmp / f"state-{name.replace('+', '-')}", otlp))
        await rt.start()
        if name == "baseline":
            UNFAIR.add(id(rt))  # JobRunner.rt is its runtime
        variants[name] = rt
    res: dict[str, dict[str, list[float]]] = {}
    try:
        for path in PATHS:
            for chunk in CHUNKS:
                key = f"{path} {chunk // 1024} KiB"
                for rt in variants.values():  # warm: compile, page cache
                    await chunkd_path(rt, path, "blob.bin", SIZE, chunk, "receive")
                names = list(variants)
                for rep in range(args.reps):
                    order = names[rep % len(names):] + names[:rep % len(names)]
                    for name in order:
                        v = await chunkd_path(variants[name], path, "blob.bin", SIZE, chunk, "receive")
                        res.setdefault(key, {}).setdefault(name, []).append(v)
                    res[key].setdefault("raw read", []).append(raw_read(tmp / "blob.bin", chunk))
        # the switch took: the baseline's jobs never went through the scheduler, the others' did
        assert not variants["baseline"].fairshare.delivered, variants["baseline"].fairshare.delivered
        assert variants["fair"].fairshare.delivered, "the fair runtime's jobs were not scheduled"
    finally:
        for rt in variants.values():
            await asyncio.wait_for(rt.close(), 30)
        if jaeger is not None:
            jaeger.stop()
    rows = []
    hdr = f"{'case':18} {'raw read':>9} {'baseline':>9} {'fair':>9} {'fair/base':>10}"
    if "fair+traces" in variants:
        hdr += f" {'traces':>9} {'traces/base':>12}"
    print(f"best of {args.reps} (median in the JSON), MB/s, {SIZE // MiB} MiB receive-only jobs")
    print(hdr)
    for key, by in res.items():
        best = {n: max(v) for n, v in by.items()}
        med = {n: statistics.median(v) for n, v in by.items()}
        row: dict[str, Any] = {"case": key, "best": {n: round(x, 1) for n, x in best.items()},
                               "median": {n: round(x, 1) for n, x in med.items()},
                               "fair_vs_baseline_best": round(best["fair"] / best["baseline"] - 1, 4),
                               "fair_vs_baseline_median": round(med["fair"] / med["baseline"] - 1, 4)}
        line = (f"{key:18} {best['raw read']:9.0f} {best['baseline']:9.0f} {best['fair']:9.0f} "
                f"{100 * row['fair_vs_baseline_best']:+9.1f}%")
        if "fair+traces" in best:
            row["traces_vs_baseline_best"] = round(best["fair+traces"] / best["baseline"] - 1, 4)
            row["traces_vs_baseline_median"] = round(med["fair+traces"] / med["baseline"] - 1, 4)
            line += f" {best['fair+traces']:9.0f} {100 * row['traces_vs_baseline_best']:+11.1f}%"
        rows.append(row)
        print(line)
    out = {"bench": "cost", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reps": args.reps,
           "size_bytes": SIZE, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cost.json"))
    asyncio.run(main(ap.parse_args()))
