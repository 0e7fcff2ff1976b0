"""One WIT, guests in three languages: the sha256 example in Python (componentize-py),
JavaScript (componentize-js) and C, the C one run both as a core module (chunkd's core
path) and componentized (jco embed + new), must print the same lines for the same blobs;
linecount-js must count like wc."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from chunkd.cli import EXIT_JOB_FAILED, EXIT_OK, main
from chunkd.jobs import COMPLETED, FAILED
from tests.conftest import make_blob
from tests.test_cli import write_config

NL = b"\n"
SHA256_GUESTS = ("sha256", "sha256_js", "sha256_c_core", "sha256_c", "sha256_rs")


async def test_every_language_and_both_c_paths_print_the_same_digests(harness, blobs: Path) -> None:
    sizes = {"empty.bin": 0, "one.bin": 1, "odd.bin": 100_003, "big.bin": 1536 * 1024 + 5}
    want = []
    for i, (name, size) in enumerate(sizes.items()):
        data = make_blob(blobs, name, size, seed=i)
        want.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    comps: dict[str, dict[str, str]] = {g: {} for g in SHA256_GUESTS}
    async with harness(components=comps, limits={"call_timeout": "10s"}) as h:
        # the C guest really runs both ways
        assert h.runtime.pools["sha256_c_core"].comp.kind == "core"
        assert h.runtime.pools["sha256_c"].comp.kind == "component"
        for chunk in (65536, 1000):
            jobs = {g: await h.run(g, [f"--chunk-size={chunk}", "local", *sizes], timeout=120) for g in SHA256_GUESTS}
            for g, job in jobs.items():
                assert job.state == COMPLETED, (g, job.error)
                assert job.invoke_result == f"digesting {len(sizes)} blob(s) in {chunk}-byte chunks", g
                assert sorted(h.out(job)) == sorted(want), g


async def test_the_c_guest_fails_and_cancels_alike_on_both_paths(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 10_000)
    comps: dict[str, dict[str, str]] = {"sha256_c_core": {}, "sha256_c": {}}
    async with harness(components=comps, limits={"max_chunk_size": "64KiB"}) as h:
        results = {}
        for g in comps:
            missing = await h.run(g, ["--chunk-size=4096", "local", "a.bin", "nope.bin"])
            too_big = await h.run(g, ["--chunk-size=65537", "local", "a.bin"])
            usage = await h.run(g, ["local"])
            results[g] = [(j.state, j.error, h.out(j)) for j in (missing, too_big, usage)]
    core, comp = results["sha256_c_core"], results["sha256_c"]
    assert core == comp
    (s1, e1, out1), (s2, e2, _), (s3, e3, _) = core
    assert s1 == FAILED and "open nope.bin: failed: " in (e1 or "")
    assert out1 == ["cancelled: a.bin"]  # the stream started before the failing open is cancelled
    assert s2 == FAILED and "start-chunking-read a.bin: invalid-argument: " in (e2 or "")
    assert s3 == FAILED and "usage: sha256-c" in (e3 or "")


async def test_the_c_component_and_core_module_serve_many_jobs_without_growing(harness, blobs: Path) -> None:
    """The C guest frees what the host hands it: memory stays flat over many jobs
    (a leak of one chunk per call would need ~200 MiB here and trap at 32 MiB)."""
    make_blob(blobs, "a.bin", 1 << 20)
    comps: dict[str, dict[str, str]] = {"sha256_c_core": {}, "sha256_c": {}}
    async with harness(components=comps, limits={"instance_memory": "32MiB"}) as h:
        for g in comps:
            for _ in range(25):
                job = await h.run(g, ["--chunk-size=131072", "local", "a.bin", "a.bin", "a.bin"])
                assert job.state == COMPLETED, job.error
            assert job.instance == f"{g}#0"  # never replaced


async def test_linecount_js_counts_like_wc(harness, blobs: Path) -> None:
    texts = {
        "lines.txt": b"".join(f"line {i} {'x' * (i % 97)}\n".encode() for i in range(20_000)),
        "no-final-newline.txt": b"a\nb\nc",
        "empty.txt": b"",
        "binary.bin": os.urandom(300_000),
    }
    for name, data in texts.items():
        (blobs / name).write_bytes(data)
    async with harness(components={"linecount_js": {}}) as h:
        job = await h.run("linecount_js", ["--chunk-size=65536", "local", *texts], timeout=120)
        stopped = await h.run("linecount_js", ["local", "lines.txt", "missing.txt"])
    assert job.state == COMPLETED, job.error
    assert job.invoke_result == f"counting {len(texts)} blob(s) in 65536-byte chunks"
    assert sorted(h.out(job)) == sorted(f"{d.count(NL)} {len(d)} {n}" for n, d in texts.items())
    assert stopped.state == FAILED and "open local/missing.txt: failed" in (stopped.error or "")
    assert h.out(stopped) == ["cancelled: lines.txt after 0 bytes"]


async def test_linecount_js_on_a_source_of_unknown_size(harness, blobs: Path) -> None:
    fifo = blobs / "pipe"
    os.mkfifo(fifo)
    payload = b"hello\n" * 5000

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(payload)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    async with harness(components={"linecount_js": {}}) as h:
        job = await h.run("linecount_js", ["--chunk-size=4096", "local", "pipe"])
    t.join(timeout=10)
    assert job.state == COMPLETED
    assert h.out(job) == [f"5000 {len(payload)} pipe"]


@pytest.mark.parametrize("component", SHA256_GUESTS)
def test_chunkd_run_digests_identically_in_every_language(tmp_path: Path, state_dir: Path, blobs: Path,
                                                          guests: dict[str, Path], component: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = make_blob(blobs, "blob.bin", 1 << 20)
    cfg = write_config(tmp_path, state_dir, blobs, {component: guests[component]})
    code = main(["run", "-c", str(cfg), component, "local", "blob.bin"])
    out, _ = capsys.readouterr()
    assert code == EXIT_OK
    assert f"{hashlib.sha256(data).hexdigest()}  blob.bin" in out.splitlines()
    assert main(["run", "-c", str(cfg), component, "local", "nope.bin"]) == EXIT_JOB_FAILED
