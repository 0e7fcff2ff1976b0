"""The streams world (consumer-streams, WASI 0.3 style): one stream<u8> per read.

The same delivery rules as the handle-chunk world, checked on real guests: the
Rust probe (tests/guests/streams_probe, wit-bindgen) and the Python sha256
twin (examples/sha256-streams, componentize-py). The probe keeps a log with an
FNV-1a hash of the stream so far, so exact bytes and order are checked, not
only counts.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from chunkd.cli import EXIT_OK, main
from chunkd.jobs import COMPLETED, FAILED
from tests.cluster_support import start_node
from tests.conftest import make_blob
from tests.service_support import wait_for
from tests.test_cluster import _running_on, nats, nodes  # noqa: F401 (fixtures)
from tests.test_native_boundary import fnv
from tests.test_service import server  # noqa: F401 (a fixture)
from tests.waits import instance_threads_cpu_s, until

CHUNK = 65536
PROBE = {"sp": {"guest": "streams_probe", "prefetch_chunks": 4}}


async def report(h: Any) -> list[str]:
    rep = await h.run("sp", ["report"])
    assert rep.state == COMPLETED, rep.error
    return (rep.invoke_result or "").splitlines()


def chunks(log: list[str], cid: int) -> list[tuple[int, int, int, int]]:
    """(cur, total, len, hash) of each chunk line of `cid`."""
    out = []
    for line in log:
        w = line.split()
        if w[0] == "chunk" and int(w[1]) == cid:
            out.append((int(w[2]), int(w[3]), int(w[4]), int(w[5])))
    return out


def ended(log: list[str], cid: int) -> list[str]:
    return [line for line in log if line.startswith(f"ended {cid} ")]


@pytest.mark.parametrize("size,chunk", [(0, 4096), (1, 4096), (CHUNK - 1, CHUNK), (5 * CHUNK + 3, CHUNK),
                                        (3 * 1048576, 1048576)])
async def test_both_worlds_digest_a_blob_identically(harness, blobs: Path, size: int, chunk: int) -> None:
    data = make_blob(blobs, "a.bin", size)
    want = f"{hashlib.sha256(data).hexdigest()}  a.bin"
    async with harness(components={"sha256": {}, "sha256_streams": {}}) as h:
        for comp in ("sha256", "sha256_streams"):
            job = await h.run(comp, [f"--chunk-size={chunk}", "local", "a.bin"])
            assert job.state == COMPLETED, (comp, job.error)
            assert h.out(job) == [want], comp
            assert job.deliveries[0].stats.bytes == size


def test_chunkd_run_digests_identically_through_both_worlds(tmp_path: Path, blobs: Path,
                                                                  guests: dict[str, Path], capsys: Any) -> None:
    data = make_blob(blobs, "b.bin", 2 * 1048576 + 17)
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[containers.local]\nkind = "file"\nroot = "{blobs}"\n'
                   f'[components.handle]\npath = "{guests["sha256"]}"\n'
                   f'[components.streams]\npath = "{guests["sha256_streams"]}"\n')
    assert main(["check", "-c", str(cfg)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "component streams: ok: exports consumer-streams (component path: writes into one stream<u8> per read" in out
    assert "component handle: ok: exports consumer-with-events (component path: handle-chunk calls" in out
    lines = []
    for comp in ("handle", "streams"):
        assert main(["run", "-c", str(cfg), comp, "local", "b.bin"]) == EXIT_OK
        lines.append([x for x in capsys.readouterr().out.splitlines() if x.endswith("  b.bin")])
    assert lines[0] == lines[1] == [f"{hashlib.sha256(data).hexdigest()}  b.bin"]


async def test_several_streams_in_one_job_each_get_their_own_stream(harness, blobs: Path) -> None:
    datas = [make_blob(blobs, f"{i}.bin", 200_000 + i * 70_001, seed=i) for i in range(3)]
    async with harness(components={"sha256_streams": {}}) as h:
        job = await h.run("sha256_streams", ["--chunk-size=65536", "local", "0.bin", "1.bin", "2.bin"])
        assert job.state == COMPLETED, job.error
        assert sorted(h.out(job)) == sorted(f"{hashlib.sha256(d).hexdigest()}  {i}.bin" for i, d in enumerate(datas))


@pytest.mark.parametrize("direct", [True, False], ids=["file-direct", "read-ahead"])
async def test_writes_are_bounded_by_chunk_size_in_order_and_exact(harness, blobs: Path, direct: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write is at most chunk-size bytes; the guest reads them in order, and the hash
    of what it got after each one is the hash of the blob's prefix."""
    if not direct:
        from chunkd.host.native_instance import NativeInstance
        monkeypatch.setattr(NativeInstance, "direct_reads", False)
    data = make_blob(blobs, "a.bin", 20 * CHUNK + 999)
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "3", "-1", "log"])
        assert job.state == COMPLETED, job.error
        log = await report(h)
    got = chunks(log, 3)
    assert [c[0] for c in got] == list(range(21))
    assert all(c[1] == 21 for c in got)  # total = ceil(size / chunk), from `size`
    assert [c[2] for c in got] == [CHUNK] * 20 + [999]
    for i, (_, _, _, hsh) in enumerate(got):
        assert hsh == fnv(data[:min(len(data), (i + 1) * CHUNK)])
    assert ended(log, 3) == [f"ended 3 0 {fnv(data)}"]
    assert job.deliveries[0].stats.chunks == 21


async def test_a_guest_that_reads_less_than_a_write_gets_it_in_pieces(harness, blobs: Path) -> None:
    data = make_blob(blobs, "a.bin", 7 * CHUNK + 5)
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "4", "-1", "small"])
        assert job.state == COMPLETED, job.error
        log = await report(h)
    got = chunks(log, 4)
    assert all(c[2] <= CHUNK // 3 + 1 for c in got) and sum(c[2] for c in got) == len(data)
    assert ended(log, 4) == [f"ended 4 0 {fnv(data)}"]


@pytest.mark.parametrize("stop_at", [0, 9, 14])
async def test_a_reader_dropped_early_cancels_the_stream(harness, blobs: Path, stop_at: int) -> None:
    data = make_blob(blobs, "a.bin", 16 * CHUNK)
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "5", str(stop_at), "log"])
        log = await report(h)
        assert job.state == FAILED and str(job.deliveries[0].outcome) == "cancelled", job.error
        assert [c[0] for c in chunks(log, 5)] == list(range(stop_at + 1))
        assert ended(log, 5) == [f"ended 5 1 {fnv(data[:CHUNK * (stop_at + 1)])}"]
        assert job.deliveries[0].stats.chunks == stop_at + 1
        assert h.runtime.budget.in_use == 0
        ok = await h.run("sp", ["local", "a.bin", str(CHUNK), "6", "-1", "log"])  # same instance
        assert ok.state == COMPLETED, ok.error


async def test_a_reader_dropped_after_the_last_byte_completes(harness, blobs: Path) -> None:
    """Unlike `false` on the last handle-chunk call, closing the reader once every byte was
    taken cancels nothing: the stream was delivered whole."""
    data = make_blob(blobs, "a.bin", 16 * CHUNK)
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "5", "15", "log"])
        assert job.state == COMPLETED, job.error
        assert ended(await report(h), 5) == [f"ended 5 0 {fnv(data)}"]


async def test_an_error_from_consume_fails_the_job_with_its_message(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 16 * CHUNK)
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "7", "5", "errat"])
        assert job.state == FAILED
        assert "consume call(s) returned an error" in (job.error or "") and "asked to fail at 5" in (job.error or "")
        assert str(job.deliveries[0].outcome) == "cancelled"
        assert job.deliveries[0].stats.chunks == 6  # chunk 5 was taken whole, then the guest returned
        assert h.runtime.budget.in_use == 0
        assert h.runtime.pools["sp"].replaced == 0  # a verdict, not a fault: the instance serves on
        assert h.runtime.metrics.value("chunkd_traps_total", component="sp") == 0


@pytest.mark.parametrize("mode", ["trapat", "loopat", "bombat", "hangat"])
async def test_a_fault_mid_stream_fails_only_that_job(harness, blobs: Path, mode: str) -> None:
    """At chunk 37 of 64 the guest traps, spins past call_timeout, grows memory past
    instance_memory, or blocks in its async task without reading (the host's write is
    never taken): the job fails with the reason, the chunks before it were delivered, the
    budget is back, the instance is replaced and the next job completes."""
    data = make_blob(blobs, "a.bin", 64 * CHUNK)
    async with harness(components=PROBE, limits={"call_timeout": "1s", "instance_memory": "32MiB"}) as h:
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "1", "37", mode])
        assert job.state == FAILED, job.error
        why = {"trapat": "trapped", "loopat": "ran past call_timeout", "bombat": "trapped",
               "hangat": "ran past call_timeout"}[mode]
        assert why in (job.error or ""), job.error
        if mode == "bombat":
            assert "memory" in (job.error or "").lower(), job.error
        # the guest took chunk 37 whole, then faulted (or stopped reading): a chunk counts
        # as delivered when it was taken whole, whatever came after it
        assert job.deliveries[0].stats.chunks == 38
        assert job.deliveries[0].stats.bytes == 38 * CHUNK
        assert (job.error or "").count("wasm trap:") <= 1, job.error  # the prefix said once
        assert str(job.deliveries[0].outcome).startswith("failed")
        assert "consume" in (job.error or ""), job.error
        assert h.runtime.budget.in_use == 0
        ok = await h.run("sp", ["local", "a.bin", str(CHUNK), "2", "-1", "log"])
        assert ok.state == COMPLETED, ok.error
        assert ended(await report(h), 2) == [f"ended 2 0 {fnv(data)}"]
        metric = "chunkd_timeouts_total" if mode in ("loopat", "hangat") else "chunkd_traps_total"
        assert h.runtime.metrics.value(metric, component="sp") == 1


async def test_a_source_error_is_told_through_end(harness, blobs: Path) -> None:
    """A blob that shrinks under a paced stream: the stream fails, the data stream closes
    and `end` says failed with the reason (a digest of a cut blob is never mistaken for
    the whole)."""
    make_blob(blobs, "s.bin", 1 << 20)
    async with harness(components={"sp": {"guest": "streams_probe", "max_bytes_per_second": "512KiB"}}) as h:
        job = h.runtime.submit("sp", ["local", "s.bin", "65536", "8", "-1", "log"])
        # mid-stream: paced at 512 KiB/s (no catch-up), the 1 MiB read lasts ~2 s after this
        await until(lambda: job.deliveries and job.deliveries[0].stats.chunks >= 1, "the first chunk")
        os.truncate(blobs / "s.bin", 200_000)
        await asyncio.wait_for(job.done.wait(), 30)
        log = await report(h)
    assert job.state == FAILED
    end = ended(log, 8)
    assert len(end) == 1 and end[0].split()[2] == "2" and "changed size" in end[0], end


async def test_pacing_and_fairness_hold_for_streams(harness, blobs: Path) -> None:
    """Two streams of one paced job: delivery is spread (a lower bound only) and round-robin
    (each stream's chunks interleave with the other's)."""
    make_blob(blobs, "a.bin", 8 * CHUNK, seed=1)
    make_blob(blobs, "b.bin", 8 * CHUNK, seed=2)
    rate = 8 * CHUNK  # bytes/s: 16 chunks, the first free, take >= 1.5 s
    async with harness(components={"sp": {"guest": "streams_probe", "max_bytes_per_second": rate}}) as h:
        t0 = time.monotonic()
        job = await h.run("sp", ["pair", "local", "a.bin", "b.bin", str(CHUNK), "1", "2"])
        elapsed = time.monotonic() - t0
        log = await report(h)
    assert job.state == COMPLETED, job.error
    assert elapsed >= 1.5 * 0.95
    order = [int(line.split()[1]) for line in log if line.startswith("chunk ")]
    first_b = order.index(2)
    assert first_b < order.index(1) + 3 and order[:first_b].count(1) <= 2


async def test_an_empty_blob_still_gets_its_consume_call(harness, blobs: Path) -> None:
    (blobs / "e.bin").write_bytes(b"")
    async with harness(components=PROBE) as h:
        job = await h.run("sp", ["local", "e.bin", "4096", "9", "-1", "log"])
        assert job.state == COMPLETED, job.error
        assert ended(await report(h), 9) == ["ended 9 0 2166136261"]


async def test_many_streams_share_the_budget_and_end_once(harness, blobs: Path) -> None:
    make_blob(blobs, "m.bin", 300_000)
    async with harness(components=PROBE, limits={"max_buffered_bytes": "1MiB"}) as h:
        job = await h.run("sp", ["many", "local", "m.bin", "65536", "20"])
        assert job.state == COMPLETED, job.error
        assert len(job.deliveries) == 20 and all(str(d.outcome) == "completed" for d in job.deliveries)
        assert all(d.stats.bytes == 300_000 for d in job.deliveries)
        assert h.runtime.budget.peak <= 1 << 20 and h.runtime.budget.in_use == 0
        log = await report(h)
    assert sorted(int(x.split()[1]) for x in log if x.startswith("ended ")) == list(range(20))
    assert all(x.split()[2] == "0" for x in log if x.startswith("ended "))


# --- the service, durable jobs, the status snapshot and cluster mode -----------------------

def _streams_components(guests: dict[str, Path]) -> str:
    return f"""
[components.streams]
path = "{guests['sha256_streams']}"
[components.streams_paced]
path = "{guests['sha256_streams']}"
max_bytes_per_second = "2MiB"
"""


def test_a_streams_job_is_durable_observable_and_cancellable(server: Any, tmp_path: Path,
                                                              guests: dict[str, Path]) -> None:
    """A real daemon: a paced streams job shows in /v1/streams and /v1/status with its
    progress, survives kill -9 (rerun from the first byte, exact digest), a second one is
    cancelled by the operator (the guest hears `cancelled` through `end`), and the
    component's metrics count its chunks."""
    data = make_blob(tmp_path / "blobs", "big.bin", 8 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    s = server(components=_streams_components(guests))
    job = s.submit("streams_paced", ["local", "big.bin"])
    wait_for(lambda: (st := s.job(job)["streams"]) and st[0]["chunks"] >= 1, 30, what="first chunks")
    status, streams = s.request("GET", "/v1/streams")
    assert status == 200 and any(st["job_id"] == job and st["blob"] == "big.bin" for st in streams["streams"])
    status, snap = s.request("GET", "/v1/status")
    assert status == 200
    running = [j for j in snap["running"] if j["job_id"] == job]
    assert running and running[0]["streams"][0]["total_chunks"] == 8
    assert s.proc is not None
    s.proc.kill()
    s.proc.wait(10)
    s.start()
    j = s.wait_job(job, 120)
    assert j["state"] == "completed" and j["attempts"] == 2, j
    assert j["output"] == [f"{digest}  big.bin"]
    slow = s.submit("streams_paced", ["local", "big.bin"])
    wait_for(lambda: (st := s.job(slow)["streams"]) and st[0]["chunks"] >= 1, 30, what="the second job")
    assert s.request("DELETE", f"/v1/jobs/{slow}")[0] == 202
    j = s.wait_job(slow)
    assert j["state"] == "cancelled" and j["streams"][0]["end"] == "cancelled"
    assert j["output"] == ["cancelled: big.bin"]
    ok = s.submit("streams", ["local", "big.bin"])
    assert s.wait_job(ok)["output"] == [f"{digest}  big.bin"]
    _, text = s.request("GET", "/metrics")
    for name in ("chunkd_chunks_delivered_total", "chunkd_bytes_delivered_total"):
        assert any(line.startswith(f'{name}{{component="streams"}}') and float(line.split()[-1]) > 0
                   for line in str(text).splitlines()), name


def test_cluster_mode_reruns_a_streams_job_elsewhere(tmp_path: Path, state_dir: Path, guests: dict[str, Path],
                                                     nats: Any, nodes: list[Any]) -> None:
    """Two nodes on a real nats-server: the node running a paced streams job is killed;
    the job runs again on the other and completes with the exact digest."""
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    data = make_blob(blobs, "long.bin", 8 * 1024 * 1024)
    for name in ("n1", "n2"):
        nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache",
                                extra_components=_streams_components(guests)))
    jid = nodes[0].submit("streams_paced", ["local", "long.bin"])
    owner = wait_for(lambda: _running_on(nodes[0], jid), 30, 0.1, "the paced streams job to run")
    victim, other = (nodes[0], nodes[1]) if owner == "n1" else (nodes[1], nodes[0])
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(10)
    j = other.wait_job(jid, 90)
    assert j["state"] == "completed" and j["attempts"] == 2, j
    assert j["output"] == [f"{hashlib.sha256(data).hexdigest()}  long.bin"]


@pytest.mark.parametrize("size", [0, 300_003])
async def test_the_js_streams_guest_digests_like_the_others(harness, blobs: Path, size: int) -> None:
    """examples/sha256-streams-js (componentize-qjs): the same line as sha256 prints."""
    data = make_blob(blobs, "j.bin", size)
    async with harness(components={"sha256_streams_js": {}}) as h:
        job = await h.run("sha256_streams_js", ["--chunk-size=65536", "local", "j.bin"])
        assert job.state == COMPLETED, job.error
        assert h.out(job) == [f"{hashlib.sha256(data).hexdigest()}  j.bin"]


HOSTILE = {
    "trapat": (["local", "h.bin", "4096", "1", "3", "trapat"], FAILED, "consume trapped"),
    "loopat": (["local", "h.bin", "4096", "1", "3", "loopat"], FAILED, "consume ran past call_timeout"),
    "bombat": (["local", "h.bin", "4096", "1", "3", "bombat"], FAILED, "consume trapped"),
    "hangat": (["local", "h.bin", "4096", "1", "3", "hangat"], FAILED, "consume ran past call_timeout"),
    "errat": (["local", "h.bin", "4096", "1", "3", "errat"], FAILED, "asked to fail at 3"),
    "twice": (["twice", "local", "h.bin", "4096", "5"], COMPLETED, None),
    "many": (["many", "local", "h.bin", "4096", "2000"], COMPLETED, None),
}


@pytest.mark.parametrize("mode", list(HOSTILE))
async def test_a_hostile_streams_guest_alongside_a_tenant(harness, blobs: Path, mode: str) -> None:
    """The streams probe misbehaves while a streams tenant (sha256-streams, paced) streams:
    the hostile job ends with a clear reason, the tenant completes with exact bytes, and
    the hostile component serves its next job."""
    args, state, error = HOSTILE[mode]
    tenant = make_blob(blobs, "tenant.bin", 6 * 1024 * 1024, seed=11)
    make_blob(blobs, "h.bin", 40_000, seed=12)
    comps = {"sp": {"guest": "streams_probe", "instances": 1},
             "sha256_streams": {"instances": 1, "max_bytes_per_second": "4MiB"}}
    limits = {"call_timeout": "1s", "instance_memory": "64MiB", "max_pending_streams": 200}
    async with harness(components=comps, limits=limits) as h:
        rt = h.runtime
        other = rt.submit("sha256_streams", ["--chunk-size=65536", "local", "tenant.bin"])
        await until(lambda: other.deliveries and other.deliveries[0].stats.chunks > 0, "the tenant to stream")
        bad = rt.submit("sp", args)
        await asyncio.wait_for(bad.done.wait(), 60)
        await asyncio.wait_for(other.done.wait(), 60)
        assert bad.started_at is not None and other.ended_at is not None and bad.started_at < other.ended_at
        assert bad.state == state, (bad.state, bad.error)
        if error is not None:
            assert error in (bad.error or ""), bad.error
        assert other.state == COMPLETED, other.error
        assert h.out(other) == [f"{hashlib.sha256(tenant).hexdigest()}  tenant.bin"]
        log = await report(h)  # the hostile component serves its next job
        if mode == "twice":
            starts = [x for x in log if x.startswith("start 5 ")]
            assert starts[0] == "start 5 ok" and starts[1].startswith("start 5 err 1 "), starts  # invalid-argument
            assert len(starts) == 2 and len(bad.deliveries) == 1
        if mode == "many":
            assert 0 < len(bad.deliveries) <= 200
            assert all(str(d.outcome) == "completed" and d.stats.bytes == 40_000 for d in bad.deliveries)
        assert rt.budget.in_use == 0


@pytest.mark.parametrize("comp", ["sha256_js", "sha256_streams_js"])
async def test_an_operator_cancel_stops_a_slow_guest_inside_its_batch(harness, blobs: Path, comp: str) -> None:
    """An unpaced slow guest (JS, ~1 MB/s) gets its whole 8 MiB file in one native batch;
    a cancel stops that batch at the next chunk rather than at its end, in both worlds."""
    size = 8 * 1024 * 1024
    make_blob(blobs, "slow.bin", size)
    async with harness(components={comp: {}}, limits={"call_timeout": "20s"}) as h:
        job = h.runtime.submit(comp, ["local", "slow.bin"])
        await until(lambda: job.deliveries, "the read to start")
        # inside the batch: the instance thread has spent CPU in the guest since the read
        # started (its CPU time grows only while it runs, however loaded the machine is);
        # a cancel before the batch would prove nothing, the whole file being one batch
        cpu0 = instance_threads_cpu_s(comp)
        await until(lambda: instance_threads_cpu_s(comp) - cpu0 >= 0.2, "the guest to run inside its batch")
        assert await h.runtime.cancel_job(job.id) is not None
        await asyncio.wait_for(job.done.wait(), 60)
        assert job.state == "cancelled", (job.state, job.error)
        assert str(job.deliveries[0].outcome) == "cancelled"
        assert job.deliveries[0].stats.bytes < size // 2, job.deliveries[0].stats
        small = make_blob(blobs, "small.bin", 5000)
        nxt = await h.run(comp, ["local", "small.bin"])  # the same instance serves on
        assert nxt.state == COMPLETED, nxt.error
        assert h.out(nxt) == [f"{hashlib.sha256(small).hexdigest()}  small.bin"]


def test_chunkd_check_refuses_a_consume_that_is_not_async(tmp_path: Path, guests: dict[str, Path],
                                                          capsys: Any) -> None:
    """tests/guests/streams_sync declares consume without `async`: refused with both types."""
    from chunkd.cli import EXIT_CONFIG
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[containers.local]\nkind = "file"\nroot = "{tmp_path}"\n'
                   f'[components.wrong]\npath = "{guests["streams_sync"]}"\n')
    assert main(["check", "-c", str(cfg)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    want = ("(u64, option<u64>, stream<u8>, future<variant { completed, cancelled, failed(string) }>) "
            "-> (result<_, string>)")
    assert f"export chunkd:streams/stream-consumer@0.1.0#consume has type {want}, expected {want} (async)" in out, out


async def test_a_panic_inside_the_extension_fails_a_streams_job_not_the_process(harness, blobs: Path) -> None:
    """The test hook panics inside the native batch after 5 writes: the job fails saying
    so, the 5 writes before it are counted, the instance is replaced, the next job completes."""
    from chunkd.host.native_instance import NativeInstance
    data = make_blob(blobs, "a.bin", 64 * CHUNK)
    async with harness(components=PROBE) as h:
        pool = h.runtime.pools["sp"]
        inst = await pool.acquire()
        assert isinstance(inst, NativeInstance)
        inst.inject_panic(5)
        pool.give_back(inst)
        job = await h.run("sp", ["local", "a.bin", str(CHUNK), "1", "-1", "quiet"])
        assert job.state == FAILED and "native host panicked" in (job.error or ""), job.error
        assert job.deliveries[0].stats.chunks == 5
        assert h.runtime.budget.in_use == 0
        ok = await h.run("sp", ["local", "a.bin", str(CHUNK), "2", "-1", "log"])
        assert ok.state == COMPLETED, ok.error
        assert ended(await report(h), 2) == [f"ended 2 0 {fnv(data)}"]
