"""Durable job records behind one interface; SQLite under state_dir is the default.

A job answered with 202 has been committed here first. Jobs found `queued`
or `running` at start were interrupted (the daemon died or stopped) and are
run again from the beginning: at-least-once, bounded by max_attempts.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Protocol, TypeVar

T = TypeVar("T")

_COLUMNS = ("id", "component", "args", "state", "attempts", "created_at", "started_at", "ended_at",
            "invoke_ok", "invoke_result", "error", "streams", "output")
_JSON = ("args", "streams", "output")


class JobStore(Protocol):
    async def open(self) -> None: ...

    async def save(self, record: dict[str, Any]) -> None:
        """Insert or replace one job record (the dict of Job.record())."""
        ...

    async def get(self, job_id: str) -> dict[str, Any] | None: ...

    async def recent(self, limit: int = 100, state: str | None = None) -> List[dict[str, Any]]: ...

    async def unfinished(self) -> list[dict[str, Any]]: ...

    async def prune(self, ended_before: float) -> int: ...

    async def close(self) -> None: ...


class SqliteJobStore:
    """One connection, used only from its own thread, WAL journal, synchronous=FULL."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._db is not None, "job store is not open"
            return fn(self._db)
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("""CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, component TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
                invoke_ok INTEGER, invoke_result TEXT, error TEXT, streams TEXT NOT NULL DEFAULT '[]',
                output TEXT NOT NULL DEFAULT '[]')""")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
            self._db = db
        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def save(self, record: dict[str, Any]) -> None:
        row = tuple(json.dumps(record[c]) if c in _JSON else record[c] for c in _COLUMNS)
        sql = f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        await self._do(lambda db: db.execute(sql, row))

    @staticmethod
    def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
        out = []
        for r in cur.fetchall():
            d = dict(zip(_COLUMNS, r, strict=True))
            for c in _JSON:
                d[c] = json.loads(d[c])
            if d["invoke_ok"] is not None:
                d["invoke_ok"] = bool(d["invoke_ok"])
            out.append(d)
        return out

    async def get(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._do(lambda db: self._rows(
            db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,))))
        return rows[0] if rows else None

    async def recent(self, limit: int = 100, state: str | None = None) -> List[dict[str, Any]]:
        cols = ", ".join(_COLUMNS)
        if state is None:
            return await self._do(lambda db: self._rows(
                db.execute(f"SELECT {cols} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))))
        return await self._do(lambda db: self._rows(
            db.execute(f"SELECT {cols} FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit))))

    async def unfinished(self) -> list[dict[str, Any]]:
        return await self._do(lambda db: self._rows(db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at")))

    async def prune(self, ended_before: float) -> int:
        def run(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM jobs WHERE state IN ('completed', 'failed', 'cancelled') AND ended_at < ?",
                             (ended_before,))
            return cur.rowcount
        return await self._do(run)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=True)
