"""The compile cache is bounded: entries older than the age limit go, then the oldest until
the rest fit the size limit; a writer's fresh temp file is left alone, a stale one goes."""
from __future__ import annotations

import os
from pathlib import Path

from chunkd.host.engine import make_engine, prune_compile_cache

NOW = 2_000_000_000.0


def entry(d: Path, name: str, size: int, age_s: float, now: float = NOW) -> Path:
    p = d / name
    p.write_bytes(b"x" * size)
    os.utime(p, (now - age_s, now - age_s))
    return p


def test_prune_by_age_then_by_size_newest_kept(tmp_path: Path) -> None:
    a = entry(tmp_path, "a.cwasm", 100, 10)
    b = entry(tmp_path, "b.cwasm", 100, 20)
    c = entry(tmp_path, "c.cwasm", 100, 30)
    old = entry(tmp_path, "old.cwasm", 10, 40 * 86400)
    fresh_tmp = entry(tmp_path, "d.tmp4242", 500, 5)
    stale_tmp = entry(tmp_path, "e.tmp4243", 500, 7200)
    other = entry(tmp_path, "notes.txt", 10, 40 * 86400)
    removed, freed = prune_compile_cache(tmp_path, max_bytes=250, max_age_s=30 * 86400, now=NOW)
    assert a.exists() and b.exists() and not c.exists() and not old.exists()
    assert fresh_tmp.exists() and not stale_tmp.exists() and other.exists()
    assert (removed, freed) == (2, 110)


def test_make_engine_prunes_its_cache(tmp_path: Path) -> None:
    code = tmp_path / "native"
    code.mkdir()
    import time
    stale = entry(code, "s.cwasm", 10, 60 * 86400, now=time.time())
    engine = make_engine(tmp_path)
    try:
        assert not stale.exists()
    finally:
        engine.stop()
