"""TaskScope: the owner of tasks that outlive the call that starts them.

Every task chunkd starts belongs to a scope that awaits or cancels it: a
job's producers to its StreamSet's TaskGroup, jobs to the JobRunner's scope,
instance replacements and closes to their pool's, blob closes handed over
from instance threads to the runtime's. A scope logs a task's unexpected
exception with its traceback, and `close()` cancels and awaits what is left.
"""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

import structlog

log = structlog.get_logger("chunkd.tasks")

T = TypeVar("T")


class ScopeClosed(RuntimeError):
    pass


class TaskScope:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise ScopeClosed(f"task scope {self.name} is closed; {name} not started")
        task = asyncio.get_running_loop().create_task(coro, name=f"chunkd:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task_failed", scope=self.name, task=task.get_name(), error=repr(exc), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        return set(self._tasks)

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the tasks running now (up to `timeout`); returns how many are still running."""
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        return len(pending)

    async def close(self) -> int:
        """No new tasks; cancel and await the rest. Returns how many were cancelled."""
        self._closed = True
        cancelled = 0
        while self._tasks:
            tasks = set(self._tasks)
            for t in tasks:
                if not t.done():
                    t.cancel()
                    cancelled += 1
            await asyncio.wait(tasks)
        return cancelled
