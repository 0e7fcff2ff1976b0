"""The native host core's boundary, in the middle of a batch, on both kinds of guest.

The same C probe (tests/guests/core_probe) runs as a core module (`core`) and
componentized with jco (`comp`), so the rules are checked on the component
path's typed calls and the core path's own canonical ABI alike: a trap, a
timeout, `false` and a memory bomb in the middle of a native batch; a panic
inside the extension; exports of the wrong type.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chunkd import _native
from chunkd.cli import EXIT_CONFIG, main
from chunkd.host.native_instance import NativeInstance
from chunkd.jobs import COMPLETED, FAILED
from tests.conftest import WAT, make_blob

KINDS = {"core": "core_probe", "comp": "core_probe_c"}
CHUNK = 65536


def fnv(data: bytes, h: int = 2166136261) -> int:
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


async def report(h: Any, name: str) -> list[str]:
    rep = await h.run(name, ["report"])
    assert rep.state == COMPLETED, rep.error
    return (rep.invoke_result or "").splitlines()


def comps(name: str, **extra: Any) -> dict[str, dict[str, Any]]:
    # 16 chunks read ahead: a 64-chunk stream goes to the instance in a few large batches
    return {name: {"guest": KINDS[name], "prefetch_chunks": 16, **extra}}


@pytest.mark.parametrize("name", list(KINDS))
async def test_the_kind_is_what_the_file_is(harness, name: str) -> None:
    async with harness(components=comps(name)) as h:
        assert h.runtime.pools[name].comp.kind == ("core" if name == "core" else "component")


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("mode", ["trapat", "loopat", "bombat"])
async def test_a_fault_mid_batch_fails_only_that_job(harness, blobs: Path, name: str, mode: str) -> None:
    """Chunk 37 of 64 traps, loops past call_timeout, or grows memory past
    instance_memory: chunks 0..36 were delivered, the job fails with the reason, the
    instance is replaced, and the next job on the same component completes."""
    data = make_blob(blobs, "a.bin", 64 * CHUNK)
    async with harness(components=comps(name), limits={"call_timeout": "1s", "instance_memory": "32MiB"}) as h:
        job = await h.run(name, ["local", "a.bin", str(CHUNK), "1", "37", mode])
        assert job.state == FAILED, job.error
        why = {"trapat": "trapped", "loopat": "ran past call_timeout", "bombat": "trapped"}[mode]
        assert why in (job.error or ""), job.error
        if mode == "bombat":
            assert "memory" in (job.error or "").lower(), job.error
        assert job.deliveries[0].stats.chunks == 37
        assert job.deliveries[0].outcome is not None and job.deliveries[0].outcome.kind == "failed"
        ok = await h.run(name, ["local", "a.bin", str(CHUNK), "2", "-1", "log"])
        assert ok.state == COMPLETED, ok.error
        log = await report(h, name)
        assert log[-1] == f"ended 2 0 {fnv(data)}"
        metric = "chunkd_timeouts_total" if mode == "loopat" else "chunkd_traps_total"
        assert h.runtime.metrics.value(metric, component=name) == 1


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("stop_at", [0, 21, 63])
async def test_false_mid_batch_delivers_nothing_after_it(harness, blobs: Path, name: str, stop_at: int) -> None:
    data = make_blob(blobs, "a.bin", 64 * CHUNK + 5)
    async with harness(components=comps(name)) as h:
        job = await h.run(name, ["local", "a.bin", str(CHUNK), "4", str(stop_at), "log"])
        log = await report(h, name)
    got = [int(line.split()[2]) for line in log if line.startswith("chunk 4 ")]
    assert got == list(range(stop_at + 1))
    assert log[-1] == f"ended 4 1 {fnv(data[:CHUNK * (stop_at + 1)])}"  # 1 = cancelled
    assert job.state == FAILED and str(job.deliveries[0].outcome) == "cancelled"
    assert job.deliveries[0].stats.chunks == stop_at + 1


@pytest.mark.parametrize("name", list(KINDS))
async def test_a_panic_inside_the_extension_fails_the_job_not_the_process(harness, blobs: Path, name: str) -> None:
    """A Rust panic in the middle of a native batch (a test hook makes one after 5 calls)
    is caught at the boundary: the job fails saying so, the instance is discarded and
    replaced, the process (this test's own) goes on, and the next job completes."""
    data = make_blob(blobs, "a.bin", 64 * CHUNK)
    async with harness(components=comps(name)) as h:
        pool = h.runtime.pools[name]
        inst = await pool.acquire()
        assert isinstance(inst, NativeInstance)
        inst.inject_panic(5)
        pool.give_back(inst)
        job = await h.run(name, ["local", "a.bin", str(CHUNK), "1", "-1", "quiet"])
        assert job.state == FAILED
        assert "native host panicked" in (job.error or ""), job.error
        assert "injected panic" in (job.error or "")
        assert job.deliveries[0].stats.chunks == 5  # the calls before the panic were delivered
        assert inst.broken is not None
        ok = await h.run(name, ["local", "a.bin", str(CHUNK), "2", "-1", "log"])
        assert ok.state == COMPLETED, ok.error
        assert (await report(h, name))[-1] == f"ended 2 0 {fnv(data)}"


def _check(tmp_path: Path, path: Path, capsys: Any) -> str:
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[containers.local]\nkind = "file"\nroot = "{tmp_path}"\n'
                   f'[components.wrong]\npath = "{path}"\n')
    assert main(["check", "-c", str(cfg)]) == EXIT_CONFIG
    return str(capsys.readouterr().out)


def test_a_component_export_of_the_wrong_type_is_refused_clearly(tmp_path: Path, capsys: Any) -> None:
    out = _check(tmp_path, WAT / "handle-chunk-wrong-type.wat", capsys)
    assert ("export chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk has type (u64, list<u8>) -> (bool), "
            "expected (borrow<resource>, u64, u64, u64, list<u8>) -> (bool)") in out, out


def test_bad_wasm_is_refused_clearly(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x0d\x00\x01\x00garbage")
    assert "not a valid wasm component" in _check(tmp_path, bad, capsys)
    bad.write_bytes(b"\0asm\x01\x00\x00\x00\xff")
    assert "not a valid wasm module" in _check(tmp_path, bad, capsys)


def test_compiled_code_is_cached_across_engines(tmp_path: Path, guests: dict[str, Path]) -> None:
    """A restart does not recompile: the second engine finds the serialized code."""
    cache = tmp_path / "cache"
    first = _native.Engine(str(cache))
    g1 = first.load("probe", guests["core_probe_c"])
    first.stop()
    assert not g1.from_cache and any(cache.iterdir())
    second = _native.Engine(str(cache))
    g2 = second.load("probe", guests["core_probe_c"])
    second.stop()
    assert g2.from_cache and g2.world == g1.world == "consumer-with-events"
    del g1, g2
    for f in cache.iterdir():  # a damaged cache entry is recompiled, not trusted
        tmp = f.with_suffix(".tmp")
        tmp.write_bytes(os.urandom(64))
        tmp.replace(f)
    third = _native.Engine(str(cache))
    g3 = third.load("probe", guests["core_probe_c"])
    third.stop()
    assert not g3.from_cache and g3.kind == "component"


def test_a_guest_path_that_is_no_regular_file_is_refused(tmp_path: Path, capsys: Any) -> None:
    """A directory, a device that never ends, or a missing file: a clear error, read no further."""
    assert "not a regular file" in _check(tmp_path, tmp_path, capsys)
    assert "not a regular file" in _check(tmp_path, Path("/dev/zero"), capsys)
    assert "cannot read" in _check(tmp_path, tmp_path / "missing.wasm", capsys)


def test_the_wasmtime_version_is_the_one_cargo_lock_pins() -> None:
    lock = (Path(__file__).resolve().parent.parent / "native" / "Cargo.lock").read_text()
    block = lock.split('name = "wasmtime"\n', 1)[1]
    assert _native.WASMTIME_VERSION == block.split('"')[1]


def test_each_fault_has_its_own_exception_class() -> None:
    classes = [_native.GuestTrapped, _native.GuestTimedOut, _native.NativePanic, _native.InstanceBroken]
    assert all(issubclass(c, _native.GuestFault) for c in classes)
    assert len(set(classes)) == 4


class _Host:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the host was called ({name}) for a call that should be refused")


def test_malformed_batch_arguments_are_refused_before_any_call(guests: dict[str, Path]) -> None:
    """The boundary is typed: a call tuple of the wrong shape, a run without its fields,
    or a negative number is refused at the boundary (TypeError, ValueError or
    OverflowError, as PyO3 extracts), never a guest call or a panic;
    the instance is unharmed and answers the next good batch."""
    engine = _native.Engine()
    try:
        inst = engine.instance(engine.load("core", guests["core_probe"]), _Host(), 32 << 20, 100)
        inst.start()

        class HalfRun:
            fd, offset, chunk_size = 0, 0, 4

        bad: list[Any] = [
            [(1, 2, 3)],                                    # too short
            [(1, 2, 3, 4, "text")],                         # neither bytes nor a run
            [(1, 2, 3, 4, HalfRun())],                      # a run missing fields
            [(-1, 2, 3, 4, b"x")],                          # a negative handle
            [("1", 2, 3, 4, b"x")],                         # a string for a number
        ]
        for calls in bad:
            with pytest.raises((TypeError, ValueError, OverflowError)):
                inst.run_batch(calls, True)
        results, fault = inst.run_batch([], True)
        assert results == [] and fault is None
    finally:
        engine.stop()
