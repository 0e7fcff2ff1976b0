"""The stream table (chunkd/host/streamtable.py): the one state besides the run's inbox
that an instance thread and the event loop both change.

Pure logic first, with a counting fake blob: hypothesis draws sequences of the guest's
side (open, start-chunking-read, read, handle drop) and the loop's (a stream's end,
the instance's close), checked against a model after every step; then the same
operations really run from two threads at once, a guest thread and a loop thread, with
the drops racing the ends. Then the real parts: the JobRunner, StreamSet and Delivery
with the fake instance of tests/fakes.py, whose instance thread drops handles while
the loop ends their streams. Every run checks at the end: the table is empty, every
blob was closed exactly once, and the active correlation-ids are exactly those started
and not ended.
"""
from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chunkd.host import values
from chunkd.host.streamtable import Admit, HostStream, StreamTable, TableClosed
from tests.fakes import FakeRuntime, Plan
from tests.test_properties import MAX_CHUNK, STAGE_TIMEOUT_S, stream_plans

THREAD_TIMEOUT_S = 20.0  # one example takes milliseconds; this long means a wedge


class CountingBlob:
    """A blob that only counts its closes (from any thread)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int | None:
        return 0

    async def read_at(self, offset: int, length: int) -> bytes:
        return b""

    def close_now(self) -> None:
        with self._lock:
            self.closes += 1

    async def close(self) -> None:
        self.close_now()


def release(s: HostStream) -> None:
    """What the daemon does with a stream the table hands back: close its blob."""
    blob = s.blob
    assert isinstance(blob, CountingBlob)
    blob.close_now()


def accept(s: HostStream) -> values.StreamErr | None:
    return None


def refuse(s: HostStream) -> values.StreamErr | None:
    return values.err_failed("pending stream queue is full")


@dataclass
class Model:
    """What the table should hold, per the rules (docs/wit-and-delivery.md)."""

    table: StreamTable = field(default_factory=StreamTable)
    blobs: list[CountingBlob] = field(default_factory=list)
    opened: list[HostStream] = field(default_factory=list)
    deliveries: list[HostStream] = field(default_factory=list)  # started streams, the loop's to end
    ended: set[int] = field(default_factory=set)  # handles of the streams whose end the loop decided
    closed: bool = False

    def open(self) -> None:
        blob = CountingBlob(len(self.blobs))
        self.blobs.append(blob)
        try:
            self.opened.append(self.table.open("c", f"b{blob.n}", blob))
            assert not self.closed
        except TableClosed as e:
            assert self.closed and e.stream.blob is blob
            release(e.stream)

    def start(self, i: int, cid: int, admit_ok: bool) -> None:
        if not self.opened:
            return
        s = self.opened[i % len(self.opened)]
        expected: values.StreamErr | None
        if not self.present(s) or s.chunking:
            expected = values.err_closed()
        elif cid in self.active():
            expected = values.err_invalid(f"correlation-id {cid} is already active in this instance")
        elif not admit_ok:
            expected = refuse(s)
        else:
            expected = None
        assert self.table.start(s.handle, cid, None, accept if admit_ok else refuse) == expected
        if expected is None:
            assert s.chunking and s.correlation_id == cid
            self.deliveries.append(s)

    def drop(self, i: int) -> None:
        if not self.opened:
            return
        s = self.opened[i % len(self.opened)]
        was_held = self.present(s)
        got = self.table.drop(s.handle)
        if got is not None:  # released: held, never chunked
            assert got is s and was_held and not s.chunking
            release(got)
        else:
            assert not was_held or s.chunking

    def end(self, j: int) -> None:
        """The loop decides one started stream's end (StreamSet._close), then its Delivery
        closes the blob; a second end of the same stream changes nothing."""
        if not self.deliveries:
            return
        s = self.deliveries[j % len(self.deliveries)]
        self.table.end(s)
        if s.handle not in self.ended:
            self.ended.add(s.handle)
            release(s)  # Delivery.close_blob

    def close(self) -> None:
        self.closed = True
        for s in self.table.close():
            assert not s.chunking
            release(s)

    def read(self, i: int) -> None:
        if not self.opened:
            return
        s = self.opened[i % len(self.opened)]
        got = self.table.readable(s.handle)
        assert (got is s) == (self.present(s) and not s.chunking)

    def active(self) -> set[int]:
        return {s.correlation_id for s in self.deliveries if s.handle not in self.ended}  # type: ignore[misc]

    def present(self, s: HostStream) -> bool:
        """Held by the table: opened before the close, and not (dropped, and either never
        chunked or chunked and ended)."""
        return not self.closed and not (s.handle_dropped and (not s.chunking or s.ended))

    def check(self) -> None:
        assert self.table.active == self.active()
        assert sorted(self.table.handles()) == sorted(s.handle for s in self.opened if self.present(s))

    def finish(self, close: bool) -> None:
        """The job's end and the guest's: every open stream ended (StreamSet._end_all),
        every handle dropped (or the instance closed)."""
        for j in range(len(self.deliveries)):
            self.end(j)
        if close:
            self.close()
        else:
            for i in range(len(self.opened)):
                self.drop(i)
        self.check()
        assert len(self.table) == 0 and self.table.active == frozenset()
        assert [b.closes for b in self.blobs] == [1] * len(self.blobs)


# operation, index (of a stream opened / started), correlation-id (few: they collide), admitted
KINDS = ["open"] * 3 + ["start"] * 3 + ["drop"] * 2 + ["end"] * 2 + ["read", "close"]
OPS = st.tuples(st.sampled_from(KINDS), st.integers(0, 30), st.integers(0, 5), st.integers(0, 5).map(lambda n: n > 0))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(OPS, max_size=60), st.booleans())
def test_interleavings_keep_the_rules(ops: list[tuple[str, int, int, bool]], close_at_end: bool) -> None:
    """Any order of the guest's and the loop's operations, one at a time, each checked
    against the model; a close (rare) may come anywhere."""
    m = Model()
    for kind, i, cid, admitted in ops:
        if kind == "open":
            m.open()
        elif kind == "start":
            m.start(i, cid, admitted)
        elif kind == "drop":
            m.drop(i)
        elif kind == "end":
            m.end(i)
        elif kind == "read":
            m.read(i)
        else:
            m.close()
        m.check()
    m.finish(close_at_end)


def test_drop_and_end_in_either_order_remove_a_chunked_stream() -> None:
    for drop_first in (True, False):
        m = Model()
        m.open()
        m.start(0, 7, True)
        if drop_first:
            m.drop(0)
            assert len(m.table) == 1  # dropping does not cancel: still being chunked
            m.end(0)
        else:
            m.end(0)
            assert len(m.table) == 1 and m.table.readable(m.opened[0].handle) is None  # the guest still holds it
            m.drop(0)
        m.check()
        assert len(m.table) == 0 and m.table.active == frozenset()
        assert m.blobs[0].closes == 1


def test_a_correlation_id_is_free_again_once_its_stream_ended() -> None:
    t = StreamTable()
    a, b = t.open("c", "a", CountingBlob(0)), t.open("c", "b", CountingBlob(1))
    assert t.start(a.handle, 3, None, accept) is None
    assert t.start(b.handle, 3, None, accept) == values.err_invalid("correlation-id 3 is already active in this instance")
    assert t.start(a.handle, 4, None, accept) == values.err_closed()  # already being chunked
    bad = values.err_invalid("chunk-size 0 must be between 1 and max-chunk-size 8")
    assert t.start(b.handle, 3, bad, accept) == bad  # the chunk size is checked before the id
    t.end(a)
    assert t.active == frozenset() and t.start(b.handle, 3, None, accept) is None and t.active == {3}


@pytest.fixture
def fast_switches() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so the two sides interleave
    within the table's methods if anything in them is not under its lock."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@st.composite
def two_sided_scripts(draw: st.DrawFn) -> tuple[list[tuple[str, int]], set[int], int | None]:
    """The guest's script (open each stream, then start some and drop every handle, in a
    drawn order), the streams the loop ends (the rest end after both threads), and when
    the loop closes the instance (after that many ends), if it does."""
    n = draw(st.integers(1, 40))
    starts = draw(st.sets(st.integers(0, n - 1)))
    events = [("start", k) for k in starts] + [("drop", k) for k in range(n)]
    script = [("open", k) for k in range(n)] + draw(st.permutations(events))
    ends = draw(st.sets(st.integers(0, n - 1)))
    close_after = draw(st.one_of(st.none(), st.integers(0, n)))
    return script, ends, close_after


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(two_sided_scripts())
def test_two_threads_leave_an_empty_table(fast_switches: None,
                                          drawn: tuple[list[tuple[str, int]], set[int], int | None]) -> None:
    """A guest thread opens, starts and drops while a loop thread ends the streams it was
    handed (and maybe closes the instance): the drops race the ends."""
    script, ends, close_after = drawn
    table = StreamTable()
    blobs: dict[int, CountingBlob] = {}
    handles: dict[int, int] = {}
    # the RunInbox's part: started streams to the loop, with their correlation-ids (a
    # StreamRequest's): the loop reads no flag of a HostStream
    requests: queue.Queue[tuple[HostStream, int]] = queue.Queue()
    guest_done = threading.Event()
    left: list[tuple[HostStream, int]] = []  # started streams the loop left for after both threads
    ended: set[int] = set()
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def admit_as(k: int) -> Admit:
        def admit(s: HostStream) -> values.StreamErr | None:
            requests.put((s, k))
            return None
        return admit

    def guest() -> None:
        try:
            go.wait(THREAD_TIMEOUT_S)
            for op, k in script:
                if op == "open":
                    blobs[k] = CountingBlob(k)
                    try:
                        handles[k] = table.open("c", f"b{k}", blobs[k]).handle
                    except TableClosed as e:
                        release(e.stream)
                elif op == "start" and k in handles:
                    table.start(handles[k], k, None, admit_as(k))
                elif op == "drop" and k in handles:
                    got = table.drop(handles[k])
                    if got is not None:
                        assert not got.chunking
                        release(got)
        except BaseException as e:  # reported by the test's thread
            errors.append(e)
        finally:
            guest_done.set()

    def loop() -> None:
        try:
            go.wait(THREAD_TIMEOUT_S)
            deadline = time.monotonic() + THREAD_TIMEOUT_S
            n_ended = 0
            while time.monotonic() < deadline:
                if close_after is not None and n_ended == close_after:
                    for s in table.close():
                        assert not s.chunking
                        release(s)
                    n_ended += 1  # closed once
                try:
                    s, cid = requests.get(timeout=0.001)
                except queue.Empty:
                    if guest_done.is_set() and requests.empty():
                        return
                    continue
                if cid in ends:
                    table.end(s)
                    ended.add(cid)
                    release(s)  # Delivery.close_blob
                    n_ended += 1
                else:
                    left.append((s, cid))
            raise AssertionError("the loop thread did not finish")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=guest), threading.Thread(target=loop)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    started = {cid for _, cid in left} | ended
    assert table.active == started - ended  # exactly the started and not ended
    for s, _ in left:  # the StreamSet ends the rest (_end_all)
        table.end(s)
        release(s)
    assert len(table) == 0, table.handles()
    assert table.active == frozenset()
    assert {k: b.closes for k, b in blobs.items()} == {k: 1 for k in blobs}


# --- the real parts: JobRunner, StreamSet, Delivery, the fake instance's thread -----------------

@dataclass
class RealRun:
    rt: FakeRuntime
    dropped_during: set[int]


async def run_with_drops(plan: Plan, drop_at: dict[int, int]) -> RealRun:
    """Runs the plan's job; the guest drops the handle of stream `cid` on its own thread
    when the `drop_at[cid]`-th handle-chunk call is made (ends race those drops)."""
    dropped: set[int] = set()
    holder: dict[str, FakeRuntime] = {}

    def on_call(n: int) -> None:  # on the instance thread
        inst = holder["rt"].inst
        for h in inst.streams.handles():
            s = inst.streams.get(h)
            if s is not None and s.correlation_id is not None and drop_at.get(s.correlation_id) == n:
                inst.host_drop(h)
                dropped.add(s.correlation_id)

    rt = FakeRuntime(budget=1 << 20, max_chunk_size=MAX_CHUNK, retries=1, prefetch=2, plan=plan, on_call=on_call)
    holder["rt"] = rt
    try:
        await rt.inst.start()
        job = rt.runner.submit("fake", [])
        await asyncio.wait_for(job.done.wait(), STAGE_TIMEOUT_S)
        inst = rt.inst
        # the job is over: every started stream ended, so only the handles the guest still
        # holds are left, and no correlation-id is active
        assert inst.streams.active == frozenset()
        held = {inst.streams.get(h).correlation_id for h in inst.streams.handles()}  # type: ignore[union-attr]
        assert held == set(range(len(plan.streams))) - dropped
        return RealRun(rt, set(dropped))
    finally:
        await asyncio.wait_for(rt.close(), STAGE_TIMEOUT_S)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(stream_plans(), min_size=1, max_size=4).flatmap(
    lambda sps: st.tuples(st.just(sps), st.dictionaries(st.integers(0, len(sps) - 1), st.integers(0, 12)))),
    st.integers(0, 9).map(lambda n: n == 0))
def test_guest_drops_racing_ends_on_the_real_path(drawn: tuple[list[Any], dict[int, int]], trap: bool) -> None:
    sps, drop_at = drawn
    plan = Plan(streams=sps, trap_at_call=3 if trap else None)
    r = asyncio.run(run_with_drops(plan, drop_at))
    inst = r.rt.inst
    assert len(inst.streams) == 0 and inst.streams.active == frozenset()  # closed: nothing left behind
    assert [b.closed for b in inst.blobs] == [1] * len(plan.streams)
