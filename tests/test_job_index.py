"""Reads that cost O(limit): the cluster node's JobIndex against a naive model (hypothesis),
the SQLite store's lists on their indexes (the query plans), finished jobs not kept in
memory beyond a few, and pruning often enough for a short retention."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkd.daemon import PRUNE_EVERY_S, prune_interval
from chunkd.jobindex import FINAL, IndexNotReady, JobIndex
from chunkd.jobrunner import FINISHED_IN_MEMORY_STORED
from chunkd.jobstore import SqliteJobStore
from chunkd.runtime import Runtime
from tests.conftest import config_for, make_blob

STATES = ["queued", "running", "completed", "failed", "cancelled"]

ops = st.lists(st.tuples(st.sampled_from(["put", "remove"]), st.integers(0, 30), st.sampled_from(STATES),
                         st.sampled_from(["a", "b"]), st.integers(0, 50), st.integers(0, 50)), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 40), st.sampled_from([None, *STATES]), st.integers(0, 60))
def test_the_index_answers_as_a_full_scan_would(seq: list[tuple[Any, ...]], limit: int, state: str | None,
                                                cutoff: int) -> None:
    idx = JobIndex()
    with pytest.raises(IndexNotReady):
        idx.newest(1, None)
    idx.mark_ready()
    model: dict[str, dict[str, Any]] = {}
    for op, n, s, comp, created, ended in seq:
        jid = f"j{n:02d}"
        if op == "put":
            rec = {"id": jid, "state": s, "component": comp, "created_at": float(created),
                   "ended_at": float(ended) if s in FINAL else None}
            idx.put(jid, rec)
            model[jid] = rec
        else:
            idx.remove(jid)
            model.pop(jid, None)
    naive = sorted(((r["created_at"], jid) for jid, r in model.items() if state is None or r["state"] == state),
                   reverse=True)
    assert idx.newest(limit, state) == [jid for _, jid in naive[:limit]]
    for s in STATES:
        for comp in ("a", "b"):
            assert idx.count(s, comp) == sum(1 for r in model.values() if r["state"] == s and r["component"] == comp)
    assert len(idx) == len(model)
    for s in ("running", "queued"):
        assert sorted(r["id"] for r in idx.unfinished(s)) == sorted(j for j, r in model.items() if r["state"] == s)
    old = sorted((r["ended_at"], j) for j, r in model.items() if r["state"] in FINAL and r["ended_at"] < cutoff)
    assert idx.expired(float(cutoff), 1000) == [j for _, j in old]
    assert idx.expired(float(cutoff), 1000) == [j for _, j in old]  # until removed, they are still due
    for jid in model:
        assert (idx.cached(jid) is not None) == (model[jid]["state"] not in FINAL or jid in idx._recent)


def test_a_cleared_index_refuses_to_answer_until_loaded_again() -> None:
    idx = JobIndex()
    idx.mark_ready()
    idx.put("x", {"state": "completed", "created_at": 1.0, "component": "a", "ended_at": 2.0})
    idx.clear("NATS disconnected")
    with pytest.raises(IndexNotReady, match="NATS disconnected"):
        idx.newest(10, None)
    with pytest.raises(IndexNotReady):
        idx.count()


def test_the_stores_lists_read_their_indexes(tmp_path: Path) -> None:
    import asyncio
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    asyncio.run(store.open())
    asyncio.run(store.close())
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        plans = {
            "all": db.execute("EXPLAIN QUERY PLAN SELECT id FROM jobs ORDER BY created_at DESC LIMIT 50").fetchall(),
            "state": db.execute("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 'completed' "
                                "ORDER BY created_at DESC LIMIT 50").fetchall(),
            "prune": db.execute("EXPLAIN QUERY PLAN DELETE FROM jobs WHERE state IN ('completed', 'failed', "
                                "'cancelled') AND ended_at < 5").fetchall(),
        }
    finally:
        db.close()
    text = {k: " ".join(str(r[-1]) for r in v) for k, v in plans.items()}
    assert "jobs_created" in text["all"] and "TEMP B-TREE" not in text["all"], text
    assert "jobs_state_created" in text["state"] and "TEMP B-TREE" not in text["state"], text
    assert "USING INDEX" in text["prune"], text


async def test_finished_jobs_are_not_kept_in_memory_and_lists_come_from_the_store(
        tmp_path: Path, blobs: Path, guests: dict[str, Path]) -> None:
    make_blob(blobs, "t.bin", 1000)
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    rt = Runtime(config_for(tmp_path / "state", blobs, guests), store)
    await rt.start()
    try:
        ids = []
        for _ in range(FINISHED_IN_MEMORY_STORED + 40):
            job = await rt.run("probe", ["open s local t.bin"])
            assert job.state == "completed", job.error
            ids.append(job.id)
        assert len(rt.runner.jobs) <= FINISHED_IN_MEMORY_STORED
        got = await rt.job_summaries(50, None)
        assert [j["job_id"] for j in got] == ids[::-1][:50]
        got = await rt.job_summaries(30, "completed")
        assert [j["job_id"] for j in got] == ids[::-1][:30]
        assert await rt.job_summaries(10, "running") == []
        oldest = await rt.job_summary(ids[0])  # gone from memory, still in the store
        assert oldest is not None and oldest["state"] == "completed"
    finally:
        await rt.close()
        await store.close()


def test_pruning_runs_often_enough_for_the_retention() -> None:
    assert prune_interval(1.0) == 1.0
    assert prune_interval(30.0) == 3.0
    assert prune_interval(7 * 86400.0) == PRUNE_EVERY_S


def test_the_records_kept_whole_are_the_newest_finished_ones() -> None:
    import random
    from chunkd.jobindex import RECENT_RECORDS
    idx = JobIndex()
    idx.mark_ready()
    order = list(range(RECENT_RECORDS + 300))
    random.Random(7).shuffle(order)
    for i in order:  # written in any order: what is kept follows created_at, not the write order
        idx.put(f"j{i:05d}", {"state": "completed", "created_at": float(i), "component": "a", "ended_at": i + 1.0})
    kept = {j for j in (f"j{i:05d}" for i in range(RECENT_RECORDS + 300)) if idx.cached(j) is not None}
    assert kept == {f"j{i:05d}" for i in range(300, RECENT_RECORDS + 300)}
    assert all(idx.cached(j) is not None for j in idx.newest(50, None))
