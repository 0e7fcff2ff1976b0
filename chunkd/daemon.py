"""`chunkd serve`: startup -> main loop -> shutdown.

Signal handlers only set flags: SIGTERM/SIGINT -> should_exit, SIGHUP ->
reload. Shutdown stops intake, gives running jobs `daemon.shutdown_grace`,
then interrupts the rest (they stay in the job store and run again at the
next start) and exits 0.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, Coroutine

import structlog
from aiohttp import web

from chunkd.api import make_app
from chunkd.apiguard import KEEPALIVE_S, ConnectionGuard, GuardedTCPSite
from chunkd.config import Config, load_config
from chunkd.errors import ChunkdError, ConfigError
from chunkd.jobstore import SqliteJobStore
from chunkd.notify import Notifier
from chunkd.runtime import Runtime
from chunkd.security import listen_guard
from chunkd.status import share_history
from chunkd.tenancy import Tokens
from chunkd.tasks import TaskScope

log = structlog.get_logger("chunkd.daemon")

PRUNE_EVERY_S = 3600.0


class Daemon:
    def __init__(self, config: Config, *, shutdown_trigger: asyncio.Event | None = None) -> None:
        self.config = config
        self.should_exit = shutdown_trigger or asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.notifier = Notifier()
        # one machine: jobs in SQLite; cluster mode: in the JetStream key-value bucket
        self.store = None if config.cluster else SqliteJobStore(config.daemon.state_dir / "jobs.sqlite3")
        self.runtime = Runtime(config, store=self.store, node=config.cluster.node if config.cluster else None)
        self._runner: web.AppRunner | None = None
        self._admin_token = ""
        self._scope = TaskScope("daemon")  # the watchdog and the prune loop

    # --- lifecycle -------------------------------------------------------------

    async def serve(self) -> int:
        try:
            await self.startup()
        except ConfigError as e:
            log.error("startup_failed", error=str(e))
            print(f"chunkd: config error: {e}", file=sys.stderr)
            await self._close()
            return 3  # EXIT_CONFIG (chunkd/cli.py): a bad config
        except (ChunkdError, OSError) as e:
            log.error("startup_failed", error=str(e))
            await self._close()
            return 1
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        d = self.config.daemon
        token = os.environ.get("CHUNKD_AUTH_TOKEN") or d.auth_token
        Tokens(token, self.config.tenants, file=self.config.file)  # a tenant with the admin's token: refused
        self._admin_token = token  # the API keeps the token it started with (a reload does not change it)
        ssl_context = listen_guard(self.config, token)  # before anything starts
        d.state_dir.mkdir(parents=True, exist_ok=True)
        if self.store is not None:
            await self.store.open()
        await self.runtime.start()
        share_history(self.runtime)  # the status page's Shares charts: sampled from now on
        resumed = gave_up = 0
        if self.config.cluster is not None:
            from chunkd.cluster import Cluster
            self.runtime.metrics.node = self.config.cluster.node
            cluster = Cluster(self.config.cluster, self.runtime, d.max_attempts)
            self.runtime.use_cluster(cluster)
            await cluster.start()  # interrupted jobs come back by redelivery
        else:
            resumed, gave_up = await self.runtime.resume()
        is_unix = d.listen.startswith("unix:")
        app = make_app(self.runtime, token=token, max_request_bytes=d.max_request_bytes, unix=is_unix)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_S)
        await self._runner.setup()
        site: web.BaseSite
        if is_unix:
            path = Path(d.listen[len("unix:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                path.unlink()
            site = web.UnixSite(self._runner, str(path))
        else:
            host, _, port = d.listen.rpartition(":")
            self.guard = ConnectionGuard(d.max_connections, d.request_head_timeout_s)
            site = GuardedTCPSite(self._runner, host.strip("[]"), int(port), self.guard, ssl_context=ssl_context)
        await site.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        self._spawn(self.notifier.watchdog() if d.watchdog else _noop(), "watchdog")
        self._spawn(self._prune_loop(), "prune")
        self.notifier.send(f"READY=1\nSTATUS=serving on {d.listen}\nMAINPID={os.getpid()}")
        log.info("serving", listen=d.listen, state_dir=str(d.state_dir), components=sorted(self.runtime.pools),
                 resumed_jobs=resumed, given_up_jobs=gave_up, auth=bool(token) and not is_unix,
                 tls=ssl_context is not None, pid=os.getpid())

    async def main_loop(self) -> None:
        while not self.should_exit.is_set():
            waits = {asyncio.ensure_future(self.should_exit.wait()), asyncio.ensure_future(self.reload_requested.wait())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in waits:
                    f.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            if self.reload_requested.is_set() and not self.should_exit.is_set():
                self.reload_requested.clear()
                await self.reload()

    async def reload(self) -> None:
        self.notifier.send("RELOADING=1")
        try:
            config = load_config(self.config.file)
            # new tenants' tokens must not clash with the admin token (CHUNKD_AUTH_TOKEN included)
            Tokens(self._admin_token, config.tenants, file=config.file)
            await self.runtime.reload(config)
            self.config = config
        except ChunkdError as e:
            log.error("reload_failed", error=str(e), keeping="previous config")
        finally:
            self.notifier.send("READY=1")

    async def shutdown(self) -> None:
        grace = self.config.daemon.shutdown_grace_s
        self.notifier.send("STOPPING=1")
        log.info("shutting_down", grace_s=grace, jobs_running=self.runtime.running_jobs,
                 jobs_queued=self.runtime.queued_jobs)
        finished, interrupted = await self.runtime.drain(grace)
        log.info("drained", finished_in_grace=finished, interrupted=interrupted)
        await self._close()
        log.info("stopped")

    async def _close(self) -> None:
        await self._scope.close()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.runtime.close()
        if self.store is not None:
            await self.store.close()

    # --- helpers ---------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._scope.spawn(coro, name=name)

    async def _prune_loop(self) -> None:
        while True:
            try:
                n = await self.runtime.prune(self.config.daemon.job_retention_s)
                if n:
                    log.info("jobs_pruned", count=n)
            except Exception:  # the store may be busy or broken now: try again next time
                log.exception("prune_failed")
            await asyncio.sleep(prune_interval(self.config.daemon.job_retention_s))


def prune_interval(retention_s: float) -> float:
    """How often pruning runs: a tenth of the retention, between 1 s and PRUNE_EVERY_S, so a
    short retention means what it says (a job is gone within retention * 1.1)."""
    return min(PRUNE_EVERY_S, max(1.0, retention_s / 10))


async def _noop() -> None:
    return None
