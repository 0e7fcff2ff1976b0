"""The engine chunkd shares across components (in the native host core), and its clock.

The native Engine has the component model and epoch interruption on, keeps
compiled code under `cache_dir` (serialized modules: a restart does not
recompile), and advances its epoch every EPOCH_TICK_S on a thread of its own.
"""
from __future__ import annotations

from pathlib import Path

import structlog

from chunkd import _native

log = structlog.get_logger("chunkd.engine")

EPOCH_TICK_S = 0.01  # call_timeout resolution


def make_engine(cache_dir: Path | None) -> _native.Engine:
    """Component model on, epoch interruption for call timeouts, compiled-code cache."""
    code = None
    if cache_dir is not None:
        try:
            code = cache_dir / "native"
            code.mkdir(parents=True, exist_ok=True)
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
