"""One job attempt's outputs: the blobs its guest writes back (docs/outputs.md).

`JobOutputs` sits between the guest (the instance thread calls `create`,
`write`, `finish` and `drop` through the loop) and the sinks (chunkd/sinks/).
It checks the two grants (`containers.NAME.writable` and
`components.NAME.containers`), counts `limits.max_output_bytes`, holds every
byte a sink keeps in memory in the one buffer budget (`limits.max_buffered_bytes`:
a write waits for room, that is the backpressure), records each output in the
job store as it changes state, and commits every output with the job
(`commit`) or aborts them all (`abort`). The job runner calls one of the two
at the end of each attempt.

Recovery after a crash (`recover_outputs`) runs at start, before unfinished
jobs run again: every output row not committed or aborted is settled by its
container's `recover` (rolled forward when it was `committing`), then each
writable container is swept.

Budget rule: an output holds in the budget exactly what its sink holds
(`Sink.buffered`). Before bytes are handed to the sink they are reserved (the
write awaits room); after each write, seal, commit or abort what the sink no
longer holds is given back; after a commit or an abort the output holds
nothing.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ContextManager, Mapping, Protocol

import structlog

from chunkd.errors import ChunkdError, OutputRefused, SourceError
from chunkd.sinks.base import ABORTED, COMMITTED, SinkConflict, SinkError

if TYPE_CHECKING:
    from chunkd.config import ContainerConfig
    from chunkd.flowcontrol import BufferBudget
    from chunkd.metrics import Metrics
    from chunkd.sinks.base import Sink, WritableContainer

__all__ = ["OutputRefused", "JobOutputs", "OutputLedger", "recover_outputs", "WRITING", "SEALED", "COMMITTING",
           "COMMITTED", "ABORTED"]

log = structlog.get_logger("chunkd.outputs")

WRITING, SEALED, COMMITTING = "writing", "sealed", "committing"
OPEN_STATES = (WRITING, SEALED, COMMITTING)  # a row in one of these after a crash is settled at start
ROOM_WAIT_S = 300.0  # longest a write waits for room in the buffer budget before its output fails
CANCEL_WAIT_S = 30.0  # longest abort() waits for the operations it cancelled to unwind


class OutputLedger(Protocol):
    """Where output rows are kept: the job store (jobstore.SqliteJobStore), or without one
    (cluster mode, `chunkd run`) the node-local ledger (jobstore.SqliteOutputLedger)."""

    async def save_outputs(self, rows: list[dict[str, Any]]) -> None:
        """Insert or replace these rows (keyed by job_id, attempt, seq) in one transaction."""
        ...


@dataclass(eq=False)
class _Output:
    handle: int
    container: str
    name: str
    sink: "Sink | None"  # None: an earlier attempt of this job committed it (a replay: bytes discarded)
    state: str = WRITING
    bytes: int = 0
    version: str | None = None
    finished: bool = False  # the guest called finish
    count_writes: bool = True  # a replay whose earlier size is unknown counts the bytes it drops
    held: int = 0  # budget bytes this output holds (what its sink holds)
    saved_token: dict[str, str] = field(default_factory=dict)  # the sink's token as its row last has it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class JobOutputs:
    """The outputs of one attempt of one job. Every method runs on the event loop.

    `failure` is set when something happened that must fail the job whatever the guest
    does with the error it was given (`limits.max_output_bytes` passed, `overwrite =
    false` and the name exists, a sink failed): the job runner checks it before
    `commit`, and `commit` refuses too."""

    def __init__(self, job_id: str, attempt: int, component: str, *, sinks: Mapping[str, "WritableContainer"],
                 containers: Mapping[str, "ContainerConfig"], grants: frozenset[str] | None,
                 budget: "BufferBudget", max_output_bytes: int = 0, ledger: OutputLedger | None = None,
                 metrics: "Metrics | None" = None,
                 lend: "Callable[[], ContextManager[None]] | None" = None,
                 committed_before: Mapping[tuple[str, str], tuple[str | None, int]] | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.component = component
        self._sinks = dict(sinks)
        self._containers = dict(containers)
        self._grants = grants
        self._budget = budget
        self._max_bytes = max_output_bytes
        self._ledger = ledger
        self._metrics = metrics
        self._lend = lend  # the runtime's FairShare.lent: a write waiting for room lends its batch's slot
        # (container, name) -> (version, bytes) an earlier attempt of this job committed
        self._before: dict[tuple[str, str], tuple[str | None, int]] = dict(committed_before or {})
        self._outputs: dict[int, _Output] = {}
        self._next = 1
        self._total = 0  # bytes the guest wrote to all outputs of this attempt
        self._inflight: set[asyncio.Task[Any]] = set()
        self._closed = False  # commit or abort began: no new operation
        self._end: tuple[str, asyncio.Future[None]] | None = None  # the one commit or abort, as a task
        self._ended: str | None = None  # "committed" or "aborted" once commit or abort ran
        self.failure: str | None = None

    # --- what the guest calls (through the instance thread) -------------------------

    async def create(self, container: str, name: str) -> int:
        with self._op():
            self._check_open()
            ccfg = self._containers.get(container)
            if ccfg is None:
                raise OutputRefused(f"no container named {container!r}", "invalid")
            if not ccfg.writable:
                raise OutputRefused(f"container {container} is read-only (containers.{container}.writable = false)",
                                    "invalid")
            if self._grants is not None and container not in self._grants:
                raise OutputRefused(f"component {self.component} is not granted container {container} "
                                    f"(components.{self.component}.containers)", "invalid")
            wc = self._sinks.get(container)
            if wc is None:
                raise OutputRefused(f"container {container} cannot take outputs (kind {ccfg.kind})", "invalid")
            key = (container, name)
            if any((o.container, o.name) == key and o.state != ABORTED for o in self._outputs.values()):
                raise OutputRefused(f"{container}/{name} is already an output of this job", "invalid")
            handle = self._next
            self._next += 1
            if key in self._before:
                return await self._replay(handle, container, name, *self._before[key])
            try:
                sink = await wc.create(name, job_id=self.job_id, attempt=self.attempt, overwrite=ccfg.overwrite)
            except SinkConflict as e:
                if e.by_this_job:  # an earlier attempt of this job committed it: not written twice
                    return await self._replay(handle, container, name, None, None)
                msg = f"output {container}/{name} exists and containers.{container}.overwrite = false: {e}"
                self._fail(msg)
                raise OutputRefused(msg, "failed") from None
            except SinkError as e:
                raise OutputRefused(str(e), "invalid" if "escape" in str(e) or "not allowed" in str(e)
                                    else "failed") from None
            except SourceError as e:  # a name refused by the source layer
                raise OutputRefused(f"{container}/{name}: {e}", "invalid") from None
            o = _Output(handle, container, name, sink)
            self._outputs[handle] = o
            try:
                self._check_open()  # an abort may have begun while the sink was made
                await self._save(o)
            except BaseException:
                await self._abort_one(o, "not recorded")
                raise
            log.info("output_created", job_id=self.job_id, attempt=self.attempt, component=self.component,
                     container=container, name=name, handle=handle)
            return handle

    async def write(self, handle: int, data: bytes) -> None:
        with self._op():
            o = self._writable(handle)
            async with o.lock:
                o = self._writable(handle)
                if self.failure is not None:
                    raise OutputRefused(self.failure, "failed")
                n = len(data)
                if self._max_bytes and self._total + n > self._max_bytes:
                    msg = (f"the job's outputs passed limits.max_output_bytes ({self._max_bytes} bytes) "
                           f"writing {o.container}/{o.name}: nothing is committed")
                    self._fail(msg)
                    await self._abort_one(o, "limits.max_output_bytes passed")
                    raise OutputRefused(msg, "failed")
                self._total += n
                if o.sink is None:  # a replay: the earlier attempt's blob stands, these bytes are dropped
                    if o.count_writes:
                        o.bytes += n
                    return
                o.bytes += n
                if not n:
                    return
                try:
                    step = max(1, self._budget.limit)
                    for at in range(0, n, step):  # each piece fits in the budget
                        await self._write_piece(o, o.sink, data[at:at + step])
                        if self._metrics is not None:
                            self._metrics.output_bytes.labels(self.component).inc(min(step, n - at))
                    if o.sink.token() != o.saved_token:  # e.g. an s3 upload id now exists: a restart aborts it
                        await self._save(o)
                except SinkError as e:
                    msg = f"output {o.container}/{o.name} failed: {e}"
                    self._fail(msg)
                    await self._abort_one(o, str(e))
                    raise OutputRefused(msg, "failed") from None

    async def finish(self, handle: int) -> None:
        with self._op():
            o = self._writable(handle)
            async with o.lock:
                o = self._writable(handle)
                if self.failure is not None:
                    raise OutputRefused(self.failure, "failed")
                o.finished = True
                if o.sink is None:
                    return
                try:
                    await o.sink.seal()
                except SinkError as e:
                    msg = f"output {o.container}/{o.name} failed: {e}"
                    self._fail(msg)
                    await self._abort_one(o, str(e))
                    raise OutputRefused(msg, "failed") from None
                finally:
                    self._settle(o)
                o.state = SEALED
                await self._save(o)

    async def drop(self, handle: int) -> None:
        """The guest dropped its output-stream: aborted unless it was finished. Never raises."""
        o = self._outputs.get(handle)
        if o is None or o.finished or o.state == ABORTED or o.sink is None:
            return
        try:
            async with o.lock:
                if not o.finished and o.state == WRITING:
                    await self._abort_one(o, "dropped by the guest before finish")
        except Exception as e:  # the row stays open: the next start settles it
            log.warning("output_drop_failed", job_id=self.job_id, container=o.container, name=o.name, error=str(e))

    # --- the job's end (the job runner) -----------------------------------------------

    async def commit(self) -> None:
        """The job completed: make every sealed output visible. Raises OutputRefused (after
        aborting what is not committed) when one cannot be: the job then fails.

        The commit runs as a task of its own that a cancelled caller does not stop (a
        shutdown does not cut it between two outputs); an abort() meanwhile waits for it."""
        if self._end is None and self._untouched():
            self._closed = True  # nothing was created: nothing to commit (and no task for it)
            return
        if self._end is None:
            self._end = ("commit", asyncio.ensure_future(self._commit()))
        kind, task = self._end
        if kind != "commit":
            await asyncio.shield(task)
            raise OutputRefused("the job's outputs were aborted", "closed")
        await asyncio.shield(task)

    async def abort(self) -> None:
        """Every other end (failed, cancelled, timed out, interrupted, a trap): abort every
        output not committed. Idempotent; gives back every byte of budget. After a commit
        (or while one runs: it is awaited) it changes nothing."""
        if self._end is None and self._untouched():
            self._closed = True
            return
        if self._end is None:
            self._end = ("abort", asyncio.ensure_future(self._abort_all()))
        try:
            await asyncio.shield(self._end[1])
        except OutputRefused:
            pass  # a commit that failed: it aborted the rest itself

    async def _commit(self) -> None:
        await self._stop_ops()
        problem = self.failure
        if problem is None:
            late = [o for o in self._outputs.values() if o.sink is not None and o.state == WRITING]
            if late:
                o = late[0]
                problem = (f"output {o.container}/{o.name} was never finished: the guest neither called "
                           f"finish nor dropped it" + (f" (and {len(late) - 1} more)" if len(late) > 1 else ""))
                self._fail(problem)
        if problem is not None:
            await self._abort_all()
            raise OutputRefused(problem, "failed")
        todo = [o for o in self._outputs.values() if o.sink is not None and o.state == SEALED]
        for o in todo:
            o.state = COMMITTING
        try:
            if todo:
                await self._save(*todo)  # the decision, one transaction: a restart rolls these forward
        except BaseException:
            for o in todo:
                o.state = SEALED
            await self._abort_all()
            raise
        for o in todo:
            assert o.sink is not None
            try:
                o.version = await o.sink.commit()
            except SinkConflict as e:
                if not e.by_this_job:
                    msg = (f"output {o.container}/{o.name} exists and containers.{o.container}.overwrite = false: "
                           f"{e}")
                    self._fail(msg)
                    await self._abort_all()
                    raise OutputRefused(msg, "failed") from None
                # an earlier attempt of this job committed it meanwhile (cluster mode: a dead
                # node's commit rolled forward at its restart): that one stands, ours was undone
                o.sink, o.version = None, None
            except SinkError as e:
                msg = f"output {o.container}/{o.name} could not be committed: {e}"
                self._fail(msg)
                await self._abort_all()
                raise OutputRefused(msg, "failed") from None
            finally:
                self._settle(o, all_of_it=True)
            o.state = COMMITTED
            try:
                await self._save(o)
            except Exception as e:  # visible now; its row says committing: the next start confirms it
                log.error("output_row_not_saved", job_id=self.job_id, container=o.container, name=o.name,
                          error=str(e))
            if self._metrics is not None:
                self._metrics.outputs_committed.labels(self.component).inc()
            log.info("output_committed", job_id=self.job_id, attempt=self.attempt, component=self.component,
                     container=o.container, name=o.name, bytes=o.bytes, version=o.version)
        self._ended = "committed"

    async def _abort_all(self) -> None:
        await self._stop_ops()
        for o in list(self._outputs.values()):
            if o.sink is not None and o.state in OPEN_STATES:
                await self._abort_one(o, self.failure or "the job did not complete")
        self._ended = "aborted"

    # --- what operators see ----------------------------------------------------------------

    def view(self) -> list[dict[str, Any]]:
        """Container, name, bytes, state (writing|sealed|committed|aborted), version, per output;
        an output an earlier attempt committed shows as committed."""
        out = [{"container": o.container, "name": o.name, "bytes": o.bytes,
                "state": SEALED if o.state == COMMITTING else o.state, "version": o.version}
               for o in self._outputs.values()]
        seen = {(o.container, o.name) for o in self._outputs.values()}
        out += [{"container": c, "name": n, "bytes": size, "state": COMMITTED, "version": v}
                for (c, n), (v, size) in self._before.items() if (c, n) not in seen]
        return out

    @property
    def held(self) -> int:
        """Budget bytes the outputs hold now."""
        return sum(o.held for o in self._outputs.values())

    @property
    def ended(self) -> str | None:
        return self._ended

    # --- inside ---------------------------------------------------------------------

    def _untouched(self) -> bool:
        """No output was ever created, nothing failed, no operation runs: an end has nothing to do."""
        return not self._outputs and self.failure is None and not any(not t.done() for t in self._inflight)

    def _op(self) -> "_Inflight":
        return _Inflight(self._inflight)

    def _check_open(self) -> None:
        if self._closed:
            raise OutputRefused("the job's outputs are closed: the job ended", "closed")

    def _writable(self, handle: int) -> _Output:
        self._check_open()
        o = self._outputs.get(handle)
        if o is None or o.finished or o.state == ABORTED:
            raise OutputRefused(f"output {handle} is not open", "closed")
        return o

    def _fail(self, msg: str) -> None:
        if self.failure is None:
            self.failure = msg
            log.warning("outputs_failed", job_id=self.job_id, attempt=self.attempt, error=msg)

    async def _replay(self, handle: int, container: str, name: str, version: str | None, size: int | None) -> int:
        """An earlier attempt of this job committed container/name: this handle takes the
        guest's bytes and drops them, and its commit is a no-op (recorded as committed)."""
        o = _Output(handle, container, name, None, state=COMMITTED, version=version, bytes=size or 0,
                    count_writes=size is None)
        self._outputs[handle] = o
        await self._save(o)
        log.info("output_created", job_id=self.job_id, attempt=self.attempt, component=self.component,
                 container=container, name=name, handle=handle, already_committed=True, version=version)
        return handle

    async def _write_piece(self, o: _Output, sink: "Sink", piece: bytes) -> None:
        n = len(piece)
        limit = self._budget.limit
        mine = self.held
        if mine + n > limit:  # only this job's guest could free that room, and it is waiting here
            raise SinkError(f"its sink holds {o.held} bytes and this job's outputs {mine}, so "
                            f"limits.max_buffered_bytes ({limit}) can never make room for {n} more: "
                            f"raise it (above the containers' part_size for each output written at once)")
        try:
            if self._lend is None or self._budget.fits_now(n):
                got = await asyncio.wait_for(self._budget.acquire(n), ROOM_WAIT_S)
            else:
                with self._lend():
                    got = await asyncio.wait_for(self._budget.acquire(n), ROOM_WAIT_S)
        except TimeoutError:
            raise SinkError(f"no room in limits.max_buffered_bytes ({limit}) for {ROOM_WAIT_S:g}s") from None
        o.held += got
        try:
            await sink.write(piece)
        finally:
            self._settle(o)

    def _settle(self, o: _Output, *, all_of_it: bool = False) -> None:
        """Give back what the sink no longer holds (all of it after a commit or an abort)."""
        keep = 0 if all_of_it or o.sink is None else max(0, o.sink.buffered)
        extra = o.held - keep
        if extra > 0:
            o.held -= extra
            self._budget.release(extra)

    async def _abort_one(self, o: _Output, reason: str) -> None:
        assert o.sink is not None
        try:
            await o.sink.abort()
        except Exception as e:  # its row stays open: the next start's recover undoes it
            log.error("output_abort_failed", job_id=self.job_id, container=o.container, name=o.name, error=str(e))
            return
        finally:
            self._settle(o, all_of_it=True)
        o.state = ABORTED
        if self._metrics is not None:
            self._metrics.outputs_aborted.labels(self.component).inc()
        log.info("output_aborted", job_id=self.job_id, attempt=self.attempt, component=self.component,
                 container=o.container, name=o.name, bytes=o.bytes, reason=reason)
        try:
            await self._save(o)
        except Exception as e:
            log.error("output_row_not_saved", job_id=self.job_id, container=o.container, name=o.name, error=str(e))

    async def _stop_ops(self) -> None:
        """No new operation; the ones running (a write waiting for room or for a slow sink)
        are cancelled and awaited, so nothing touches a sink after this."""
        self._closed = True
        me = asyncio.current_task()
        running = [t for t in self._inflight if t is not me and not t.done()]
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running, timeout=CANCEL_WAIT_S)

    def _row(self, o: _Output) -> dict[str, Any]:
        token = o.sink.token() if o.sink is not None else {}
        o.saved_token = token
        return {"job_id": self.job_id, "attempt": self.attempt, "seq": o.handle, "container": o.container,
                "name": o.name, "state": o.state, "token": token, "bytes": o.bytes, "version": o.version,
                "updated_at": time.time()}

    async def _save(self, *outs: _Output) -> None:
        if self._ledger is not None:
            await self._ledger.save_outputs([self._row(o) for o in outs])


class _Inflight:
    """Marks the running task as an operation of these outputs while it runs."""

    __slots__ = ("_set", "_task")

    def __init__(self, inflight: set[asyncio.Task[Any]]) -> None:
        self._set = inflight
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._set.add(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._set.discard(self._task)


class RecoveryLedger(OutputLedger, Protocol):
    async def open_outputs(self) -> list[dict[str, Any]]:
        """Every output row whose state is writing, sealed or committing."""
        ...


async def recover_outputs(ledger: RecoveryLedger, sinks: Mapping[str, "WritableContainer"], *,
                          roll_forward: "Callable[[dict[str, Any]], Awaitable[bool]] | None" = None,
                          sweep: bool = True) -> dict[str, int]:
    """At start, before unfinished jobs run again: settle what dead attempts left (each
    open row through its container's `recover`: rolled forward if it was committing,
    undone otherwise), then sweep each writable container (unless `sweep` is False).
    `roll_forward(row)`, when given, is asked for each `committing` row whether it may
    still be rolled forward (cluster mode: only while the job's record says the dead
    attempt is still its latest); when it says no the row is undone. Returns counts by
    result."""
    counts = {COMMITTED: 0, ABORTED: 0, "left": 0, "swept": 0}
    for row in await ledger.open_outputs():
        c = sinks.get(row["container"])
        where = dict(job_id=row["job_id"], attempt=row["attempt"], container=row["container"], name=row["name"])
        if c is None:
            counts["left"] += 1
            log.warning("output_recovery_skipped", **where, state=row["state"],
                        reason="the container is no longer configured as writable: settled at a later start")
            continue
        committing = row["state"] == COMMITTING
        if committing and roll_forward is not None and not await roll_forward(row):
            committing = False
            log.info("output_not_rolled_forward", **where, reason="the job moved on without this attempt")
        try:
            result = await c.recover(dict(row["token"]), job_id=row["job_id"], committing=committing)
        except ChunkdError as e:
            counts["left"] += 1
            log.error("output_recovery_failed", **where, state=row["state"], error=str(e))
            continue
        counts[result] = counts.get(result, 0) + 1
        await ledger.save_outputs([{**row, "state": result, "updated_at": time.time()}])
        log.info("output_recovered", **where, was=row["state"], result=result)
    for name, c in sinks.items() if sweep else ():
        try:
            counts["swept"] += await c.sweep()
        except ChunkdError as e:
            log.error("output_sweep_failed", container=name, error=str(e))
    return counts
