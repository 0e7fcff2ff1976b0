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
from tests.cluster_support import CuttableProxy, NatsServer, events, start_node, wait_all
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
