"""A batch queued behind another runs only if that one ran (a shutdown can cancel the
first before the instance thread takes it: the second must not hand over later chunks)."""
from __future__ import annotations

import asyncio
import threading

from tests.fakes import FakeRuntime, Plan, StreamPlan
from tests.waits import until


async def test_a_queued_batch_behind_a_cancelled_one_is_skipped() -> None:
    entered = threading.Event()
    gate = threading.Event()

    def on_call(n: int) -> None:  # the first call holds the instance thread
        if n == 0:
            entered.set()
            gate.wait(30)

    rt = FakeRuntime(budget=1 << 20, max_chunk_size=1 << 16, retries=0, prefetch=2,
                     plan=Plan(streams=[StreamPlan(data=b"abc", chunk_size=1)]), on_call=on_call)
    inst = rt.inst
    try:
        await inst.start()
        first = asyncio.ensure_future(inst.handle_chunks([(1, 0, 0, 3, b"a")], fresh=True))
        await until(entered.is_set, "the instance thread to be inside the first call")
        second = asyncio.ensure_future(inst.handle_chunks([(1, 0, 1, 3, b"b")], fresh=False))
        third = asyncio.ensure_future(inst.handle_chunks([(1, 0, 2, 3, b"c")], fresh=False))
        await until(lambda: inst._sent == 3, "both batches queued behind the first")
        second.cancel()  # before the thread took it: the thread is still held in the first call
        # once the task is done, its executor item is cancelled too (the cancel reaches the
        # concurrent future before the task finishes): only then may the thread go on
        await asyncio.wait({second}, timeout=30)
        assert second.cancelled()
        gate.set()
        assert (await first).outcomes[0].answer is True
        skipped = await third
        assert skipped.outcomes == [] and skipped.trap is None
        assert [c for c, _, _ in inst.seen.chunks[0]] == [0]  # chunk 2 never followed chunk 0
        again = await inst.handle_chunks([(1, 0, 1, 3, b"b")], fresh=True)  # a fresh batch runs
        assert again.outcomes[0].answer is True
    finally:
        gate.set()
        await rt.close()
