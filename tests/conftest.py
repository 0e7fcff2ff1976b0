"""Shared fixtures: real guests built by scripts/build-guests, real blobs on disk,
and a Runtime factory that records every guest output line per job."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from chunkd.config import Config, config_from_mapping
from chunkd.jobs import Job
from chunkd.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "build" / "guests"
WAT = Path(__file__).resolve().parent / "wat"


@pytest.fixture
def buffered_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """File chunks go through the budgeted read-ahead (as a remote source's do), not the
    native core's direct reads: for tests of the budget, the producers and their ends."""
    from chunkd.host.native_instance import NativeInstance
    monkeypatch.setattr(NativeInstance, "direct_reads", False)


@pytest.fixture(scope="session")
def guests() -> dict[str, Path]:
    names = ("sha256", "cancel_after", "probe", "hostile", "touch", "core_probe",
             "sha256_js", "linecount_js", "probe_js", "sha256_c_core", "sha256_c", "core_probe_c", "sha256_rs",
             "sha256_streams", "sha256_streams_js", "streams_probe", "streams_sync", "gzip", "transform_rs", "copy_rs")
    if not all((GUESTS / f"{n}.wasm").exists() for n in names):
        subprocess.run([str(ROOT / "scripts" / "build-guests")], check=True)
    return {n: GUESTS / f"{n}.wasm" for n in names}


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one compile cache for the whole session: components compile once
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    d = tmp_path / "blobs"
    d.mkdir()
    return d


def make_blob(folder: Path, name: str, size: int, seed: int = 0) -> bytes:
    data = (hashlib.sha256(f"{seed}".encode()).digest() * (size // 32 + 1))[:size]
    # vary content so chunk mix-ups change the digest
    data = bytes(b ^ (i * 7 % 251) for i, b in enumerate(data)) if size <= 1 << 20 else os.urandom(size)
    (folder / name).write_bytes(data)
    return data


@dataclass
class Harness:
    runtime: Runtime
    lines: dict[str, list[str]] = field(default_factory=dict)

    def out(self, job: Job) -> list[str]:
        return self.lines.get(job.id, [])

    async def run(self, component: str, args: list[str], timeout: float = 60) -> Job:
        job = self.runtime.submit(component, args)
        await asyncio.wait_for(job.done.wait(), timeout)
        return job


def config_for(state_dir: Path, blobs: Path, guests: dict[str, Path], *, limits: dict[str, Any] | None = None,
               components: dict[str, dict[str, Any]] | None = None,
               containers: dict[str, dict[str, Any]] | None = None, probe_guest: str = "probe") -> Config:
    """`probe_guest` is the guest behind the component named "probe" unless a test names one."""
    comps = components or {"probe": {}}
    data = {
        "daemon": {"state_dir": str(state_dir), "log_format": "console"},
        "limits": {"call_timeout": "3s", "max_chunk_size": "1MiB", **(limits or {})},
        "containers": {"local": {"kind": "file", "root": str(blobs)}, **(containers or {})},
        "components": {
            name: {"path": opts.pop("path", None) or str(guests[opts.pop("guest", probe_guest if name == "probe" else name)]),
                   **opts}
            for name, opts in
            ((n, dict(o)) for n, o in comps.items())
        },
    }
    return config_from_mapping(data, file="test.toml")


@pytest.fixture
def probe_guest() -> str:
    """The probe behind the "probe" component: a module overrides this fixture to run its
    tests against both probes (tests/guests/probe in Python, tests/guests/probe_js in JS)."""
    return "probe"


@pytest.fixture
def harness(state_dir: Path, blobs: Path, guests: dict[str, Path], probe_guest: str) -> Callable[..., Any]:
    @contextlib.asynccontextmanager
    async def make(**kw: Any) -> AsyncIterator[Harness]:
        kw.setdefault("probe_guest", probe_guest)
        rt = Runtime(config_for(state_dir, blobs, guests, **kw))
        h = Harness(rt)

        def listen(job: Any, comp: str, fd: str, line: str) -> None:
            if fd == "stdout":
                h.lines.setdefault(job.id if job else "-", []).append(line)

        rt.output_listeners.append(listen)
        await rt.start()
        try:
            yield h
        finally:
            await asyncio.wait_for(rt.close(), 30)

    return make


@pytest.fixture(autouse=True)
def _reset_logging() -> Any:
    """CLI tests configure structlog globally; start every test from the defaults."""
    import structlog
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def check_runtime_invariants(rt: Runtime) -> None:
    """What must hold for every runtime once it is closed, whatever the test did."""
    assert rt.budget.in_use == 0, f"{rt.budget.in_use} bytes of buffer budget never given back"
    svc = rt.services
    assert svc.active_streams == 0 and svc.streams_started == svc.streams_ended, \
        f"streams started {svc.streams_started}, ended {svc.streams_ended}, active {svc.active_streams}"
    for job in rt.jobs.values():
        assert job.ends <= 1, f"job {job.id} ended {job.ends} times"
        assert job.done.is_set() or job.state.final, f"job {job.id} never ended: {job.state}"
        for d in job.deliveries:
            assert d.outcome is not None, f"stream {d.correlation_id} of job {job.id} never ended"
            assert d.held == 0 and not d.queue
    assert len(rt.runner._scope) == 0 and len(rt.background) == 0
    assert all(p.tasks == 0 for p in rt.all_pools)
    loop = svc.loop
    if not loop.is_closed():
        left = [t for t in asyncio.all_tasks(loop) if t.get_name().startswith("chunkd:")]
        assert not left, f"tasks left behind: {left}"


@pytest.fixture(autouse=True)
def _runtime_invariants(monkeypatch: pytest.MonkeyPatch) -> Any:
    """After every test: each in-process Runtime it closed returned every byte of
    budget, ended every stream and job exactly once, and left no task behind."""
    made: list[Runtime] = []
    orig = Runtime.__init__

    def init(self: Runtime, *a: Any, **kw: Any) -> None:
        orig(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(Runtime, "__init__", init)
    yield
    for rt in made:
        if rt.closed and rt._services is not None:
            check_runtime_invariants(rt)
