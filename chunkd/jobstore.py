"""Durable job records behind one interface; SQLite under state_dir is the default.

A job answered with 202 has been committed here first. Jobs found `queued`
or `running` at start were interrupted (the daemon died or stopped) and are
run again from the beginning: at-least-once, bounded by max_attempts.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Protocol, TypeVar

T = TypeVar("T")

_COLUMNS = ("id", "component", "args", "state", "attempts", "created_at", "started_at", "ended_at",
            "invoke_ok", "invoke_result", "error", "streams", "output", "tenant", "trace")
_JSON = ("args", "streams", "output", "trace")  # trace: the job's W3C trace carrier (chunkd/tracing.py) or null
# one row per output of a job attempt (chunkd/outputs.py): written when it is created and at
# each change of state; `token` is the sink's, for recovery after a crash
_OUTPUT_COLUMNS = ("job_id", "attempt", "seq", "container", "name", "state", "token", "bytes", "version",
                   "updated_at")
_OPEN_OUTPUT_STATES = ("writing", "sealed", "committing")


class JobStore(Protocol):
    async def open(self) -> None: ...

    async def save(self, record: dict[str, Any]) -> None:
        """Insert or replace one job record (the dict of Job.record())."""
        ...

    async def get(self, job_id: str) -> dict[str, Any] | None: ...

    async def recent(self, limit: int = 100, state: str | None = None,
                     tenant: str | None = None) -> List[dict[str, Any]]:
        """The newest `limit` records (of `state`, of `tenant`; None: any), newest first."""
        ...

    async def unfinished(self) -> list[dict[str, Any]]: ...

    async def prune(self, ended_before: float) -> int: ...

    async def save_outputs(self, rows: list[dict[str, Any]]) -> None:
        """Insert or replace output rows (keyed by job_id, attempt, seq) in one transaction."""
        ...

    async def outputs(self, job_id: str) -> list[dict[str, Any]]:
        """Every output row of a job, every attempt, in order."""
        ...

    async def open_outputs(self) -> list[dict[str, Any]]:
        """Output rows a crash left open (writing, sealed, committing)."""
        ...

    async def close(self) -> None: ...


def committed_outputs(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[str | None, int]]:
    """(container, name) -> (version, bytes) of the outputs committed by a job's attempts."""
    return {(r["container"], r["name"]): (r["version"], r["bytes"]) for r in rows if r["state"] == "committed"}


def outputs_view(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What GET /v1/jobs/{id} shows of a job's stored outputs: its last attempt's, and the
    outputs earlier attempts committed that the last one did not make again."""
    if not rows:
        return []
    last = max(r["attempt"] for r in rows)
    mine = [r for r in rows if r["attempt"] == last]
    names = {(r["container"], r["name"]) for r in mine}
    older = [r for r in rows if r["attempt"] != last and r["state"] == "committed"
             and (r["container"], r["name"]) not in names]
    return [{"container": r["container"], "name": r["name"], "bytes": r["bytes"],
             "state": "sealed" if r["state"] == "committing" else r["state"], "version": r["version"]}
            for r in [*older, *mine]]


class SqliteOutputLedger:
    """The `outputs` table alone, in its own SQLite file: the outputs ledger of a process
    without a job store (cluster mode, `chunkd run`), at `state_dir/outputs.sqlite3`.
    SqliteJobStore is this plus the `jobs` table (one SQL for the rows, both ways).

    One connection, used only from its own thread, WAL journal, synchronous=FULL.

    `lock = True` (the node-local ledger): `open` takes an flock on `PATH.lock`, exclusive
    if it can (then `sole_user` is True: no other live process uses this ledger, so its
    open rows are dead attempts' and may be recovered), and keeps it shared for as long as
    the ledger is open, so that a second process on the same state_dir never recovers this
    one's live rows."""

    def __init__(self, path: Path, *, lock: bool = False) -> None:
        self.path = path
        self._lock_wanted = lock
        self._lock_fd: int | None = None
        self.sole_user = not lock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._db is not None, "job store is not open"
            return fn(self._db)
        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    def _schema(self, db: sqlite3.Connection) -> None:
        db.execute("""CREATE TABLE IF NOT EXISTS outputs (
            job_id TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL, container TEXT NOT NULL,
            name TEXT NOT NULL, state TEXT NOT NULL, token TEXT NOT NULL DEFAULT '{}',
            bytes INTEGER NOT NULL DEFAULT 0, version TEXT, updated_at REAL,
            PRIMARY KEY (job_id, attempt, seq))""")
        db.execute("CREATE INDEX IF NOT EXISTS outputs_state ON outputs(state)")

    def _take_lock(self) -> None:
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.sole_user = True
        except BlockingIOError:
            self.sole_user = False
        fcntl.flock(fd, fcntl.LOCK_SH)  # held until close: a later process is never sole user meanwhile
        self._lock_fd = fd

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._lock_wanted:
                self._take_lock()
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._schema(db)
            self._db = db
        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def save_outputs(self, rows: list[dict[str, Any]]) -> None:
        data = [tuple(json.dumps(r["token"]) if c == "token" else r.get(c) for c in _OUTPUT_COLUMNS) for r in rows]
        sql = (f"INSERT OR REPLACE INTO outputs ({', '.join(_OUTPUT_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_OUTPUT_COLUMNS))})")

        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(sql, data)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        await self._do(run)

    @staticmethod
    def _output_rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
        out = []
        for r in cur.fetchall():
            d = dict(zip(_OUTPUT_COLUMNS, r, strict=True))
            d["token"] = json.loads(d["token"])
            out.append(d)
        return out

    async def outputs(self, job_id: str) -> list[dict[str, Any]]:
        return await self._do(lambda db: self._output_rows(db.execute(
            f"SELECT {', '.join(_OUTPUT_COLUMNS)} FROM outputs WHERE job_id = ? ORDER BY attempt, seq", (job_id,))))

    async def open_outputs(self) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(_OPEN_OUTPUT_STATES))
        return await self._do(lambda db: self._output_rows(db.execute(
            f"SELECT {', '.join(_OUTPUT_COLUMNS)} FROM outputs WHERE state IN ({marks}) ORDER BY job_id, attempt, seq",
            _OPEN_OUTPUT_STATES)))

    async def prune_outputs(self, settled_before: float) -> int:
        """Delete the rows committed or aborted before `settled_before` (the node-local
        ledger: nothing reads them once settled; a job's record carries its outputs)."""
        return await self._do(lambda db: db.execute(
            "DELETE FROM outputs WHERE state IN ('committed', 'aborted') AND updated_at < ?",
            (settled_before,)).rowcount)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=True)


class SqliteJobStore(SqliteOutputLedger):
    """The job store: the `jobs` table beside the ledger's `outputs` table, in one file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)

    def _schema(self, db: sqlite3.Connection) -> None:
        db.execute("""CREATE TABLE IF NOT EXISTS jobs (
            id TEXT PRIMARY KEY, component TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
            invoke_ok INTEGER, invoke_result TEXT, error TEXT, streams TEXT NOT NULL DEFAULT '[]',
            output TEXT NOT NULL DEFAULT '[]', tenant TEXT)""")
        # a store written before tenants (docs/tenants.md): its jobs have none (the admin's)
        if "tenant" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:
            db.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT")
        # a store written before traces (docs/tracing.md): its jobs have no trace carrier
        if "trace" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}:
            db.execute("ALTER TABLE jobs ADD COLUMN trace TEXT NOT NULL DEFAULT 'null'")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
        # lists are the newest N (of a state): an index each, so a list reads N rows, not the table
        db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs(state, created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(ended_at)")  # pruning
        # a tenant's list is the newest N of its jobs (of a state): read N rows too
        db.execute("CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs(tenant, created_at)")
        db.execute("CREATE INDEX IF NOT EXISTS jobs_tenant_state_created ON jobs(tenant, state, created_at)")
        super()._schema(db)

    async def save(self, record: dict[str, Any]) -> None:
        row = tuple(json.dumps(record.get(c)) if c in _JSON else record.get(c) for c in _COLUMNS)
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

    def _with_outputs(self, db: sqlite3.Connection, recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each record gains "outputs": its stored outputs as GET /v1/jobs/{id} shows them."""
        by_job: dict[str, list[dict[str, Any]]] = {}
        ids = [r["id"] for r in recs]
        for at in range(0, len(ids), 500):  # SQLite's bound on host parameters
            part = ids[at:at + 500]
            for row in self._output_rows(db.execute(
                    f"SELECT {', '.join(_OUTPUT_COLUMNS)} FROM outputs WHERE job_id IN ({', '.join('?' * len(part))}) "
                    "ORDER BY attempt, seq", part)):
                by_job.setdefault(row["job_id"], []).append(row)
        for r in recs:
            r["outputs"] = outputs_view(by_job.get(r["id"], []))
        return recs

    async def get(self, job_id: str) -> dict[str, Any] | None:
        rows = await self._do(lambda db: self._with_outputs(db, self._rows(
            db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)))))
        return rows[0] if rows else None

    async def recent(self, limit: int = 100, state: str | None = None,
                     tenant: str | None = None) -> List[dict[str, Any]]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if state is not None:
            where.append("state = ?")
            params.append(state)
        cond = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs {cond}ORDER BY created_at DESC LIMIT ?"
        args = (*params, limit)
        return await self._do(lambda db: self._with_outputs(db, self._rows(db.execute(sql, args))))

    async def unfinished(self) -> list[dict[str, Any]]:
        return await self._do(lambda db: self._rows(db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at")))

    async def prune(self, ended_before: float) -> int:
        def run(db: sqlite3.Connection) -> int:
            cur = db.execute("DELETE FROM jobs WHERE state IN ('completed', 'failed', 'cancelled') AND ended_at < ?",
                             (ended_before,))
            # the rows of pruned jobs, unless one is still open (its job may be gone, its sink is not)
            db.execute("DELETE FROM outputs WHERE job_id NOT IN (SELECT id FROM jobs) "
                       "AND state IN ('committed', 'aborted')")
            return cur.rowcount
        return await self._do(run)
