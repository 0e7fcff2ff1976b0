"""Writing guests through one delivery slot and a budget of two chunks complete exactly.

A batch holds one of `daemon.delivery_workers` slots while its guest runs (chunkd/fairshare.py).
A copying guest (examples/copy-rs) writes inside handle-chunk; with a small buffer budget its
write may wait for room held by read-ahead chunks of other jobs, which are given back only
when their batch runs. A write that must wait lends its slot (FairShare.lent, tested on its
own in test_fairshare.py), so another batch can run. This test runs four real copy jobs
through one slot and a 2 MiB budget (1 MiB chunks), with the room deadline cut to 20 s, and
checks every output byte for byte and that the budget and the slots all come back. (Here the
writers did not stall even without lending: the file sink's pieces are short-lived; the test
holds the end-to-end behaviour, not the mechanism.)
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import chunkd.outputs
from chunkd.config import config_from_mapping
from chunkd.jobs import COMPLETED
from chunkd.runtime import Runtime
from tests.conftest import GUESTS

MiB = 1024 * 1024
JOBS = 4


def config(tmp: Path, workers: int) -> Any:
    return config_from_mapping({
        "daemon": {"state_dir": str(tmp / "state"), "log_format": "console", "delivery_workers": workers},
        "limits": {"call_timeout": "30s", "max_chunk_size": "1MiB", "max_buffered_bytes": "2MiB"},
        "containers": {"src": {"kind": "file", "root": str(tmp / "src")},
                       "dst": {"kind": "file", "root": str(tmp / "dst"), "writable": True}},
        "components": {"copy": {"path": str(GUESTS / "copy_rs.wasm"), "instances": JOBS, "prefetch_chunks": 2}},
    }, file="test.toml")


@pytest.mark.asyncio
async def test_writers_lend_their_slot_while_waiting_for_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkd.outputs, "ROOM_WAIT_S", 20.0)
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    digests = {}
    for i in range(JOBS):
        data = os.urandom(12 * MiB + 1000 * i)
        (tmp_path / "src" / f"in{i}.bin").write_bytes(data)
        digests[i] = hashlib.sha256(data).hexdigest()
    rt = Runtime(config(tmp_path, workers=1))
    await rt.start()
    try:
        jobs = [rt.submit("copy", ["--chunk-size=1048576", "src", f"in{i}.bin", "dst", f"out{i}.bin"])
                for i in range(JOBS)]
        await asyncio.wait_for(asyncio.gather(*(j.done.wait() for j in jobs)), 150)
        for i, job in enumerate(jobs):
            assert job.state == COMPLETED, f"job {i}: {job.state} {job.error}"
            out = (tmp_path / "dst" / f"out{i}.bin").read_bytes()
            assert hashlib.sha256(out).hexdigest() == digests[i]
        assert rt.fairshare.lent_out == 0
    finally:
        await asyncio.wait_for(rt.close(), 30)
    assert rt.budget.in_use == 0
    assert rt.fairshare.active == 0
