"""The prepared C-API handle-chunk call: exact bytes whether the list storage is
reused (it is only read by the call), regrown, or built per call."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chunkd.host import fastcall
from chunkd.jobs import COMPLETED
from tests.conftest import make_blob
from tests.test_delivery import ended


@pytest.mark.parametrize("limit", [fastcall.CACHE_LIMIT_BYTES, 32 * 3000])
async def test_reused_regrown_and_per_call_lists_deliver_exact_bytes(
        harness, blobs: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(fastcall, "cache_limit_for", lambda max_chunk_size: limit)
    a = make_blob(blobs, "a.bin", 50_001, seed=1)
    b = make_blob(blobs, "b.bin", 20_000, seed=2)
    c = make_blob(blobs, "c.bin", 7, seed=3)
    async with harness() as h:
        # 1000-byte chunks, then 5000 (regrow; above the small limit: per call), then 3 (reuse)
        job = await h.run("probe", ["open a local a.bin", "start a 1000 1", "open b local b.bin", "start b 5000 2",
                                    "open c local c.bin", "start c 3 3"])
    assert job.state == COMPLETED
    lines = h.out(job)
    for cid, data in ((1, a), (2, b), (3, c)):
        assert ended(lines, cid) == [f"ended {cid} completed {hashlib.sha256(data).hexdigest()}"]


def test_allocator_tuning_is_applied() -> None:
    assert fastcall.tune_allocator() is True


def test_the_kept_list_covers_every_allowed_chunk() -> None:
    assert fastcall.cache_limit_for(4 * 1024 * 1024) == 32 * 4 * 1024 * 1024
    assert fastcall.cache_limit_for(1024) == fastcall.CACHE_LIMIT_BYTES
