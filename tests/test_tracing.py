"""OpenTelemetry traces ([telemetry], chunkd/tracing.py, docs/tracing.md) against a real
Jaeger (tests/jaeger_support.py) and real daemons: the job's span takes its parent from
the request's traceparent, streams are child spans with their batches aggregated (no span
per chunk), a bad traceparent is ignored, traces are off by default, a job resumed after a
restart or run on another node stays one trace (cluster mode: via the NATS headers)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.cluster_support import NatsServer, start_node
from tests.conftest import ROOT, make_blob
from tests.jaeger_support import Jaeger, parent_span_id, spans, tags
from tests.service_support import Server, free_port, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
CHUNK = 16 * 1024


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    j = Jaeger(tmp_path_factory.mktemp("jaeger")).start()
    yield j
    j.stop()


@pytest.fixture
def daemon(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []
    (tmp_path / "blobs").mkdir(exist_ok=True)

    def make(*, telemetry: str = "", grace: str = "20s", start: bool = True) -> Server:
        port = free_port()
        cfg = tmp_path / "chunkd.toml"
        cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
shutdown_grace = "{grace}"
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{tmp_path / 'blobs'}"
[components.sha256]
path = "{guests['sha256']}"
[components.paced]
path = "{guests['sha256']}"
max_bytes_per_second = "2MiB"
{telemetry}""")
        s = Server(cfg, port, tmp_path / "daemon.log")
        made.append(s)
        return s.start() if start else s

    yield make
    for s in made:
        s.stop()


def telemetry(jaeger: Jaeger, service: str = "chunkd") -> str:
    return f'[telemetry]\notlp_endpoint = "{jaeger.otlp_endpoint}"\nservice_name = "{service}"\n'


def submit(s: Server, component: str, args: list[str], headers: dict[str, str] | None = None) -> str:
    status, body = s.request("POST", "/v1/jobs", {"component": component, "args": args}, headers=headers)
    assert status == 202, body
    return str(body["job_id"])


def job_spans(trace: dict[str, Any], job_id: str) -> list[dict[str, Any]]:
    return [s for s in spans(trace, "chunkd.job") if tags(s).get("chunkd.job.id") == job_id]


def find_job_trace(jaeger: Jaeger, service: str, job_id: str) -> dict[str, Any]:
    """The trace holding a job's span, found by its chunkd.job.id tag (bounded poll)."""
    q = urllib.parse.urlencode({"service": service, "tags": json.dumps({"chunkd.job.id": job_id}), "limit": 5})

    def found() -> dict[str, Any] | None:
        data = jaeger.get(f"/api/traces?{q}").get("data") or []
        return dict(data[0]) if data else None
    got: dict[str, Any] = wait_for(found, 30, 0.2, f"a trace with job {job_id}")
    return got


def test_traceparent_is_the_job_parent_and_streams_aggregate_their_batches(
        daemon: Callable[..., Server], jaeger: Jaeger, tmp_path: Path) -> None:
    size = 4 * 1024 * 1024 + 123  # 257 chunks of 16 KiB
    data = make_blob(tmp_path / "blobs", "a.bin", size)
    make_blob(tmp_path / "blobs", "b.bin", 1000)
    s = daemon(telemetry=telemetry(jaeger))
    job_id = submit(s, "sha256", [f"--chunk-size={CHUNK}", "local", "a.bin", "b.bin"],
                    {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"})
    j = s.wait_job(job_id)
    assert j["state"] == "completed", j
    assert f"{hashlib.sha256(data).hexdigest()}  a.bin" in j["output"]

    trace = jaeger.wait_trace(TRACE_ID, lambda t: job_spans(t, job_id) and len(spans(t, "chunkd.stream")) == 2
                              and spans(t, "chunkd.queued"))
    (job,) = job_spans(trace, job_id)
    assert job["traceID"] == TRACE_ID
    assert parent_span_id(job) == PARENT_SPAN  # the caller's span is the job's parent
    jt = tags(job)
    assert jt["chunkd.component"] == "sha256" and jt["chunkd.job.state"] == "completed"
    assert jt["chunkd.job.attempt"] == 1
    assert trace["processes"][job["processID"]]["serviceName"] == "chunkd"

    streams = {tags(sp)["chunkd.stream.blob"]: sp for sp in spans(trace, "chunkd.stream")}
    assert set(streams) == {"a.bin", "b.bin"}
    for sp in streams.values():
        assert parent_span_id(sp) == job["spanID"]
    a = tags(streams["a.bin"])
    assert a["chunkd.stream.bytes"] == size and a["chunkd.stream.size"] == size
    assert a["chunkd.stream.chunks"] == -(-size // CHUNK) == 257
    assert a["chunkd.stream.chunk_size"] == CHUNK and a["chunkd.stream.container"] == "local"
    assert a["chunkd.stream.outcome"] == "completed"
    assert 1 <= a["chunkd.stream.batches"] <= a["chunkd.stream.chunks"]
    assert a["chunkd.stream.guest_s"] > 0
    for key in ("budget_wait_s", "share_wait_s", "paced_s"):
        assert a[f"chunkd.stream.{key}"] >= 0
    assert tags(streams["b.bin"])["chunkd.stream.bytes"] == 1000
    # batches and chunks are attributes, not spans: the job, its wait for an instance, two streams
    assert sorted(sp["operationName"] for sp in trace["spans"]) == [
        "chunkd.job", "chunkd.queued", "chunkd.stream", "chunkd.stream"]


def test_paced_time_is_counted(daemon: Callable[..., Server], jaeger: Jaeger, tmp_path: Path) -> None:
    make_blob(tmp_path / "blobs", "p.bin", 3 * 1024 * 1024)
    s = daemon(telemetry=telemetry(jaeger))
    trace_id = "5" * 32
    job_id = submit(s, "paced", ["local", "p.bin"], {"traceparent": f"00-{trace_id}-{'6' * 16}-01"})
    assert s.wait_job(job_id)["state"] == "completed"
    trace = jaeger.wait_trace(trace_id, lambda t: job_spans(t, job_id) and spans(t, "chunkd.stream"))
    (st,) = spans(trace, "chunkd.stream")
    # 3 MiB at 2 MiB/s in 1 MiB chunks: the pacer held back the later ones
    assert tags(st)["chunkd.stream.paced_s"] > 0
    assert tags(st)["chunkd.stream.batches"] == 3


def test_bad_traceparent_is_ignored_and_the_job_gets_its_own_trace(
        daemon: Callable[..., Server], jaeger: Jaeger, tmp_path: Path) -> None:
    make_blob(tmp_path / "blobs", "c.bin", 10_000)
    s = daemon(telemetry=telemetry(jaeger, "chunkd-bad"))
    bad = [f"00-{'0' * 32}-{PARENT_SPAN}-01",  # all-zero trace id
           f"ff-{TRACE_ID}-{PARENT_SPAN}-01",  # version ff
           "00-xyz", "garbage"]
    for value in bad:
        job_id = submit(s, "sha256", ["local", "c.bin"], {"traceparent": value})
        assert s.wait_job(job_id)["state"] == "completed"
        trace = find_job_trace(jaeger, "chunkd-bad", job_id)
        trace = jaeger.wait_trace(trace["traceID"], lambda t: spans(t, "chunkd.submit") and job_spans(t, job_id))
        assert trace["traceID"] != TRACE_ID
        (sub,) = spans(trace, "chunkd.submit")
        (job,) = job_spans(trace, job_id)
        assert parent_span_id(sub) is None and parent_span_id(job) == sub["spanID"]


def test_traces_are_off_by_default(daemon: Callable[..., Server], tmp_path: Path) -> None:
    # in a fresh interpreter: nothing of OpenTelemetry is imported, no exporter exists
    code = """
import sys
from chunkd.config import TelemetryConfig
from chunkd import api, runtime, daemon
from chunkd.tracing import Tracing
t = Tracing(TelemetryConfig())
assert not t.enabled and not t.exporting
assert t.job("j", "c", None, 1, {"traceparent": "00-%s-%s-01"}) is None
with t.submission(None):
    pass
bad = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not bad, bad
print("ok")
""" % (TRACE_ID, PARENT_SPAN)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    make_blob(tmp_path / "blobs", "d.bin", 10_000)
    s = daemon()
    job_id = submit(s, "sha256", ["local", "d.bin"], {"traceparent": TRACEPARENT})
    assert s.wait_job(job_id)["state"] == "completed"
    assert not [e for e in s.log_events() if e.get("event") == "tracing_on"]


def test_a_job_resumed_after_a_restart_stays_one_trace(
        daemon: Callable[..., Server], jaeger: Jaeger, tmp_path: Path) -> None:
    make_blob(tmp_path / "blobs", "big.bin", 6 * 1024 * 1024)
    trace_id, parent = "7" * 32, "8" * 16
    s = daemon(telemetry=telemetry(jaeger), grace="300ms")
    job_id = submit(s, "paced", ["local", "big.bin"], {"traceparent": f"00-{trace_id}-{parent}-01"})
    wait_for(lambda: (st := s.job(job_id)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks")
    s.signal(signal.SIGTERM)  # past the grace: interrupted, its span ends and is flushed at close
    assert s.wait_exit(60) == 0
    s.start()  # the carrier came back from the job store
    j = s.wait_job(job_id, 120)
    assert j["state"] == "completed" and j["attempts"] == 2
    trace = jaeger.wait_trace(trace_id, lambda t: len(job_spans(t, job_id)) == 2)
    attempts = sorted(job_spans(trace, job_id), key=lambda sp: tags(sp)["chunkd.job.attempt"])
    assert [tags(sp)["chunkd.job.attempt"] for sp in attempts] == [1, 2]
    assert [tags(sp)["chunkd.job.state"] for sp in attempts] == ["running", "completed"]
    assert all(parent_span_id(sp) == parent for sp in attempts)


class HeaderTap:
    """A plain NATS subscriber (its own thread and loop) on the job subjects: it sees each
    job message as published, headers included (JetStream keeps only unacked ones)."""

    def __init__(self, url: str, subject: str) -> None:
        self.url, self.subject = url, subject
        self.headers: list[dict[str, str]] = []
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the NATS tap did not subscribe"

    async def _run(self) -> None:
        import nats
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(self.url, connect_timeout=5)

        async def got(msg: Any) -> None:
            self.headers.append(dict(msg.headers or {}))
        await nc.subscribe(self.subject, cb=got)
        await nc.flush(timeout=5)
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_cluster_trace_context_rides_in_nats_headers_and_a_moved_job_stays_one_trace(
        jaeger: Jaeger, tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    make_blob(blobs, "small.bin", 100_000)
    make_blob(blobs, "big.bin", 10 * 1024 * 1024)  # 5 s paced: a's 1 s grace cuts it off
    nats = NatsServer(tmp_path / "js", tmp_path / "nats.log").start()
    nodes: list[Server] = []
    tap: HeaderTap | None = None
    try:
        tap = HeaderTap(nats.url, "chunkd.jobs.>")
        a = start_node(tmp_path, "a", nats.url, guests, blobs, state_dir / "cache",
                       extra_components=telemetry(jaeger, "chunkd-cluster"))
        nodes.append(a)
        trace_id, parent = "9" * 32, "a" * 16
        job_id = submit(a, "sha256", ["local", "small.bin"], {"traceparent": f"00-{trace_id}-{parent}-01"})
        assert a.wait_job(job_id)["state"] == "completed"
        (sent,) = [h for h in tap.headers if h.get("Nats-Msg-Id") == job_id]
        assert sent["traceparent"] == f"00-{trace_id}-{parent}-01"  # the context rode in the headers
        trace = jaeger.wait_trace(trace_id, lambda t: job_spans(t, job_id) and spans(t, "chunkd.stream"))
        (job,) = job_spans(trace, job_id)
        assert parent_span_id(job) == parent and tags(job)["chunkd.node"] == "a"
        assert tags(spans(trace, "chunkd.stream")[0])["chunkd.stream.bytes"] == 100_000

        # a job that moves node: a stops (past its 1 s grace) mid-job, b runs it again
        trace_id, parent = "b" * 32, "c" * 16
        moved = submit(a, "paced", ["local", "big.bin"], {"traceparent": f"00-{trace_id}-{parent}-01"})
        wait_for(lambda: (st := a.job(moved)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks on a")
        a.signal(signal.SIGTERM)
        assert a.wait_exit(60) == 0
        b = start_node(tmp_path, "b", nats.url, guests, blobs, state_dir / "cache",
                       extra_components=telemetry(jaeger, "chunkd-cluster"))
        nodes.append(b)
        j = b.wait_job(moved, 120)
        assert j["state"] == "completed" and j["node"] == "b", j
        trace = jaeger.wait_trace(trace_id, lambda t: len(job_spans(t, moved)) == 2)
        spans_by_node = {tags(sp)["chunkd.node"]: sp for sp in job_spans(trace, moved)}
        assert set(spans_by_node) == {"a", "b"}
        assert all(parent_span_id(sp) == parent for sp in spans_by_node.values())
        assert tags(spans_by_node["b"])["chunkd.job.state"] == "completed"
    finally:
        if tap is not None:
            tap.close()
        for n in nodes:
            n.stop()
        nats.stop()


def test_a_collector_that_is_down_costs_no_job(daemon: Callable[..., Server], tmp_path: Path) -> None:
    """Nothing listens at otlp_endpoint: jobs complete as ever, and the daemon still stops
    (its flush at close is bounded)."""
    data = make_blob(tmp_path / "blobs", "e.bin", 300_000)
    s = daemon(telemetry=f'[telemetry]\notlp_endpoint = "http://127.0.0.1:{free_port()}"\n')
    ids = [submit(s, "sha256", ["local", "e.bin"], {"traceparent": TRACEPARENT}) for _ in range(5)]
    for job_id in ids:
        j = s.wait_job(job_id)
        assert j["state"] == "completed" and f"{hashlib.sha256(data).hexdigest()}  e.bin" in j["output"], j
    assert [e for e in s.log_events() if e.get("event") == "tracing_on"]
    s.signal(signal.SIGTERM)
    assert s.wait_exit(60) == 0


async def test_the_trace_carrier_is_kept_by_the_job_store_and_an_old_store_gains_its_column(tmp_path: Path) -> None:
    import sqlite3

    from chunkd.jobs import QUEUED, Job
    from chunkd.jobstore import SqliteJobStore
    from chunkd.tracing import submitted_trace, Tracing
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)  # the jobs table as a store before traces (and tenants) wrote it
    db.execute("""CREATE TABLE jobs (id TEXT PRIMARY KEY, component TEXT NOT NULL, args TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
        ended_at REAL, invoke_ok INTEGER, invoke_result TEXT, error TEXT, streams TEXT NOT NULL DEFAULT '[]',
        output TEXT NOT NULL DEFAULT '[]')""")
    db.execute("INSERT INTO jobs (id, component, args, state, created_at) VALUES ('old', 'c', '[]', 'queued', 1.0)")
    db.commit()
    db.close()
    store = SqliteJobStore(path)
    await store.open()
    try:
        with Tracing(None).submission({"traceparent": TRACEPARENT, "tracestate": "v=1"}):
            job = Job(component="c", args=[], state=QUEUED)  # takes the submission's carrier
        assert submitted_trace() is None
        await store.save(job.record())
        plain = Job(component="c", args=[], state=QUEUED)
        await store.save(plain.record())
        recs = {r["id"]: r for r in await store.unfinished()}
        assert Job.from_record(recs[job.id]).trace == {"traceparent": TRACEPARENT, "tracestate": "v=1"}
        assert Job.from_record(recs[plain.id]).trace is None
        assert Job.from_record(recs["old"]).trace is None  # the row from before has none
        # a carrier tampered with in the store is dropped, not trusted
        rec = dict(recs[job.id], trace={"traceparent": "00-zz"})
        assert Job.from_record(rec).trace is None
    finally:
        await store.close()
