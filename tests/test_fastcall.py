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


@pytest.mark.parametrize("overlap", [fastcall.OVERLAP_LIMIT_BYTES, 32 * 1500])
async def test_lists_filled_during_the_previous_call_deliver_exact_bytes(
        harness, blobs: Path, monkeypatch: pytest.MonkeyPatch, overlap: int) -> None:
    """The next chunk of a batch is written into the spare list on a helper thread while
    the current call runs; with a small overlap limit only the small chunks are."""
    seen = {"prefills": 0}
    real = fastcall.PreparedHandleChunk.prefill

    def counting(self: fastcall.PreparedHandleChunk, data: bytes) -> None:
        seen["prefills"] += 1
        real(self, data)

    monkeypatch.setattr(fastcall.PreparedHandleChunk, "prefill", counting)
    monkeypatch.setattr(fastcall, "OVERLAP_LIMIT_BYTES", overlap)
    monkeypatch.setattr(fastcall.PreparedHandleChunk.__init__, "__defaults__",
                        (fastcall.CACHE_LIMIT_BYTES, overlap))
    a = make_blob(blobs, "a.bin", 300_001, seed=4)
    b = make_blob(blobs, "b.bin", 100_000, seed=5)
    c = make_blob(blobs, "c.bin", 40_000, seed=6)
    async with harness() as h:
        job = await h.run("probe", ["open a local a.bin", "start a 1000 1", "open b local b.bin", "start b 4000 2",
                                    "stop 3 17", "open c local c.bin", "start c 999 3"])
    lines = h.out(job)
    for cid, data in ((1, a), (2, b)):
        assert ended(lines, cid) == [f"ended {cid} completed {hashlib.sha256(data).hexdigest()}"]
    assert [line.split()[:3] for line in ended(lines, 3)] == [["ended", "3", "cancelled"]]
    assert seen["prefills"] > 0
