"""The SQLite job store: round trip, unfinished jobs, retention."""
from __future__ import annotations

import time
from pathlib import Path

from chunkd.summary import job_summary
from chunkd.jobs import COMPLETED, QUEUED, RUNNING, Job
from chunkd.jobstore import SqliteJobStore


async def test_round_trip_unfinished_and_prune(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        old = Job(component="c", args=["a", "ü"], state=COMPLETED, ended_at=time.time() - 3600, attempts=1)
        old.output.extend(["line 1", "line 2"])
        fresh = Job(component="c", args=[], state=COMPLETED, ended_at=time.time(), attempts=1)
        queued = Job(component="c", args=["x"], state=QUEUED)
        running = Job(component="c", args=["y"], state=RUNNING, attempts=2, invoke_ok=True, invoke_result="ok")
        for j in (old, fresh, queued, running):
            await store.save(j.record())
        got = await store.get(old.id)
        assert got is not None and got["args"] == ["a", "ü"] and got["output"] == ["line 1", "line 2"]
        assert job_summary(Job.from_record(got))["output"] == ["line 1", "line 2"]
        assert {r["id"] for r in await store.unfinished()} == {queued.id, running.id}
        r = next(r for r in await store.unfinished() if r["id"] == running.id)
        assert r["attempts"] == 2 and r["invoke_ok"] is True
        assert await store.prune(time.time() - 60) == 1
        assert await store.get(old.id) is None and await store.get(fresh.id) is not None
        assert len(await store.recent(10)) == 3 and len(await store.recent(10, QUEUED)) == 1
    finally:
        await store.close()
    # durable across connections
    store2 = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store2.open()
    try:
        assert (await store2.get(queued.id)) is not None
    finally:
        await store2.close()
