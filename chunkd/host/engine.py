"""The wasmtime engine chunkd shares across components, and its epoch clock."""
from __future__ import annotations

import ctypes

import threading
from pathlib import Path

import structlog
from wasmtime import Config, Engine, WasmtimeError

log = structlog.get_logger("chunkd.engine")

EPOCH_TICK_S = 0.01  # call_timeout resolution


def make_engine(cache_dir: Path | None) -> Engine:
    """Component model on, epoch interruption for call timeouts, compiled-code cache."""
    cfg = Config()
    cfg.wasm_component_model = True
    cfg.epoch_interruption = True
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            toml = cache_dir / "wasmtime-cache.toml"
            toml.write_text(f'[cache]\ndirectory = "{(cache_dir / "code").as_posix()}"\n')
            cfg.cache = str(toml)
        except (OSError, WasmtimeError) as e:
            log.warning("compile_cache_disabled", reason=str(e), cache_dir=str(cache_dir))
    return Engine(cfg)


class EpochClock:
    """Advances the engine's epoch every EPOCH_TICK_S on a daemon thread.

    `ticks` mirrors the engine epoch so instances can tell how much of a
    call's budget was spent waiting on the host (which does not count).
    """

    def __init__(self, engine: Engine, tick_s: float = EPOCH_TICK_S) -> None:
        self.engine = engine
        self.tick_s = tick_s
        self._ticks = ctypes.c_uint64(0)  # C reads it too (the native batch, host/native.py)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunkd-epoch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def ticks(self) -> int:
        return int(self._ticks.value)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._ticks.value += 1
            self.engine.increment_epoch()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)

    def ticks_for(self, seconds: float) -> int:
        return max(1, round(seconds / self.tick_s))
