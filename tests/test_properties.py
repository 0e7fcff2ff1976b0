"""Property-based tests of the delivery core: the real JobRunner, StreamSet and
Delivery, driven by a fake in-process instance (tests/fakes.py), no wasm.

Each example draws blob sizes (0 included), chunk sizes, read units, budgets
(below a chunk too), prefetch, source faults (transient and permanent, at
random reads), guest answers (false at a random chunk, a trap at a random
call, in invoke or in stream-ended), an operator cancel or a shutdown at a
random call, and checks the invariants after the job:
  - the chunks each stream got are exact and in order (a prefix of the blob);
  - every stream ended exactly once (the guest was told at most once), and so
    did the job (a shutdown leaves it unfinished but done);
  - the budget is back to 0, every stream's ledger too, and no task is left.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkd import streamset
from chunkd.host import values
from chunkd.jobs import JobState
from tests.fakes import FakeRuntime, Plan, StreamPlan

MAX_CHUNK = 4096
EXAMPLES = int(os.environ.get("CHUNKD_HYPOTHESIS_EXAMPLES", "300"))
STAGE_TIMEOUT_S = 5.0  # each example takes milliseconds; a stage this long means a wedge


@st.composite
def stream_plans(draw: st.DrawFn) -> StreamPlan:
    size = draw(st.one_of(st.just(0), st.integers(1, 64), st.integers(1, 40_000)))
    chunk = draw(st.one_of(st.integers(1, 16), st.integers(1, MAX_CHUNK)))
    data = bytes((i * 31 + size) % 251 for i in range(size))
    return StreamPlan(
        data=data,
        chunk_size=chunk,
        known_size=draw(st.booleans()),
        read_unit=draw(st.one_of(st.just(0), st.integers(1, 64 * 1024))),
        pre_read=draw(st.integers(0, min(size, MAX_CHUNK))),
        false_at=draw(st.one_of(st.none(), st.integers(0, 12))),
        faults=draw(st.dictionaries(st.integers(0, 12), st.booleans(), max_size=3)),
        direct=draw(st.booleans()),  # known size only: read by the instance thread, batches pipelined
    )


@st.composite
def plans(draw: st.DrawFn) -> tuple[Plan, int, int, int]:
    calls = st.one_of(st.none(), st.integers(0, 40))
    plan = Plan(
        streams=draw(st.lists(stream_plans(), min_size=0, max_size=4)),
        invoke_error=draw(st.booleans().filter(lambda b: True) if draw(st.integers(0, 9)) == 0 else st.just(False)),
        trap_in_invoke=draw(st.integers(0, 19)) == 0,
        trap_at_call=draw(calls) if draw(st.integers(0, 3)) == 0 else None,
        trap_in_ended=draw(st.integers(0, 9)) == 0,
        cancel_at_call=draw(calls) if draw(st.integers(0, 5)) == 0 else None,
        shutdown_at_call=draw(calls) if draw(st.integers(0, 5)) == 0 else None,
    )
    budget = draw(st.one_of(st.integers(1, 64), st.integers(1, 3 * MAX_CHUNK), st.integers(1, 256 * 1024)))
    prefetch = draw(st.integers(1, 4))
    retries = draw(st.integers(0, 3))
    return plan, budget, prefetch, retries


@dataclass
class Result:
    rt: FakeRuntime
    job: Any
    shut_down: bool


async def run_plan(plan: Plan, budget: int, prefetch: int, retries: int) -> Result:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    holder: dict[str, Any] = {}

    def on_call(n: int) -> None:  # on the instance thread
        if n == plan.cancel_at_call:
            loop.call_soon_threadsafe(lambda: holder["rt"].runner.cancel(holder["job"].id))
        if n == plan.shutdown_at_call:
            loop.call_soon_threadsafe(shutdown.set)

    rt = FakeRuntime(budget=budget, max_chunk_size=MAX_CHUNK, retries=retries, prefetch=prefetch, plan=plan,
                     on_call=on_call)
    holder["rt"] = rt
    await rt.inst.start()
    job = rt.runner.submit("fake", [])
    holder["job"] = job
    done = asyncio.ensure_future(job.done.wait())
    stop = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait_for(asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED), STAGE_TIMEOUT_S)
        shut_down = not done.done()
        if shut_down:
            await asyncio.wait_for(rt.runner.drain(0), STAGE_TIMEOUT_S)
        await asyncio.wait_for(job.done.wait(), STAGE_TIMEOUT_S)
    finally:
        done.cancel()
        stop.cancel()
        await asyncio.gather(done, stop, return_exceptions=True)
        await asyncio.wait_for(rt.close(), STAGE_TIMEOUT_S)
    return Result(rt, job, shut_down)


def expected_chunks(sp: StreamPlan) -> tuple[list[bytes], int]:
    rest = sp.data[sp.pre_read:]
    cs = sp.chunk_size
    pieces = [rest[i:i + cs] for i in range(0, len(rest), cs)] or [b""]
    return pieces, (len(pieces) if sp.known_size else 0)


def check_invariants(plan: Plan, r: Result) -> None:
    rt, job, inst = r.rt, r.job, r.rt.inst
    seen = inst.seen
    # the job ended exactly once, or (shutdown) not at all, and its waiters woke
    assert job.done.is_set()
    if r.shut_down and job.ends == 0:
        assert job.state in (JobState.QUEUED, JobState.RUNNING)
    else:
        assert job.ends == 1 and job.state.final, (job.state, job.ends)
    # every stream the guest started ended exactly once; its budget is back
    started = [cid for cid, err in seen.started.items() if err is None]
    by_cid = {d.correlation_id: d for d in job.deliveries}
    assert sorted(by_cid) == sorted(started)
    svc = rt.services
    assert svc.streams_started == svc.streams_ended == len(job.deliveries) and svc.active_streams == 0
    for d in job.deliveries:
        assert d.outcome is not None and d.held == 0 and not d.queue
        assert d.task is None or d.task.done()
    assert rt.budget.in_use == 0
    assert all(b.closed >= 1 for b in inst.blobs[:len(started)])
    # what each stream delivered is an exact, in-order prefix of the blob
    for cid, d in by_cid.items():
        sp = plan.streams[cid]
        want, total = expected_chunks(sp)
        got = seen.chunks.get(cid, [])
        assert [c for c, _, _ in got] == list(range(len(got)))
        assert all(t == total for _, t, _ in got)
        assert [data for _, _, data in got] == want[:len(got)]
        told = seen.ended.get(cid, [])
        assert len(told) <= 1 and all(t == d.outcome for t in told)
        if d.outcome == values.COMPLETED:
            assert len(got) == len(want)
        if sp.false_at is not None and len(got) > sp.false_at:
            # nothing after the false; it is the end unless a shutdown overtook the answer
            # (the batch's result was on its way back when the drain cancelled the job)
            assert len(got) == sp.false_at + 1
            assert d.outcome == values.CANCELLED or (r.shut_down and "shutting down" in str(d.outcome)), d.outcome
    # the outcome follows the rules
    if job.ends:
        undisturbed = not (plan.trap_in_invoke or plan.trap_in_ended or inst.broken or job.cancel_requested)
        if undisturbed and not plan.invoke_error:
            everything = all(d.outcome == values.COMPLETED for d in job.deliveries)
            assert (job.state == JobState.COMPLETED) == everything, (job.state, job.error)
        if undisturbed:  # a healthy guest hears every end exactly once
            assert all(len(seen.ended.get(cid, [])) == 1 for cid in by_cid)
        if plan.invoke_error and not plan.trap_in_invoke:
            assert job.state == JobState.FAILED or job.cancel_requested
            assert all(d.outcome == values.CANCELLED for d in job.deliveries) or inst.broken
        if inst.broken:
            assert job.state in (JobState.FAILED, JobState.CANCELLED) and rt.pool.given_back == [inst]
    # no task is left behind
    assert not rt.runner._scope.tasks and not rt.background.tasks


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plans(), st.sampled_from([1, 2, 5, 13, 64, 256]))
def test_delivery_core_invariants(drawn: tuple[Plan, int, int, int], direct_batch: int) -> None:
    """`direct_batch`: the most chunks a batch of direct runs holds, so the batch edges
    (where a queued batch meets a stream the one before it stopped) fall everywhere."""
    plan, budget, prefetch, retries = drawn

    async def main() -> None:
        r = await run_plan(plan, budget, prefetch, retries)
        check_invariants(plan, r)
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, left

    with mock.patch.object(streamset, "DIRECT_BATCH_CHUNKS", direct_batch):
        asyncio.run(main())
