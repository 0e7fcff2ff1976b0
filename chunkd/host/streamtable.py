"""The stream table of one instance: the one owner of its streams and active correlation-ids.

Both sides change it: the instance thread (the host imports: open, start-chunking-read,
drop) and the event loop (a StreamSet ending a chunked read, InstanceBase.close). So
every change is one method of StreamTable, and each method is one critical section
under the table's one lock: a check and the act it decides are never split, whichever
thread calls. A method that decides a blob must be released returns that stream to its
caller, and returns it once: the caller closes the blob (the table never awaits).

The rules it keeps (docs/wit-and-delivery.md, "Delivery rules"):
  - a correlation-id is active from a successful start-chunking-read until its stream
    ends (`end`, called by the StreamSet when it decides the end, before telling it);
  - a stream being chunked outlives the guest's handle drop: dropping does not cancel;
    its blob is its Delivery's to close;
  - a stream not being chunked is released when its handle is dropped (`drop` returns it);
  - a chunked stream that ended is removed once the handle is dropped too, in either order;
  - `close` releases what the guest still held and was not chunked (returned once each),
    and refuses every later open (the opener releases that blob).

HostStream's flags (chunking, handle_dropped, ended, correlation_id) are written only
here, under the lock. `position` is the instance thread's alone (read and advanced by
host_read, read by start-chunking-read, both on that thread); the rest is immutable.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from chunkd.host import values

if TYPE_CHECKING:
    from chunkd.sources.base import Blob


@dataclass(eq=False)
class HostStream:
    """An input-stream resource as the host keeps it (rep = handle)."""

    handle: int
    container: str
    name: str
    blob: "Blob"
    position: int = 0  # the instance thread's alone
    # written by StreamTable only, under its lock
    chunking: bool = False
    handle_dropped: bool = False
    ended: bool = False
    correlation_id: int | None = None  # set when chunking starts


class TableClosed(Exception):
    """An open after the table closed (the instance is closing): `stream` was not kept,
    its blob is the opener's to release."""

    def __init__(self, stream: HostStream) -> None:
        super().__init__(f"stream table closed: {stream.container}/{stream.name} not kept")
        self.stream = stream


# what a start-chunking-read checks last and commits outside the table (the daemon-wide
# pending count, the request to the loop): None when admitted and committed, else the error
Admit = Callable[[HostStream], "values.StreamErr | None"]


class StreamTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[int, HostStream] = {}
        self._active: set[int] = set()
        self._next_handle = 1
        self._closed = False

    # --- reads -----------------------------------------------------------------------

    def get(self, handle: int) -> HostStream | None:
        with self._lock:
            return self._streams.get(handle)

    def readable(self, handle: int) -> HostStream | None:
        """The stream behind `handle` if `read` may use it: held and not being chunked."""
        with self._lock:
            s = self._streams.get(handle)
            return None if s is None or s.chunking else s

    @property
    def active(self) -> frozenset[int]:
        """The active correlation-ids."""
        with self._lock:
            return frozenset(self._active)

    def handles(self) -> list[int]:
        with self._lock:
            return list(self._streams)

    def __len__(self) -> int:
        with self._lock:
            return len(self._streams)

    # --- instance thread ------------------------------------------------------------

    def open(self, container: str, name: str, blob: "Blob") -> HostStream:
        """A new stream with a fresh handle. Raises TableClosed after `close`."""
        with self._lock:
            s = HostStream(self._next_handle, container, name, blob)
            if self._closed:
                raise TableClosed(s)
            self._next_handle += 1
            self._streams[s.handle] = s
            return s

    def start(self, handle: int, correlation_id: int, invalid: values.StreamErr | None,
              admit: Admit) -> values.StreamErr | None:
        """start-chunking-read, its errors in the documented order: not held or already
        being chunked (an ended stream was chunked) → closed; `invalid` (the chunk size,
        checked by the caller); the correlation-id active → invalid-argument; then
        `admit`, called under the lock, which commits its own part when it returns None.
        None on success: the stream is being chunked and its correlation-id active."""
        with self._lock:
            s = self._streams.get(handle)
            if s is None or s.chunking:
                return values.err_closed()
            if invalid is not None:
                return invalid
            if correlation_id in self._active:
                return values.err_invalid(f"correlation-id {correlation_id} is already active in this instance")
            err = admit(s)
            if err is not None:
                return err
            s.chunking = True
            s.correlation_id = correlation_id
            self._active.add(correlation_id)
            return None

    def drop(self, handle: int) -> HostStream | None:
        """The guest dropped its handle. Returns the stream whose blob the caller must
        release (it was not being chunked), else None: a chunked stream stays until it
        ends (or leaves now if it already has; its Delivery closed the blob)."""
        with self._lock:
            s = self._streams.get(handle)
            if s is None:
                return None
            s.handle_dropped = True
            if s.chunking and not s.ended:
                return None
            del self._streams[handle]
            return None if s.chunking else s

    # --- event loop ---------------------------------------------------------------------

    def end(self, s: HostStream) -> None:
        """A chunked stream ended (the StreamSet decided its end): its correlation-id is
        free again, and the stream leaves the table if the guest dropped its handle too
        (else when it does). Its blob is its Delivery's to close. Once per stream: a
        second call changes nothing."""
        with self._lock:
            if s.ended or not s.chunking:
                return
            s.ended = True
            if s.correlation_id is not None:
                self._active.discard(s.correlation_id)
            if s.handle_dropped and self._streams.get(s.handle) is s:
                del self._streams[s.handle]

    def close(self) -> list[HostStream]:
        """The instance closes: empties the table and refuses later opens. Returns the
        streams whose blob the caller must release (held and never chunked), each once
        over every call of drop and close. Chunked streams are their Deliveries' to close,
        and still `end` (their correlation-ids stay active until then)."""
        with self._lock:
            self._closed = True
            held = [s for s in self._streams.values() if not s.chunking]
            self._streams.clear()
            return held
