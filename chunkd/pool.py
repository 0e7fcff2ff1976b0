"""The instance pool of one component: `instances` live instances, FIFO to jobs.

The pool owns every task it starts (replacing a broken instance, closing one
after a reload) in its own TaskScope; `close()` cancels and awaits them.
"""
from __future__ import annotations

import asyncio
from typing import Any

import structlog

from chunkd.config import ComponentConfig
from chunkd.host.component import LoadedComponent
from chunkd.host.engine import EpochClock
from chunkd.host.instance import HostServices, InstanceBase
from chunkd.host.native_instance import NativeInstance
from chunkd.flowcontrol import Pacer
from chunkd.limits import LiveLimits
from chunkd.tasks import ScopeClosed, TaskScope

log = structlog.get_logger("chunkd.pool")

RESTART_BACKOFF_MAX_S = 30.0


def fingerprint(cfg: ComponentConfig, memory_bytes: int) -> tuple[Any, ...]:
    """What makes a reload rebuild a pool: its config, its file, or limits.instance_memory
    changed (a store's memory limit is fixed when it is made; the other limits are read
    live, chunkd/limits.py)."""
    try:
        st = cfg.path.stat()
        return (cfg, memory_bytes, st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return (cfg, memory_bytes, None)


class InstancePool:
    def __init__(self, comp: LoadedComponent, cfg: ComponentConfig, limits: LiveLimits, memory_bytes: int,
                 services: HostServices, clock: EpochClock, meters: tuple[Any, Any, Any]) -> None:
        self.comp = comp
        self.cfg = cfg
        self.limits = limits  # the runtime's live limits, handed to every instance (read, never copied)
        self.memory_bytes = memory_bytes  # limits.instance_memory of every instance of this pool
        self.services = services
        self.clock = clock
        self.meters = meters  # this component's labelled series: handle seconds, chunks, bytes
        self.pacer = Pacer(cfg.max_bytes_per_second)
        self.idle: asyncio.Queue[InstanceBase] = asyncio.Queue(maxsize=cfg.instances)
        self.waiting = 0
        self._next_index = 0
        self.replaced = 0
        self.fingerprint = fingerprint(cfg, memory_bytes)
        self.retired = False
        self._scope = TaskScope(f"pool-{comp.name}")

    def _new_instance(self) -> InstanceBase:
        inst = NativeInstance(self.comp, self._next_index, self.services, self.clock, limits=self.limits,
                              memory_bytes=self.memory_bytes)
        self._next_index += 1
        return inst

    async def start(self) -> None:
        # the first instance alone: it makes the module's copy-on-write memory image, which
        # concurrent first instantiations were seen to race on ("cannot add seals to the memfd")
        first = await self._start_one()
        rest: list[InstanceBase] = []
        try:
            rest = list(await asyncio.gather(*(self._start_one() for _ in range(self.cfg.instances - 1))))
        except BaseException:
            for i in [first, *rest]:
                await i.close()
            raise
        for i in [first, *rest]:
            self.idle.put_nowait(i)

    async def _start_one(self, tries: int = 3) -> InstanceBase:
        """A new running instance; a failed start (a transient engine error) is retried."""
        for attempt in range(1, tries + 1):
            inst = self._new_instance()
            try:
                await inst.start()
                return inst
            except Exception as e:
                await inst.close()
                if attempt == tries:
                    raise
                log.warning("instance_start_failed", component=self.comp.name, error=str(e), attempt=attempt)
                await asyncio.sleep(0.1 * attempt)
            except BaseException:
                await inst.close()
                raise
        raise AssertionError("unreachable")

    async def acquire(self) -> InstanceBase:
        self.waiting += 1
        try:
            return await self.idle.get()
        finally:
            self.waiting -= 1

    def give_back(self, inst: InstanceBase) -> None:
        """The job is done with `inst`: idle again, or replaced when it broke."""
        if inst.broken:
            self.replaced += 1
            log.warning("instance_replaced", component=self.comp.name, instance=inst.label, reason=inst.broken)
            self._spawn(self._replace(inst), f"replace-{inst.label}")
        else:
            self._release(inst)

    def _release(self, inst: InstanceBase) -> None:
        if self.retired and self.waiting == 0:
            self._spawn(inst.close(), f"close-{inst.label}")
            return
        self.idle.put_nowait(inst)

    def _spawn(self, coro: Any, name: str) -> None:
        try:
            self._scope.spawn(coro, name=name)
        except ScopeClosed:
            pass  # the pool is closing: nothing more to start

    async def _replace(self, broken: InstanceBase) -> None:
        """Discard a trapped or timed-out instance and start a fresh one in its place."""
        await broken.close()
        delay = 0.0
        while True:
            inst = self._new_instance()
            try:
                await inst.start()
            except Exception as e:
                await inst.close()
                delay = min(max(delay * 2, 0.5), RESTART_BACKOFF_MAX_S)
                log.error("instance_start_failed", component=self.comp.name, error=str(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                await inst.close()
                raise
            self._release(inst)
            return

    async def retire(self) -> None:
        """Replaced by a reload: serve the jobs already waiting, then close."""
        self.retired = True
        if self.waiting == 0:
            while not self.idle.empty():
                inst = self.idle.get_nowait()
                self._spawn(inst.close(), f"close-{inst.label}")

    @property
    def tasks(self) -> int:
        return len(self._scope)

    async def close(self) -> None:
        await self._scope.close()
        while not self.idle.empty():
            await self.idle.get_nowait().close()
