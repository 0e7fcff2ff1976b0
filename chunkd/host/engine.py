"""The engine chunkd shares across components (in the native host core), and its clock.

The native Engine has the component model and epoch interruption on, keeps
compiled code under `cache_dir/native` (serialized modules: a restart does not
recompile; pruned when an engine is made, by age and total size), and advances
its epoch every EPOCH_TICK_S on a thread of its own.
"""
from __future__ import annotations

from pathlib import Path

import structlog

from chunkd import _native

log = structlog.get_logger("chunkd.engine")

EPOCH_TICK_S = 0.01  # call_timeout resolution
CACHE_MAX_BYTES = 2 * 1024 ** 3  # the compile cache is pruned to this size, newest entries kept ...
CACHE_MAX_AGE_S = 30 * 86400.0  # ... and of entries written longer ago than this (a hit recompiles once)


def prune_compile_cache(code: Path, *, max_bytes: int = CACHE_MAX_BYTES, max_age_s: float = CACHE_MAX_AGE_S,
                        now: float | None = None) -> tuple[int, int]:
    """Remove compiled entries (`*.cwasm`, and temp files a killed writer left) older than
    `max_age_s`, then the oldest until the rest fit in `max_bytes`. A process that has an
    entry mapped keeps it (unlinked files live on); one about to read it compiles again.
    Returns (entries removed, bytes freed)."""
    import re
    import time
    now = time.time() if now is None else now
    entries = []
    for p in code.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if re.search(r"\.tmp\d+$", p.name):  # a writer's temp file (load.rs): only a stale one goes
            if now - st.st_mtime > 3600:
                try:
                    p.unlink()
                except OSError:
                    pass
            continue
        if p.suffix == ".cwasm" and p.is_file():
            entries.append((st.st_mtime, st.st_size, p))
    entries.sort(reverse=True)  # newest first
    removed = freed = 0
    kept = 0
    for mtime, size, p in entries:
        if now - mtime > max_age_s or kept + size > max_bytes:
            try:
                p.unlink()
                removed += 1
                freed += size
            except OSError:
                pass
        else:
            kept += size
    if removed:
        log.info("compile_cache_pruned", removed=removed, freed_bytes=freed, kept_bytes=kept, cache_dir=str(code))
    return removed, freed


def make_engine(cache_dir: Path | None) -> _native.Engine:
    """Component model on, epoch interruption for call timeouts, compiled-code cache."""
    code = None
    if cache_dir is not None:
        try:
            code = cache_dir / "native"
            code.mkdir(parents=True, exist_ok=True)
            prune_compile_cache(code)
        except OSError as e:
            log.warning("compile_cache_disabled", reason=str(e), cache_dir=str(cache_dir))
            code = None
    return _native.Engine(str(code) if code is not None else None, EPOCH_TICK_S)


class EpochClock:
    """The engine's epoch, as instances count call budgets: `ticks` since the engine
    was made (the native clock runs from the engine's creation)."""

    def __init__(self, engine: _native.Engine) -> None:
        self.engine = engine
        self.tick_s = engine.tick_s

    @property
    def ticks(self) -> int:
        return self.engine.ticks

    def stop(self) -> None:
        self.engine.stop()

    def ticks_for(self, seconds: float) -> int:
        return max(1, round(seconds / self.tick_s))
