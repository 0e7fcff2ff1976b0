"""Hostile guests (tests/guests/hostile, a real componentize-py component), each while
another tenant's job streams: the hostile job ends (never wedges) with a clear reason,
the tenant's job completes with exact bytes, the hostile component serves its next
job, and every byte of budget comes back (the conftest fixture checks the rest)."""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chunkd.summary import job_summary
from chunkd.jobs import COMPLETED, FAILED
from chunkd.streamset import MAX_INVOKE_RESULT
from tests.conftest import make_blob
from tests.waits import until

MiB = 1024 * 1024
TENANT = "tenant.bin"
TENANT_SIZE = 6 * MiB


@dataclass(frozen=True)
class Case:
    args: list[str]
    state: str
    error: str | None = None  # a part of job.error
    limits: tuple[tuple[str, Any], ...] = ()


CASES: dict[str, Case] = {
    "trap-invoke": Case(["trap-invoke"], FAILED, "invoke trapped"),
    "loop-invoke": Case(["loop-invoke"], FAILED, "invoke ran past call_timeout"),
    "trap-chunk": Case(["trap-chunk", "local", "h.bin"], FAILED, "handle-chunk trapped"),
    "loop-chunk": Case(["loop-chunk", "local", "h.bin"], FAILED, "handle-chunk ran past call_timeout"),
    "bomb-chunk": Case(["bomb-chunk", "local", "h.bin"], FAILED, "handle-chunk trapped"),
    "trap-ended": Case(["trap-ended", "local", "h.bin"], FAILED, "stream-ended trapped"),
    "loop-ended": Case(["loop-ended", "local", "h.bin"], FAILED, "stream-ended ran past call_timeout"),
    "many-starts": Case(["many-starts", "local", "h.bin", "10000"], COMPLETED,
                        limits=(("max_pending_streams", 200), ("call_timeout", "20s"))),
    "start-from-chunk": Case(["start-from-chunk", "local", "h.bin"], COMPLETED),
    "start-from-ended": Case(["start-from-ended", "local", "h.bin"], COMPLETED),
    "big-result": Case(["big-result", "8"], COMPLETED),
    # CPython in wasm prints slowly: the flood gets time enough to finish (host time spent
    # on its output is not counted), so what is tested is how chunkd takes it
    "stdout-flood": Case(["stdout-flood", "12000"], COMPLETED, limits=(("call_timeout", "20s"),)),
    "bad-utf8": Case(["bad-utf8"], COMPLETED),
}


def tenant_digest(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if line.endswith(f"  {TENANT}")]


@pytest.mark.parametrize("mode", list(CASES))
async def test_hostile_guest_alongside_a_tenant(harness, blobs: Path, mode: str) -> None:
    case = CASES[mode]
    tenant = make_blob(blobs, TENANT, TENANT_SIZE, seed=11)
    hostile_blob = make_blob(blobs, "h.bin", 40_000, seed=12)
    limits = {"call_timeout": "1s", "instance_memory": "64MiB", **dict(case.limits)}
    comps = {"hostile": {"instances": 1},
             # paced so that it is still streaming while the hostile job misbehaves
             "sha256": {"instances": 1, "max_bytes_per_second": "4MiB"}}
    async with harness(components=comps, limits=limits) as h:
        rt = h.runtime
        other = rt.submit("sha256", ["--chunk-size=65536", "local", TENANT])
        await until(lambda: other.deliveries and other.deliveries[0].stats.chunks > 0, "the tenant to stream")
        bad = rt.submit("hostile", case.args)
        await asyncio.wait_for(bad.done.wait(), 60)
        await asyncio.wait_for(other.done.wait(), 60)
        assert bad.started_at is not None and other.ended_at is not None
        assert bad.started_at < other.ended_at, "the tenant must still stream while the hostile job runs"

        print(f"hostile {mode}: {bad.state} ({bad.error}); tenant {other.state}")
        assert bad.state == case.state, (bad.state, bad.error)
        if case.error is not None:
            assert case.error in (bad.error or ""), bad.error
        assert other.state == COMPLETED, other.error
        assert tenant_digest(h.out(other)) == [hashlib.sha256(tenant).hexdigest()]

        lines = h.out(bad)
        if mode == "many-starts":
            tally = dict(kv.split("=") for kv in next(x for x in lines if x.startswith("tally ")).split()[1:])
            print(f"hostile many-starts tally: {tally}")
            ok = int(tally.get("ok", 0))
            assert 0 < ok <= 200 and ok + int(tally.get("Failed", 0)) == 10000, tally
            assert len(bad.deliveries) == ok and all(str(d.outcome) == "completed" for d in bad.deliveries)
        if mode in ("start-from-chunk", "start-from-ended"):
            ends = sorted(x for x in lines if x.startswith("ended "))
            second = 2 if mode == "start-from-chunk" else 7
            assert ends == ["ended 1 completed", f"ended {second} completed"]
            assert all(d.stats.bytes == len(hostile_blob) for d in bad.deliveries)
        if mode == "big-result":
            assert bad.invoke_result is not None and len(bad.invoke_result) < MAX_INVOKE_RESULT + 100
            assert bad.invoke_result.endswith("more characters not kept]")
            assert len(str(job_summary(bad))) < 2 * MAX_INVOKE_RESULT
        if mode == "stdout-flood":
            assert len(bad.output) <= 1000 and bad.output[0] != "flood line 0"  # the newest kept
            assert bad.output_lines >= 12000  # every line was seen; past 10,000 only counted, not logged
            assert all(len(x) <= 64 * 1024 for x in bad.output)
        if mode == "bad-utf8":
            assert any("\ufffd" in x and x.startswith("bad ") for x in lines), lines

        # the hostile component serves its next job (a fresh instance where it broke)
        again = await asyncio.wait_for(h.run("hostile", ["start-from-chunk", "local", "h.bin"]), 60)
        assert again.state == COMPLETED, again.error
        if case.error is not None:
            assert again.instance != bad.instance
        assert rt.budget.in_use == 0
