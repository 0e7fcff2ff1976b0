"""Cluster mode at scale, with real nodes and a real nats-server: reads come from each
node's index (never a bucket scan) and are never silently wrong, retention purges the
bucket, and the end of a job is one shielded, idempotent step."""
from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cluster_support import CuttableProxy, NatsServer, events, start_node
from tests.conftest import make_blob
from tests.service_support import Server, wait_for


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    n = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log").start()
    yield n
    n.stop()


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    b = tmp_path / "blobs"
    b.mkdir()
    make_blob(b, "s.bin", 100_000, seed=1)
    make_blob(b, "long.bin", 12 * 1024 * 1024, seed=2)
    return b


@pytest.fixture
def nodes() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.stop()


def bucket_keys(nats_url: str) -> list[str]:
    """The job keys the KV bucket holds, read with a plain nats-py client."""
    async def run() -> list[str]:
        import nats
        from nats.js.errors import NoKeysError
        nc = await nats.connect(nats_url)
        try:
            kv = await nc.jetstream().key_value("chunkd_jobs")
            try:
                return sorted(await kv.keys())
            except NoKeysError:
                return []
        finally:
            await nc.close()
    return asyncio.run(run())


def test_a_read_that_cannot_reach_the_store_is_a_503_never_an_empty_list(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer, blobs: Path,
        nodes: list[Server]) -> None:
    proxy = CuttableProxy(nats.port)
    try:
        nodes.append(start_node(tmp_path, "n1", proxy.url, guests, blobs, state_dir / "cache"))
        ids = [nodes[0].submit("sha256", ["local", "s.bin"]) for _ in range(5)]
        for jid in ids:
            assert nodes[0].wait_job(jid, 60)["state"] == "completed"
        status, body = nodes[0].request("GET", "/v1/jobs?limit=50")
        assert status == 200 and {j["job_id"] for j in body["jobs"]} == set(ids)
        proxy.cut()
        wait_for(lambda: nodes[0].request("GET", "/healthz")[0] == 503, 30, 0.1, "the node to see NATS gone")
        for path in ("/v1/jobs?limit=50", "/v1/jobs?state=completed", "/v1/status"):
            status, body = nodes[0].request("GET", path)
            assert status == 503, (path, status, body)
            assert "NATS" in body["error"] or "index" in body["error"], body
        status, body = nodes[0].request("GET", f"/v1/jobs/{ids[0]}")
        assert status in (200, 503), body  # a cached record, or a clear 503: never a 404
        proxy.heal()
        wait_for(lambda: nodes[0].request("GET", "/v1/jobs?limit=50")[0] == 200, 60, 0.2, "the index to reload")
        status, body = nodes[0].request("GET", "/v1/jobs?limit=50")
        assert {j["job_id"] for j in body["jobs"]} == set(ids)
    finally:
        proxy.close()


def test_retention_purges_finished_records_from_the_bucket_and_every_index(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer, blobs: Path,
        nodes: list[Server]) -> None:
    extra = 'job_retention = "3s"'
    nodes.append(start_node(tmp_path, "n1", nats.url, guests, blobs, state_dir / "cache", daemon_extra=extra))
    nodes.append(start_node(tmp_path, "n2", nats.url, guests, blobs, state_dir / "cache", daemon_extra=extra))
    done = [nodes[0].submit("sha256", ["local", "s.bin"]) for _ in range(4)]
    for jid in done:
        assert nodes[0].wait_job(jid, 60)["state"] == "completed"
    long = nodes[1].submit("paced", ["local", "long.bin"])  # ~6 s: running past the retention
    assert set(done) <= set(bucket_keys(nats.url))
    wait_for(lambda: not set(done) & set(bucket_keys(nats.url)), 30, 0.2, "the finished records to be purged")
    for n in nodes:  # each node's watch brings the purges (a moment after the bucket has them)
        wait_for(lambda: all(n.request("GET", f"/v1/jobs/{jid}")[0] == 404 for jid in done), 15, 0.1,
                 "every node to drop the purged jobs")
        status, body = n.request("GET", "/v1/jobs?limit=100")
        assert status == 200 and not {j["job_id"] for j in body["jobs"]} & set(done), body
    assert long in bucket_keys(nats.url)  # running: never pruned
    assert nodes[0].request("GET", f"/v1/jobs/{long}")[1]["state"] in ("running", "completed")
    j = nodes[1].wait_job(long, 60)
    assert j["state"] == "completed"
    # after a restart of every node the purged jobs stay gone
    for n in nodes:
        n.stop()
        n.start()
    for jid in done:
        assert nodes[0].request("GET", f"/v1/jobs/{jid}")[0] == 404
    assert any(e.get("count") for n in nodes for e in events(n, "jobs_expired"))


def test_kill_9_between_the_final_record_and_the_ack_does_not_run_the_job_again(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer, blobs: Path,
        nodes: list[Server]) -> None:
    n = start_node(tmp_path, "n1", nats.url, guests, blobs, state_dir / "cache", ack_wait="5s",
                   env={"CHUNKD_FAULT": "kill-after-final-write"})
    nodes.append(n)
    jid = n.submit("sha256", ["local", "s.bin"])
    assert n.proc is not None
    n.proc.wait(60)  # it killed itself right after writing the final record, before the ack
    assert n.proc.returncode == -signal.SIGKILL
    n.env.clear()
    n.start()
    # the message comes back after ack_wait; the node sees the record is final and acks it unrun
    wait_for(lambda: [e for e in events(n, "job_message_acked_unrun") if e.get("job_id") == jid], 60, 0.2,
             "the redelivered message to be acked without a run")
    j = n.request("GET", f"/v1/jobs/{jid}")[1]
    assert j["state"] == "completed" and j["attempts"] == 1, j
    digest = hashlib.sha256((blobs / "s.bin").read_bytes()).hexdigest()
    assert f"{digest}  s.bin" in j["output"]
    starts = [e for e in events(n, "job_started") if e.get("job_id") == jid]
    assert len(starts) == 1, starts  # ran once, in the first life


def test_a_drain_during_the_final_write_still_records_and_acks_the_job(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer, blobs: Path,
        nodes: list[Server]) -> None:
    n = start_node(tmp_path, "n1", nats.url, guests, blobs, state_dir / "cache", ack_wait="5s",
                   env={"CHUNKD_FAULT": "slow-final-write"})
    nodes.append(n)
    jid = n.submit("sha256", ["local", "s.bin"])
    wait_for(lambda: [e for e in events(n, "final_write_delayed") if e.get("job_id") == jid], 60, 0.05,
             "the final write to start")
    n.signal(signal.SIGTERM)  # shutdown_grace 1 s: the drain cancels runs while the final write waits 3 s
    assert n.wait_exit(60) == 0
    n.env.clear()
    n.start()
    j = n.request("GET", f"/v1/jobs/{jid}")[1]
    assert j["state"] == "completed" and j["attempts"] == 1, j
    time.sleep(0)  # no wait needed: the record was final before the first life ended
    status, body = n.request("GET", "/v1/jobs?limit=10")
    assert status == 200 and [x["job_id"] for x in body["jobs"]] == [jid]
    # nothing comes back to run: the message was acked before the first life ended
    assert not [e for e in events(n, "job_message_acked_unrun") if e.get("job_id") == jid]
    assert len([e for e in events(n, "job_started") if e.get("job_id") == jid]) == 1


def test_status_and_lists_read_the_index_not_the_bucket(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer, blobs: Path,
        nodes: list[Server]) -> None:
    """Records written by another node (and straight into the bucket) show on this node's
    lists and counts without a scan: the watch brought them."""
    nodes.append(start_node(tmp_path, "n1", nats.url, guests, blobs, state_dir / "cache"))

    async def seed() -> None:
        import nats as natslib
        nc = await natslib.connect(nats.url)
        try:
            kv = await nc.jetstream().key_value("chunkd_jobs")
            now = time.time()
            for i in range(300):
                rec = {"id": f"seed{i:04d}", "component": "sha256", "args": [], "state": "completed",
                       "attempts": 1, "created_at": now - 1000 + i, "started_at": now - 1000 + i,
                       "ended_at": now - 999 + i, "invoke_ok": True, "invoke_result": None, "error": None,
                       "streams": [], "output": [], "outputs": []}
                await kv.put(f"seed{i:04d}", json.dumps(rec).encode())
        finally:
            await nc.close()
    asyncio.run(seed())
    wait_for(lambda: nodes[0].request("GET", "/v1/jobs?limit=1&state=completed")[1]["jobs"][:1]
             and nodes[0].request("GET", "/v1/jobs?limit=1&state=completed")[1]["jobs"][0]["job_id"] == "seed0299",
             30, 0.1, "the seeded records in the index")
    status, body = nodes[0].request("GET", "/v1/jobs?limit=50&state=completed")
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == [f"seed{i:04d}" for i in range(299, 249, -1)]
    status, snap = nodes[0].request("GET", "/v1/status")
    assert status == 200 and [r["job_id"] for r in snap["recent"]][:3] == ["seed0299", "seed0298", "seed0297"]
