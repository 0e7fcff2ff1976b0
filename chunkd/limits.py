"""The live limits: the one owner of `[limits]` while chunkd runs.

The Runtime makes one LiveLimits from its config at start, and a reload
(Runtime.reload, SIGHUP) puts the new `[limits]` into that same object. The
pools, the instances and the host services hold the object and read a value
when they need it, never a copy, so a reload reaches all of them alike:

- `call_timeout`: read by an instance before each call into its guest
  (InstanceBase.arm_call_timeout); a call already running keeps the budget it
  started with.
- `max_chunk_size`: read at each `read` (InstanceBase.host_read) and each
  `start-chunking-read` (RuntimeServices.start_chunking).
- `max_pending_streams`, `source_retries`, `source_retry_backoff`: read at each
  start-chunking-read / source read.
- `instance_memory` is the one value a store cannot change: a pool is built for
  one value (InstancePool.memory_bytes), and a reload that changes it rebuilds
  every pool (pool.fingerprint), as a changed component is rebuilt.

docs/cli-and-api.md ("Signals", SIGHUP) states the rule for each key.

`current` is a frozen LimitsConfig and a reload swaps it whole (one reference
store), so a reader that needs several values takes one snapshot and never
sees half of a reload, on the loop or on an instance thread.
"""
from __future__ import annotations

from chunkd.config import LimitsConfig


class LiveLimits:
    __slots__ = ("_current",)

    def __init__(self, limits: LimitsConfig) -> None:
        self._current = limits

    @property
    def current(self) -> LimitsConfig:
        """The limits in force now: read it where a value is used, do not keep it."""
        return self._current

    def update(self, limits: LimitsConfig) -> None:
        """A reload: every later read sees `limits`."""
        self._current = limits

    @property
    def call_timeout_s(self) -> float:
        return self._current.call_timeout_s

    @property
    def max_chunk_size_bytes(self) -> int:
        return self._current.max_chunk_size_bytes
