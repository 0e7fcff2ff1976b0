"""Cluster mode against a real nats-server (JetStream) on loopback: several `chunkd serve`
nodes share one queue; no accepted job is lost, none runs on two nodes at once."""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.config import config_from_mapping
from chunkd.errors import ConfigError
from tests.cluster_support import (
    CuttableProxy,
    NatsServer,
    events,
    start_node,
    wait_all,
)
from tests.conftest import make_blob
from tests.service_support import Server, wait_for


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    n = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log").start()
    yield n
    n.stop()


@pytest.fixture
def cluster_blobs(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    digests = {}
    for name, size in (("s1.bin", 200_000), ("s2.bin", 700_000), ("long.bin", 12 * 1024 * 1024)):
        digests[name] = hashlib.sha256(make_blob(blobs, name, size, seed=size)).hexdigest()
    return blobs, digests


@pytest.fixture
def nodes() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.stop()


def ts(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_cluster_config_is_validated(tmp_path: Path) -> None:
    base = {"components": {"a": {"path": "x.wasm"}}}
    ok = config_from_mapping({**base, "cluster": {"nats_url": "nats://127.0.0.1:4222", "node": "n1"}}, file="c.toml")
    assert ok.cluster is not None and ok.cluster.node == "n1" and ok.cluster.ack_wait_s == 30
    for cluster, key in (({"node": "n1"}, "cluster.nats_url"),
                         ({"nats_url": "http://x", "node": "n1"}, "cluster.nats_url"),
                         ({"nats_url": "nats://h:1", "node": "a.b"}, "cluster.node"),
                         ({"nats_url": "nats://h:1", "ack_wait": "5s", "heartbeat": "2s"}, "cluster.ack_wait"),
                         ({"nats_url": "nats://h:1", "bogus": 1}, "cluster.bogus"),
                         ({"nats_url": "nats://${CHUNKD_TEST_UNSET_VAR}@h:1"}, "cluster.nats_url")):
        with pytest.raises(ConfigError) as e:
            config_from_mapping({**base, "cluster": cluster}, file="c.toml")
        assert e.value.key == key, (cluster, str(e.value))
    with pytest.raises(ConfigError) as e:
        config_from_mapping({"components": {"a.b": {"path": "x"}}, "cluster": {"nats_url": "nats://h:1"}}, file="c")
    assert e.value.key == "components.a.b"


def test_jobs_spread_over_nodes_and_all_complete(tmp_path: Path, state_dir: Path, guests: dict[str, Path],
                                                 nats: NatsServer, cluster_blobs: tuple[Path, dict[str, str]],
                                                 nodes: list[Server]) -> None:
    blobs, digests = cluster_blobs
    for name in ("n1", "n2", "n3"):
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache"))
    ids: dict[str, str] = {}
    for i in range(30):
        blob = ("s1.bin", "s2.bin")[i % 2]
        ids[nodes[i % 3].submit("sha256", ["local", blob])] = blob
    jobs = wait_all(nodes[(1)], list(ids), 120)
    ran_on: dict[str, int] = {}
    for jid, j in jobs.items():
        assert j["state"] == "completed", j
        assert f"{digests[ids[jid]]}  {ids[jid]}" in j["output"]
        ran_on[str(j["node"])] = ran_on.get(str(j["node"]), 0) + 1
    assert set(ran_on) == {"n1", "n2", "n3"}, ran_on  # every node ran some
    # status from any node shows the cluster's jobs and where they ran
    status, listed = nodes[2].request("GET", "/v1/jobs?limit=100")
    assert status == 200 and {j["job_id"] for j in listed["jobs"]} >= set(ids)
    status, health = nodes[0].request("GET", "/healthz")
    assert status == 200 and health["nats"] == "connected" and health["node"] == "n1"
    _, metrics = nodes[0].request("GET", "/metrics")
    assert 'chunkd_jobs_running{node="n1"}' in str(metrics)


def _running_on(server: Server, jid: str) -> str | None:
    j = server.job(jid)
    return str(j["node"]) if j["state"] == "running" and j["streams"] and j["streams"][0]["chunks"] else None


def test_kill_9_of_the_running_node_reruns_the_job_elsewhere(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer,
        cluster_blobs: tuple[Path, dict[str, str]], nodes: list[Server]) -> None:
    blobs, digests = cluster_blobs
    for name in ("n1", "n2"):
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache"))
    jid = nodes[0].submit("paced", ["local", "long.bin"])  # 12 MiB at 2 MiB/s: ~6 s
    owner = wait_for(lambda: _running_on(nodes[0], jid), 30, 0.1, "the paced job to run")
    victim = nodes[0] if owner == "n1" else nodes[1]
    other = nodes[1] if victim is nodes[0] else nodes[0]
    assert victim.proc is not None
    killed_at = time.time()
    victim.proc.kill()
    victim.proc.wait(10)
    j = other.wait_job(jid, 60)
    recovered = time.time() - killed_at
    assert j["state"] == "completed", j
    assert j["attempts"] == 2 and j["node"] == other.config.stem
    assert f"{digests['long.bin']}  long.bin" in j["output"]
    started = [e for e in events(other, "job_started") if e.get("job_id") == jid]
    print(f"kill -9 recovery: redelivered and started {ts(started[0]) - killed_at:.1f}s after the kill, "
          f"completed {recovered:.1f}s after it (ack_wait 6s, run ~6s)")
    assert recovered < 6 + 6 + 10  # ack_wait + the job's run time + margin


def test_a_node_cut_off_from_nats_stops_before_the_job_runs_elsewhere(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer,
        cluster_blobs: tuple[Path, dict[str, str]], nodes: list[Server]) -> None:
    blobs, digests = cluster_blobs
    proxy = CuttableProxy(nats.port)
    try:
        nodes.append(start_node(tmp_path, "cut", proxy.url, guests, blobs, state_dir / "cache"))
        jid = nodes[0].submit("paced", ["local", "long.bin"])
        wait_for(lambda: _running_on(nodes[0], jid), 30, 0.1, "the job to run on the node behind the proxy")
        nodes.append(start_node(tmp_path, "other", nats.url, guests, blobs, state_dir / "cache"))
        proxy.cut()
        j = nodes[1].wait_job(jid, 90)
        assert j["state"] == "completed" and j["node"] == "other", j
        assert f"{digests['long.bin']}  long.bin" in j["output"]
        # the cut node stopped delivering (its streams ended "node lost its lease") before
        # the job started on the other node: the running intervals never overlap
        stopped = [e for e in events(nodes[0], "job_interrupted") if e.get("job_id") == jid]
        ends = [e for e in events(nodes[0], "stream_ended") if e.get("job_id") == jid]
        started = [e for e in events(nodes[1], "job_started") if e.get("job_id") == jid]
        assert stopped and started and ends, (stopped, started)
        assert "node lost its lease" in str(ends[-1]["end"])
        gap = ts(started[0]) - max(ts(stopped[0]), ts(ends[-1]))
        print(f"overlap check: the cut node stopped {gap:.2f}s before the other node started the job")
        assert gap > 0
        status, health = nodes[0].request("GET", "/healthz")
        assert status == 503 and health["nats"] == "disconnected"
    finally:
        proxy.close()


def asker_name(s: Server, nodes: list[Server]) -> str:
    return "n1" if s is nodes[0] else "n2"


def test_cancel_on_one_node_reaches_the_running_node(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer,
        cluster_blobs: tuple[Path, dict[str, str]], nodes: list[Server]) -> None:
    blobs, _ = cluster_blobs
    for name in ("n1", "n2"):
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache"))
    jid = nodes[0].submit("paced", ["local", "long.bin"])
    owner = wait_for(lambda: _running_on(nodes[0], jid), 30, 0.1, "the paced job to run")
    asker = nodes[1] if owner == "n1" else nodes[0]
    # progress from anywhere: the other node lists the stream from the key-value bucket
    seen = wait_for(lambda: [s for s in asker.request("GET", "/v1/streams")[1]["streams"]
                             if s["job_id"] == jid and s["bytes"] > 0], 15, 0.2, "the stream in /v1/streams")
    assert seen[0]["node"] == owner and seen[0]["blob"] == "long.bin"
    # the status page's snapshot on the other node shows the cluster's running job too
    status, snap = asker.request("GET", "/v1/status")
    assert status == 200 and snap["node"] == asker_name(asker, nodes)
    running = [j for j in snap["running"] if j["job_id"] == jid]
    assert running and running[0]["node"] == owner and running[0]["streams"][0]["blob"] == "long.bin"
    t0 = time.monotonic()
    status, body = asker.request("DELETE", f"/v1/jobs/{jid}")
    assert status == 202 and body["cancel_requested"] is True
    j = asker.wait_job(jid, 30)
    assert j["state"] == "cancelled" and j["node"] == owner, j
    assert j["streams"][0]["end"] == "cancelled"
    print(f"cross-node cancel: ended {time.monotonic() - t0:.2f}s after the DELETE")
    # a queued job cancelled anywhere never starts
    blocker = nodes[0].submit("paced", ["local", "long.bin"])
    blocker2 = nodes[0].submit("paced", ["local", "long.bin"])
    queued = nodes[0].submit("paced", ["local", "s1.bin"])
    status, _ = nodes[1].request("DELETE", f"/v1/jobs/{queued}")
    assert status == 202
    for b in (blocker, blocker2):
        nodes[0].request("DELETE", f"/v1/jobs/{b}")
    j = nodes[0].wait_job(queued, 30)
    assert j["state"] == "cancelled" and j["started_at"] is None, j


def test_nats_restart_loses_no_accepted_job_and_duplicates_run_once(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer,
        cluster_blobs: tuple[Path, dict[str, str]], nodes: list[Server]) -> None:
    blobs, digests = cluster_blobs
    for name in ("n1", "n2"):
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache"))
    ids = {nodes[i % 2].submit("paced", ["local", "s2.bin"]): "s2.bin" for i in range(6)}
    # NATS goes away once the jobs are under way (one started: ~1 s of paced work in all)
    wait_for(lambda: any(nodes[0].job(jid)["state"] != "queued" for jid in ids), 30, 0.05, "a job to start")
    nats.stop()  # the store is kept
    wait_for(lambda: all(n.request("GET", "/healthz")[0] == 503 for n in nodes), 30, 0.1,
             "both nodes to see NATS gone")
    nats.start()
    wait_for(lambda: all(n.request("GET", "/healthz")[0] == 200 for n in nodes), 30, 0.2, "nodes to reconnect")
    ids.update({nodes[0].submit("sha256", ["local", "s1.bin"]): "s1.bin"})
    jobs = wait_all(nodes[0], list(ids), 120)
    for jid, j in jobs.items():
        assert j["state"] == "completed", j
        assert f"{digests[ids[jid]]}  {ids[jid]}" in j["output"]

    # the same job published twice (a client retrying): JetStream drops the duplicate
    async def publish_twice() -> str:
        import nats as nats_py

        from chunkd.jobs import Job
        nc = await nats_py.connect(nats.url)
        js = nc.jetstream()
        job = Job(component="sha256", args=["local", "s1.bin"])
        kv = await js.key_value("chunkd_jobs")
        await kv.create(job.id, json.dumps(job.record()).encode())
        acks = [await js.publish("chunkd.jobs.sha256", job.id.encode(), headers={"Nats-Msg-Id": job.id})
                for _ in range(2)]
        assert acks[1].duplicate is True
        await nc.close()
        return job.id
    dup = asyncio.run(publish_twice())
    j = nodes[1].wait_job(dup, 60)
    assert j["state"] == "completed" and j["attempts"] == 1

    # no second delivery can come once the component's consumer has nothing left to deliver
    # and nothing unacked (the duplicate was dropped at publish: one message in all)
    async def sha256_consumer_settled() -> tuple[int, int]:
        import nats as nats_py
        nc = await nats_py.connect(nats.url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 30
            while True:
                ci = await js.consumer_info("CHUNKD_JOBS", "chunkd-sha256")
                left = (ci.num_pending or 0, ci.num_ack_pending or 0)
                if left == (0, 0) or time.monotonic() > deadline:
                    return left
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
    assert asyncio.run(sha256_consumer_settled()) == (0, 0)  # (not yet delivered, delivered and unacked)
    starts = [e for n in nodes for e in events(n, "job_started") if e.get("job_id") == dup]
    assert len(starts) == 1, starts


def test_sigterm_hands_the_running_job_back(
        tmp_path: Path, state_dir: Path, guests: dict[str, Path], nats: NatsServer,
        cluster_blobs: tuple[Path, dict[str, str]], nodes: list[Server]) -> None:
    blobs, digests = cluster_blobs
    nodes.append(start_node(tmp_path, "leaving", nats.url, guests, blobs, state_dir / "cache"))
    jid = nodes[0].submit("paced", ["local", "long.bin"])
    wait_for(lambda: _running_on(nodes[0], jid), 30, 0.1, "the paced job to run")
    nodes.append(start_node(tmp_path, "staying", nats.url, guests, blobs, state_dir / "cache"))
    import signal
    nodes[0].signal(signal.SIGTERM)  # shutdown_grace is 1s here: the 6 s job is interrupted, not acked
    assert nodes[0].wait_exit(60) == 0
    j = nodes[1].wait_job(jid, 60)
    assert j["state"] == "completed" and j["node"] == "staying" and j["attempts"] == 2, j
    assert f"{digests['long.bin']}  long.bin" in j["output"]
