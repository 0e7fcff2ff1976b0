"""Outputs (chunkd/outputs.py): a job attempt's blobs, committed with the job or not at all.

Real parts: real files, moto's S3 server through the real sinks, a real Runtime with
its SQLite job store; the guest side is driven directly through JobOutputs (what the
instance thread calls), and a "dead" attempt is a real process killed with SIGKILL."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from chunkd.config import Config, config_from_mapping
from chunkd.errors import ConfigError, SourceError
from chunkd.flowcontrol import BufferBudget
from chunkd.jobs import COMPLETED, FAILED, Job
from chunkd.jobstore import SqliteJobStore
from chunkd.outputs import JobOutputs, OutputRefused
from chunkd.runtime import Runtime
from chunkd.sinks.base import Sink, WritableContainer
from chunkd.streamset import Outcome
from tests.remote_support import moto_server, s3_client
from tests.waits import until

MiB = 1024 * 1024
BUCKET = "chunkd-outputs"
ROOT = Path(__file__).resolve().parent.parent


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".chunkd-out.")]


def data_of(size: int, seed: int = 1) -> bytes:
    """`size` bytes of a pattern whose period (251) is prime to every chunk and part size."""
    base = bytes((i * 31 + seed) % 251 for i in range(251))
    return (base * (size // 251 + 1))[:size]


def make_config(tmp: Path, *, limits: dict[str, Any] | None = None, containers: dict[str, Any] | None = None,
                components: dict[str, Any] | None = None) -> Config:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    data = {
        "daemon": {"state_dir": str(tmp / "state"), "log_format": "console"},
        "limits": {"max_chunk_size": "1MiB", **(limits or {})},
        "containers": {"out": {"kind": "file", "root": str(out), "writable": True}, **(containers or {})},
        "components": components or {"comp": {"path": "comp.wasm"}},
    }
    return config_from_mapping(data, file="test.toml")


class Daemon:
    """A real Runtime with its SQLite store on `tmp/state` (what `chunkd serve` builds)."""

    def __init__(self, config: Config) -> None:
        self.store = SqliteJobStore(config.daemon.state_dir / "jobs.sqlite3")
        self.rt = Runtime(config, store=self.store, only=set())  # no guest is loaded: none runs

    async def __aenter__(self) -> "Daemon":
        await self.store.open()
        await self.rt.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await asyncio.wait_for(self.rt.close(), 30)
        finally:
            await self.store.close()

    async def outputs(self, job_id: str = "job1", component: str = "comp", attempt: int = 1) -> JobOutputs:
        return await self.rt.job_outputs(job_id, component, attempt)


@pytest.fixture
def daemon(tmp_path: Path) -> Callable[..., Daemon]:
    def make(**kw: Any) -> Daemon:
        return Daemon(make_config(tmp_path, **kw))
    return make


async def write_all(outs: JobOutputs, handle: int, data: bytes, chunk: int = 256 * 1024) -> None:
    for at in range(0, len(data), chunk):
        await outs.write(handle, data[at:at + chunk])


# --- file: commit, abort, drop ------------------------------------------------------------

async def test_file_commit_is_exact_and_abort_leaves_nothing(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with daemon() as d:
        outs = await d.outputs()
        for size, name in ((0, "empty.bin"), (1, "one.bin"), (3 * MiB + 5, "deep/er/big.bin")):
            h = await outs.create("out", name)
            await write_all(outs, h, data_of(size))
            await outs.finish(h)
        assert not (out / "one.bin").exists(), "visible before the job completed"
        assert [o["state"] for o in outs.view()] == ["sealed"] * 3
        await outs.commit()
        assert (out / "empty.bin").read_bytes() == b""
        assert (out / "one.bin").read_bytes() == data_of(1)
        assert (out / "deep/er/big.bin").read_bytes() == data_of(3 * MiB + 5)
        view = outs.view()
        assert [(o["name"], o["bytes"], o["state"]) for o in view] == [
            ("empty.bin", 0, "committed"), ("one.bin", 1, "committed"), ("deep/er/big.bin", 3 * MiB + 5, "committed")]
        assert all(o["version"] for o in view)
        rows = await d.store.outputs("job1")
        assert [r["state"] for r in rows] == ["committed"] * 3 and rows[2]["bytes"] == 3 * MiB + 5
        assert d.rt.metrics.value("chunkd_outputs_committed_total", component="comp") == 3
        assert d.rt.metrics.value("chunkd_output_bytes_written_total", component="comp") == 3 * MiB + 6

        outs2 = await d.outputs("job2")
        h1 = await outs2.create("out", "never.bin")
        await write_all(outs2, h1, data_of(2 * MiB))
        await outs2.finish(h1)
        h2 = await outs2.create("out", "half.bin")
        await outs2.write(h2, b"partial")
        h3 = await outs2.create("out", "dropped.bin")
        await outs2.write(h3, b"x")
        await outs2.drop(h3)  # dropped unfinished: aborted at once
        assert [o["state"] for o in outs2.view()] == ["sealed", "writing", "aborted"]
        await outs2.abort()
        await outs2.abort()  # idempotent
        assert not (out / "never.bin").exists() and not (out / "half.bin").exists()
        assert not (out / "dropped.bin").exists()
        assert temps(out) == []
        assert {o["state"] for o in outs2.view()} == {"aborted"}
        assert {r["state"] for r in await d.store.outputs("job2")} == {"aborted"}
        with pytest.raises(OutputRefused) as e:
            await outs2.create("out", "late.bin")
        assert e.value.kind == "closed"
        assert d.rt.budget.in_use == 0


async def test_unfinished_output_fails_the_commit(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    async with daemon() as d:
        outs = await d.outputs()
        h = await outs.create("out", "a.bin")
        await outs.write(h, b"abc")
        await outs.finish(h)
        h2 = await outs.create("out", "b.bin")
        await outs.write(h2, b"abc")
        with pytest.raises(OutputRefused, match="out/b.bin was never finished"):
            await outs.commit()
        assert not (tmp_path / "out" / "a.bin").exists() and temps(tmp_path / "out") == []
        assert d.rt.budget.in_use == 0


async def test_job_runner_commits_on_completion_and_aborts_otherwise(daemon: Callable[..., Daemon],
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with daemon() as d:
        runner = d.rt.runner
        for state, visible in ((COMPLETED, True), (FAILED, False)):
            job = Job(component="comp", args=[])
            job.live_outputs = await d.outputs(job.id)
            h = await job.live_outputs.create("out", f"{state}.bin")
            await job.live_outputs.write(h, b"data")
            await job.live_outputs.finish(h)
            outcome = await runner._end_outputs(job, Outcome(state, None if state == COMPLETED else "boom"))
            assert outcome.state == state
            assert (out / f"{state}.bin").exists() == visible
            assert job.output_summaries()[0]["state"] == ("committed" if visible else "aborted")
        # a failure the guest ignored fails a job that returned true, and nothing is committed
        job = Job(component="comp", args=[])
        outs = job.live_outputs = await d.rt.job_outputs(job.id, "comp", 1)
        outs._max_bytes = 10
        h = await outs.create("out", "bomb.bin")
        with pytest.raises(OutputRefused):
            await outs.write(h, b"x" * 11)
        outcome = await runner._end_outputs(job, Outcome(COMPLETED))
        assert outcome.state == FAILED and outcome.error is not None and "max_output_bytes" in outcome.error
        assert not (out / "bomb.bin").exists() and temps(out) == []


# --- refusals -------------------------------------------------------------------------------

async def test_refusals(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "exists.bin").write_bytes(b"old")
    containers = {"ro": {"kind": "file", "root": str(ro)},
                  "keep": {"kind": "file", "root": str(keep), "writable": True, "overwrite": False}}
    async with daemon(containers=containers, limits={"max_output_bytes": "1MiB"}) as d:
        outs = await d.outputs()
        with pytest.raises(OutputRefused, match=r"container ro is read-only \(containers.ro.writable = false\)"):
            await outs.create("ro", "x.bin")
        with pytest.raises(OutputRefused, match="no container named 'nope'"):
            await outs.create("nope", "x.bin")
        for bad in ("../escape.bin", "/etc/passwd", "a/../../b", ".chunkd-out.x.tmp"):
            with pytest.raises(OutputRefused) as e:
                await outs.create("out", bad)
            assert e.value.kind == "invalid", (bad, str(e.value))
        assert outs.failure is None  # a refused create does not fail the job by itself

        # not granted: components.C.containers
        granted = JobOutputs("j", 1, "comp", sinks=d.rt.sinks, containers=d.rt.config.containers,
                             grants=frozenset({"keep"}), budget=d.rt.budget)
        with pytest.raises(OutputRefused, match=r"component comp is not granted container out "
                                                r"\(components.comp.containers\)"):
            await granted.create("out", "x.bin")
        await granted.abort()

        # overwrite = false and the name exists: the job fails
        with pytest.raises(OutputRefused, match="exists"):
            await outs.create("keep", "exists.bin")
        assert outs.failure is not None and "overwrite = false" in outs.failure
        assert (keep / "exists.bin").read_bytes() == b"old"
        with pytest.raises(OutputRefused):
            await outs.commit()
        assert temps(keep) == [] and temps(tmp_path / "out") == []

        # max_output_bytes counts every output of the attempt together
        outs = await d.outputs("job2")
        a = await outs.create("out", "a.bin")
        b = await outs.create("out", "b.bin")
        await outs.write(a, b"x" * (MiB // 2))
        await outs.write(b, b"x" * (MiB // 2))
        await outs.finish(a)
        with pytest.raises(OutputRefused, match=r"limits.max_output_bytes \(1048576 bytes\)"):
            await outs.write(b, b"y")
        with pytest.raises(OutputRefused):  # the failure sticks, whatever the guest does next
            await outs.finish(b)
        with pytest.raises(OutputRefused, match="max_output_bytes"):
            await outs.commit()
        assert not (tmp_path / "out" / "a.bin").exists() and not (tmp_path / "out" / "b.bin").exists()
        assert temps(tmp_path / "out") == [] and d.rt.budget.in_use == 0


def test_config_keys(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, limits={"max_output_bytes": "2MiB"},
                      components={"c": {"path": "c.wasm", "containers": ["out"]}, "d": {"path": "d.wasm"}})
    assert cfg.limits.max_output_bytes == 2 * MiB
    assert cfg.components["c"].containers == frozenset({"out"}) and cfg.components["d"].containers is None
    assert make_config(tmp_path).limits.max_output_bytes == 0
    with pytest.raises(ConfigError, match="components.c.containers: no container named 'b'"):
        make_config(tmp_path, components={"c": {"path": "c.wasm", "containers": ["b"]}})
    with pytest.raises(ConfigError, match="components.c.containers"):
        make_config(tmp_path, components={"c": {"path": "c.wasm", "containers": "out"}})


# --- grants on reads --------------------------------------------------------------------------

async def test_granted_containers_confine_reads(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "x.bin").write_bytes(b"hello")
    containers = {"a": {"kind": "file", "root": str(a)}, "b": {"kind": "file", "root": str(b)}}
    async with daemon(containers=containers) as d:
        svc = d.rt.services
        svc.grants = {"C": frozenset({"a"}), "open": None}
        blob = svc.open_blob_now("a", "x.bin", component="C")
        assert blob is not None
        await blob.close()
        with pytest.raises(SourceError, match=r"component C is not granted container b \(components.C.containers\)"):
            svc.open_blob_now("b", "x.bin", component="C")
        with pytest.raises(SourceError, match="not granted container b"):
            await svc.open_blob("b", "x.bin", component="C")
        blob = await svc.open_blob("b", "x.bin", component="open")  # no containers key: everything
        await blob.close()



# --- the budget: one for both directions ------------------------------------------------------

class SlowSink:
    """Holds what it is given in memory (as an s3 part buffer does) and hands it to the
    real sink only when the test opens the gate: a slow disk or a slow network."""

    def __init__(self, inner: Sink, hold: int, gate: asyncio.Event, waiting: asyncio.Event,
                 fail_after: int | None) -> None:
        self.inner = inner
        self.container, self.name = inner.container, inner.name
        self.pending: list[bytes] = []
        self.hold = hold
        self.gate = gate
        self.waiting = waiting
        self.writes = 0
        self.fail_after = fail_after
        self.peak_buffered = 0

    @property
    def buffered(self) -> int:
        return sum(map(len, self.pending))

    @property
    def written(self) -> int:
        return self.inner.written + self.buffered

    async def _flush(self) -> None:
        for p in self.pending:
            await self.inner.write(p)
        self.pending = []

    async def write(self, data: bytes) -> None:
        from chunkd.sinks.base import SinkError
        self.writes += 1
        if self.fail_after is not None and self.writes > self.fail_after:
            raise SinkError(f"{self.container}/{self.name}: the disk is on fire")
        self.pending.append(data)
        self.peak_buffered = max(self.peak_buffered, self.buffered)
        if self.buffered >= self.hold:
            self.waiting.set()
            await self.gate.wait()
            self.gate.clear()
            await self._flush()

    async def seal(self) -> None:
        await self._flush()
        await self.inner.seal()

    async def commit(self) -> str | None:
        return await self.inner.commit()

    async def abort(self) -> None:
        self.pending = []
        await self.inner.abort()

    def token(self) -> dict[str, str]:
        return self.inner.token()


class SlowContainer:
    def __init__(self, inner: WritableContainer, hold: int, fail_after: int | None = None) -> None:
        self.inner = inner
        self.name, self.kind = inner.name, inner.kind
        self.hold = hold
        self.fail_after = fail_after
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.sinks: list[SlowSink] = []

    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> Sink:
        s = SlowSink(await self.inner.create(name, job_id=job_id, attempt=attempt, overwrite=overwrite), self.hold,
                     self.gate, self.waiting, self.fail_after)
        self.sinks.append(s)
        return s

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        return await self.inner.recover(token, job_id=job_id, committing=committing)

    async def sweep(self) -> int:
        return await self.inner.sweep()


async def drain(slow: SlowContainer, budget: BufferBudget, writer: "asyncio.Task[None]", limit: int) -> int:
    """Open the gate each time the slow sink waits, until the writer is done; check the
    budget at every step. Returns how many times the sink made the writer wait."""
    opened = 0
    while not writer.done():
        waited = asyncio.ensure_future(slow.waiting.wait())
        await asyncio.wait_for(asyncio.wait({waited, writer}, return_when=asyncio.FIRST_COMPLETED), 30)
        waited.cancel()
        assert budget.in_use <= limit
        if slow.waiting.is_set():
            slow.waiting.clear()
            opened += 1
            assert opened < 10_000, "the writer never finished"
            slow.gate.set()
    await writer
    return opened


@pytest.mark.parametrize("end", ["commit", "abort", "error"])
async def test_a_slow_sink_keeps_outputs_in_the_budget(daemon: Callable[..., Daemon], tmp_path: Path,
                                                       end: str) -> None:
    limit = 1 * MiB
    size = 12 * MiB  # far larger than the budget
    async with daemon(limits={"max_buffered_bytes": limit, "max_chunk_size": "256KiB"}) as d:
        budget = d.rt.budget
        slow = SlowContainer(d.rt.sinks["out"], hold=384 * 1024, fail_after=20 if end == "error" else None)
        outs = JobOutputs("jb", 1, "comp", sinks={"out": slow}, containers=d.rt.config.containers, grants=None,
                          budget=budget, ledger=d.store)
        # another stream's read-ahead holds part of the budget all along
        other = await budget.acquire(256 * 1024)
        h = await outs.create("out", "big.bin")
        payload = data_of(size, seed=7)

        async def guest() -> None:
            for at in range(0, size, 64 * 1024):
                await outs.write(h, payload[at:at + 64 * 1024])
                assert budget.in_use <= limit
                # what the sink holds is in the budget, never more
                assert slow.sinks[0].buffered <= outs.held <= budget.in_use - other
            await outs.finish(h)

        writer = asyncio.ensure_future(guest())
        if end == "error":
            with pytest.raises(OutputRefused, match="the disk is on fire"):
                await drain(slow, budget, writer, limit)
            assert outs.failure is not None
        else:
            opened = await drain(slow, budget, writer, limit)
            assert opened > 10
        assert budget.peak <= limit
        assert slow.sinks[0].peak_buffered >= 384 * 1024
        if end == "commit":
            await outs.commit()
            assert (tmp_path / "out" / "big.bin").read_bytes() == payload
        else:
            await outs.abort()
            assert not (tmp_path / "out" / "big.bin").exists()
        assert temps(tmp_path / "out") == []
        budget.release(other)
        assert budget.in_use == 0, f"{budget.in_use} bytes never given back ({end})"


async def test_a_write_waits_for_room_and_abort_ends_the_wait(daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    limit = 1 * MiB
    async with daemon(limits={"max_buffered_bytes": limit, "max_chunk_size": "256KiB"}) as d:
        budget = d.rt.budget
        slow = SlowContainer(d.rt.sinks["out"], hold=10 * MiB)  # holds all it gets: never drains by itself
        outs = JobOutputs("jw", 1, "comp", sinks={"out": slow}, containers=d.rt.config.containers, grants=None,
                          budget=budget)
        full = await budget.acquire(limit)  # the reads hold it all
        h = await outs.create("out", "w.bin")
        waits = budget.waits
        write = asyncio.ensure_future(outs.write(h, b"z" * 1000))
        await until(lambda: budget.waits > waits, "the write to wait for room")
        assert not write.done()  # backpressure: the write waits for room
        budget.release(full)
        await asyncio.wait_for(write, 10)
        assert outs.held == 1000 == budget.in_use  # the sink holds it: so does the budget
        # the guest writes until nothing fits but its own sink's bytes: refused, not stuck
        with pytest.raises(OutputRefused, match="can never make room"):
            for _ in range(100):
                await outs.write(h, b"z" * (256 * 1024))
        stuck = asyncio.ensure_future(outs.write(h, b"q"))  # closed now: answered at once
        with pytest.raises(OutputRefused):
            await asyncio.wait_for(stuck, 10)
        await outs.abort()
        assert budget.in_use == 0 and temps(tmp_path / "out") == []

        # a write waiting for room when the job ends is cancelled, and gives nothing back twice
        outs = JobOutputs("jw2", 1, "comp", sinks={"out": slow}, containers=d.rt.config.containers, grants=None,
                          budget=budget)
        full = await budget.acquire(limit)
        h = await outs.create("out", "w2.bin")
        waits = budget.waits
        write = asyncio.ensure_future(outs.write(h, b"z" * 1000))
        await until(lambda: budget.waits > waits, "the write to wait for room")
        assert not write.done()
        await asyncio.wait_for(outs.abort(), 10)
        assert write.done()
        budget.release(full)
        assert budget.in_use == 0 and temps(tmp_path / "out") == []


# --- s3 through moto --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server(BUCKET) as url:
        yield url


@pytest.fixture
def s3(moto_url: str) -> Any:
    return s3_client(moto_url)


def bucket(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"bkt": {"kind": "s3", "bucket": BUCKET, "prefix": prefix, "endpoint_url": url, "region": "us-east-1",
                    "timeout": "10s", "writable": True, "part_size": "5MiB", **extra}}


def uploads(s3: Any) -> list[str]:
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


async def test_s3_commit_exact_and_abort_leaves_no_upload(daemon: Callable[..., Daemon], s3: Any,
                                                          moto_url: str) -> None:
    sizes = {"zero": 0, "one": 1, "part-1": 5 * MiB - 1, "part+1": 5 * MiB + 1, "three": 11 * MiB + 3}
    async with daemon(containers=bucket(moto_url, "c1/"), limits={"max_buffered_bytes": "32MiB"}) as d:
        outs = await d.outputs("s3job")
        for name, size in sizes.items():
            h = await outs.create("bkt", f"o/{name}.bin")
            await write_all(outs, h, data_of(size, seed=size % 7), chunk=MiB)
            await outs.finish(h)
        assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="c1/")
        await outs.commit()
        for name, size in sizes.items():
            got = s3.get_object(Bucket=BUCKET, Key=f"c1/o/{name}.bin")["Body"].read()
            assert got == data_of(size, seed=size % 7), name
        assert all(o["state"] == "committed" and o["version"] for o in outs.view())
        assert uploads(s3) == [] and d.rt.budget.in_use == 0

        outs = await d.outputs("s3job2")
        h = await outs.create("bkt", "o/aborted.bin")
        await write_all(outs, h, data_of(7 * MiB), chunk=MiB)  # one part uploaded, one in memory
        assert [u for u in uploads(s3) if u.startswith("c1/")] != []
        assert outs.held > 0  # the part being filled is in the budget
        await outs.abort()
        assert uploads(s3) == [] and d.rt.budget.in_use == 0
        assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="c1/o/aborted")


async def test_s3_overwrite_false_existing_fails(daemon: Callable[..., Daemon], s3: Any, moto_url: str) -> None:
    s3.put_object(Bucket=BUCKET, Key="c2/taken.bin", Body=b"old")
    async with daemon(containers=bucket(moto_url, "c2/", overwrite=False)) as d:
        outs = await d.outputs("s3x")
        with pytest.raises(OutputRefused, match="exists"):
            await outs.create("bkt", "taken.bin")
        assert outs.failure is not None
        await outs.abort()
    assert s3.get_object(Bucket=BUCKET, Key="c2/taken.bin")["Body"].read() == b"old"


# --- recovery after kill -9 -------------------------------------------------------------------

DEAD_ATTEMPT = textwrap.dedent('''
    import asyncio, json, os, sys
    from chunkd.config import config_from_mapping
    from chunkd.jobs import Job, RUNNING
    from tests.test_outputs import Daemon, data_of

    config = config_from_mapping(json.loads(sys.argv[1]), file="test.toml")
    plan = sys.argv[2]

    async def main() -> None:
        async with Daemon(config) as d:
            job = Job(component="comp", args=[], id="deadjob", state=RUNNING, attempts=1)
            await d.store.save(job.record())
            outs = await d.outputs("deadjob")
            names = []
            for container, name, size, finish in json.loads(sys.argv[3]):
                h = await outs.create(container, name)
                payload = data_of(size, seed=3)
                for at in range(0, size, 1 << 20):
                    await outs.write(h, payload[at:at + (1 << 20)])
                if finish:
                    await outs.finish(h)
                names.append(name)
            if plan == "mid-commit":  # die after the first output's commit, before the second's
                first = True
                for o in list(outs._outputs.values()):
                    real = o.sink.commit
                    async def commit(real=real):
                        nonlocal first
                        if not first:
                            os.kill(os.getpid(), 9)
                        first = False
                        return await real()
                    o.sink.commit = commit
                await outs.commit()
            print("ready", flush=True)
            os.kill(os.getpid(), 9)

    asyncio.run(main())
''')


def run_dead_attempt(config_data: dict[str, Any], plan: str, outputs: list[tuple[str, str, int, bool]]) -> None:
    import json
    proc = subprocess.run([sys.executable, "-c", DEAD_ATTEMPT, json.dumps(config_data), plan, json.dumps(outputs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def raw_config(tmp: Path, containers: dict[str, Any] | None = None) -> dict[str, Any]:
    (tmp / "out").mkdir(exist_ok=True)
    return {"daemon": {"state_dir": str(tmp / "state"), "log_format": "console"},
            "limits": {"max_chunk_size": "1MiB", "max_buffered_bytes": "64MiB"},
            "containers": {"out": {"kind": "file", "root": str(tmp / "out"), "writable": True},
                           **(containers or {})},
            "components": {"comp": {"path": "comp.wasm"}}}


async def test_restart_aborts_what_a_killed_attempt_left(tmp_path: Path, s3: Any, moto_url: str) -> None:
    data = raw_config(tmp_path, bucket(moto_url, "c3/"))
    run_dead_attempt(data, "mid-upload", [("out", "sealed.bin", 3 * MiB, True), ("out", "open.bin", 1000, False),
                                          ("bkt", "up.bin", 7 * MiB, False)])
    out = tmp_path / "out"
    assert len(temps(out)) == 2 and [u for u in uploads(s3) if u.startswith("c3/")] == ["c3/up.bin"]
    (out / "sub").mkdir()
    (out / "sub" / ".chunkd-out.other.1.abc.tmp").write_bytes(b"stale, no row")  # swept
    d = Daemon(config_from_mapping(data, file="test.toml"))
    async with d:
        rows = await d.store.outputs("deadjob")
        assert {r["name"]: r["state"] for r in rows} == {"sealed.bin": "aborted", "open.bin": "aborted",
                                                         "up.bin": "aborted"}
        assert temps(out) == [] and not (out / "sealed.bin").exists()
        assert [u for u in uploads(s3) if u.startswith("c3/")] == []
        assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="c3/")
        # the retried attempt writes them again
        outs = await d.outputs("deadjob", attempt=2)
        h = await outs.create("out", "sealed.bin")
        await outs.write(h, b"again")
        await outs.finish(h)
        await outs.commit()
        assert (out / "sealed.bin").read_bytes() == b"again"


async def test_restart_rolls_a_commit_forward_and_the_retry_writes_nothing_twice(tmp_path: Path, s3: Any,
                                                                               moto_url: str) -> None:
    data = raw_config(tmp_path, bucket(moto_url, "c4/"))
    run_dead_attempt(data, "mid-commit", [("out", "first.bin", 2 * MiB, True), ("bkt", "second.bin", 6 * MiB, True),
                                          ("out", "third.bin", 10, True)])
    out = tmp_path / "out"
    expected = {n: data_of(s, seed=3) for n, s in (("first.bin", 2 * MiB), ("second.bin", 6 * MiB),
                                                       ("third.bin", 10))}
    assert (out / "first.bin").read_bytes() == expected["first.bin"]  # committed before the kill
    assert not (out / "third.bin").exists()  # not yet
    first_version = os.stat(out / "first.bin").st_mtime_ns
    d = Daemon(config_from_mapping(data, file="test.toml"))
    async with d:
        rows = {r["name"]: r for r in await d.store.outputs("deadjob")}
        assert {n: r["state"] for n, r in rows.items()} == {n: "committed" for n in expected}
        assert (out / "third.bin").read_bytes() == expected["third.bin"]  # rolled forward
        got = s3.get_object(Bucket=BUCKET, Key="c4/second.bin")
        assert got["Body"].read() == expected["second.bin"]
        assert [u for u in uploads(s3) if u.startswith("c4/")] == [] and temps(out) == []
        etag = got["ETag"]

        # the job runs again (its row is still running): the same outputs are not written twice
        outs = await d.outputs("deadjob", attempt=2)
        for container, name in (("out", "first.bin"), ("bkt", "second.bin"), ("out", "third.bin")):
            h = await outs.create(container, name)
            await outs.write(h, b"different bytes, dropped")
            await outs.finish(h)
        await outs.commit()
        assert {o["name"]: o["state"] for o in outs.view()} == {n: "committed" for n in expected}
        assert (out / "first.bin").read_bytes() == expected["first.bin"]
        assert os.stat(out / "first.bin").st_mtime_ns == first_version
        again = s3.get_object(Bucket=BUCKET, Key="c4/second.bin")
        assert again["ETag"] == etag and again["Body"].read() == expected["second.bin"]
        assert d.rt.budget.in_use == 0
        # what GET /v1/jobs/{id} shows of the stored job
        rec = await d.store.get("deadjob")
        assert rec is not None and [o["state"] for o in rec["outputs"]] == ["committed"] * 3
