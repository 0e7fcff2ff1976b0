"""Outputs to an `azure` container: a block blob, staged block by block, committed at commit.

The sink holds at most one part (`part_size`, >= 5 MiB; Azure's largest block,
4000 MiB, caps it) in memory. Every full part is a Put Block
(`PUT <blob>?comp=block&blockid=...`) on the output's final name, uploaded
before `write` returns; `seal` stages the last (short) one and `commit` is Put
Block List, which makes exactly those blocks the blob. Staged blocks are
invisible until then: the name shows nothing (a blob that was there stays as
it was). An output smaller than one part stages nothing: it is one Put Blob at
commit. Both paths set the metadata `chunkdjob: <job id>` and `chunkdattempt:
<attempt>` (Azure metadata names are C# identifiers: no `-`, so not s3's
`chunkd-job`); that is how `recover` and a retried commit tell this job's blob.

Block ids: base64 of `<prefix><n:06d>`, the prefix 12 hex digits of a hash
of (job id, attempt, 8 random bytes), so every block id of a blob has the same
length (Azure requires it) and the blocks of this sink are told from any other
writer's by their prefix. The token carries the prefix; it never changes
after `create` (unlike s3's, which learns its upload id at the first part).

overwrite = true: Get Blob Properties at create; a blob whose `chunkdjob` is
this job's raises SinkConflict(by_this_job=True): an earlier attempt committed it.
overwrite = false: Get Blob Properties at create and again right before the
commit (a clear error early), and `If-None-Match: *` on the Put Blob / Put
Block List itself, which closes the race: Azurite 3.37 honours it (409
BlobAlreadyExists; tested, also without the pre-check), as Azure documents it.
One Azurite quirk: its Put Blob with `If-None-Match: *` also refuses a name that
only has uncommitted blocks (an aborted attempt's), where no blob is visible;
the sink then stages the small output as one block and commits that with Put
Block List, whose condition looks at the committed blob only.

abort: Azure has no request that removes uncommitted blocks. They are
invisible to every reader and listing (except List Blobs with
`include=uncommittedblobs`), and the service discards them when the blob is
next committed, or after a week. So `abort` drops the buffer and records the
state: for azure, "nothing partial left" means no visible blob; the staged
blocks are Azure's garbage to collect. Likewise `sweep` has nothing to do (0).

Concurrent writers of one name: a commit of the name (by anyone) discards
every uncommitted block of it, another sink's too. That sink's Put Block List
then fails with 400 InvalidBlockList and its output fails (with overwrite =
false: SinkConflict, the name exists now). Its data is not in memory any more,
so it cannot be retried; the job runs again.

Every request goes through the source container's session and signing
(chunkd/sources/azure.py: Shared Key or SAS), is bounded by its deadline
(`timeout + bytes / min_rate`), and transient failures (408/429/5xx,
connection errors, a request past its deadline) are retried 3 times with
jittered backoff; a block is re-sent whole (with the same id: it replaces
itself). Errors name `container/name` and the request, never a key, a
signature or a SAS (no URL is ever in a message).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote, unquote

import aiohttp
from multidict import CIMultiDict

from chunkd.errors import NameRefused, SourceError
from chunkd.sinks.base import ABORTED, COMMITTED, SinkConflict, SinkError
from chunkd.sources.azure import AzureContainer
from chunkd.sources.rest import TRANSIENT_STATUS, error_code

JOB_META = "chunkdjob"
ATTEMPT_META = "chunkdattempt"
RETRIES = 3  # transient failures of one request retried this many times
BACKOFF_S = 0.1
MAX_BLOCK = 4000 * 1024 * 1024  # Azure's largest block (API 2019-12-12 and later)
MAX_BLOCKS = 50_000  # committed blocks in one blob
PREFIX_LEN = 12
NUMBER_LEN = 6  # 12 + 6 = 18 bytes: 24 base64 characters, no padding
_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes
    code: str  # x-ms-error-code, "" when there is none


def block_id(prefix: str, number: int) -> str:
    return base64.b64encode(f"{prefix}{number:0{NUMBER_LEN}d}".encode()).decode()


def parse_block_id(bid: str) -> tuple[str, int] | None:
    """(prefix, number) of one of chunkd's block ids, None for anything else."""
    try:
        raw = base64.b64decode(bid, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    num = raw[PREFIX_LEN:]
    if len(raw) != PREFIX_LEN + NUMBER_LEN or not num.isdigit():
        return None
    return raw[:PREFIX_LEN], int(num)


def block_list_xml(ids: list[str]) -> bytes:
    return ('<?xml version="1.0" encoding="utf-8"?><BlockList>'
            + "".join(f"<Latest>{i}</Latest>" for i in ids) + "</BlockList>").encode()


def _meta(h: Mapping[str, str] | None, name: str) -> str | None:
    if h is None:
        return None
    v = h.get(f"x-ms-meta-{name}")
    return unquote(v) if v is not None else None


class AzureSinkContainer:
    kind = "azure"

    def __init__(self, name: str, source: AzureContainer, *, part_size: int) -> None:
        self.name = name
        self.source = source
        self.part_size = min(part_size, MAX_BLOCK)

    def key_for(self, name: str) -> str:
        try:
            return self.source.key_for(name)
        except NameRefused as e:
            raise SinkError(f"{self.name}/{name}: the name escapes the container or is not allowed: {e}") from None

    def url(self, key: str, query: str = "") -> str:
        try:
            u = self.source.object_url(key)
        except SourceError as e:
            raise SinkError(str(e)) from None
        return f"{u}?{query}" if query else u

    async def request(self, what: str, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      data: bytes | bytearray | None = None) -> Answer:
        """One request, bounded by the container's deadline for its size, transient failures
        (408/429/5xx, connection errors, past the deadline) retried; any other answer is
        returned for the caller to judge."""
        nbytes = len(data) if data is not None else 0
        deadline = self.source.bounds.deadline_s(nbytes)
        for attempt in range(RETRIES + 1):
            last = attempt == RETRIES
            try:
                ans = await asyncio.wait_for(self._once(method, url, headers, data), timeout=deadline)
                if ans.status not in TRANSIENT_STATUS:
                    return ans
                if last:
                    raise SinkError(f"{what}: HTTP {ans.status}{f' {ans.code}' if ans.code else ''} "
                                    f"(after {RETRIES} retries)")
            except asyncio.TimeoutError:
                if last:
                    raise SinkError(f"{what}: no answer within {deadline:.3g}s (after {RETRIES} retries)") from None
            except _ERRORS as e:
                if last:
                    raise SinkError(f"{what}: {type(e).__name__}: {e} (after {RETRIES} retries)") from None
            await asyncio.sleep(BACKOFF_S * (2 ** attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def _once(self, method: str, url: str, headers: Mapping[str, str] | None,
                    data: bytes | bytearray | None) -> Answer:
        resp = await self.source.send(method, url, headers, data)
        try:
            body = await resp.read() if method != "HEAD" else b""
            return Answer(resp.status, CIMultiDict(resp.headers), body, error_code(resp))
        finally:
            resp.release()

    @staticmethod
    def failed(what: str, ans: Answer) -> SinkError:
        return SinkError(f"{what}: HTTP {ans.status}{f' {ans.code}' if ans.code else ''}")

    async def properties(self, label: str, key: str) -> Mapping[str, str] | None:
        """Get Blob Properties: the headers, or None when there is no such (committed) blob."""
        ans = await self.request(f"{label}: Get Blob Properties", "HEAD", self.url(key))
        if ans.status == 404:
            return None
        if ans.status != 200:
            raise self.failed(f"{label}: Get Blob Properties", ans)
        return ans.headers

    async def check_absent(self, label: str, key: str, job_id: str) -> None:
        h = await self.properties(label, key)
        if h is not None:
            raise SinkConflict(f"{label}: exists already and the container has overwrite = false",
                               by_this_job=_meta(h, JOB_META) == job_id)

    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> "AzureSink":
        key = self.key_for(name)
        label = f"{self.name}/{name}"
        self.url(key)  # refuses a container without a container_name now, not at the first block
        if not overwrite:
            await self.check_absent(label, key, job_id)
        else:  # a blob an earlier attempt of this job committed is not written twice
            h = await self.properties(label, key)
            if _meta(h, JOB_META) == job_id:
                raise SinkConflict(f"{label}: committed already by an earlier attempt of this job",
                                   by_this_job=True)
        prefix = hashlib.sha256(f"{job_id}\0{attempt}\0".encode() + os.urandom(8)).hexdigest()[:PREFIX_LEN]
        return AzureSink(self, name, key, job_id=job_id, attempt=attempt, overwrite=overwrite, prefix=prefix)

    def commit_headers(self, job_id: str, attempt: str, overwrite: bool) -> dict[str, str]:
        h = {f"x-ms-meta-{JOB_META}": quote(job_id, safe=""), f"x-ms-meta-{ATTEMPT_META}": quote(attempt, safe="")}
        if not overwrite:
            h["If-None-Match"] = "*"
        return h

    async def put_block_list(self, label: str, key: str, ids: list[str], *, job_id: str, attempt: str,
                             overwrite: bool) -> str | None:
        """Put Block List (If-None-Match: * unless overwrite): the blob's ETag. SinkConflict
        when the name exists and overwrite = false; a retry whose first try went through
        (the blob carries this attempt's metadata) counts as done."""
        what = f"{label}: Put Block List"
        headers = self.commit_headers(job_id, attempt, overwrite)
        headers["Content-Type"] = "application/xml"
        ans = await self.request(what, "PUT", self.url(key, "comp=blocklist"), headers=headers,
                                 data=block_list_xml(ids))
        if ans.status == 201:
            return ans.headers.get("ETag")
        if ans.status in (409, 412) or (ans.status == 400 and ans.code == "InvalidBlockList"):
            h = await self.properties(label, key)
            if h is not None and _meta(h, JOB_META) == job_id and _meta(h, ATTEMPT_META) == attempt:
                return h.get("ETag")  # a retried Put Block List whose first try went through
            if h is not None and (ans.status in (409, 412) or not overwrite):
                raise SinkConflict(f"{label}: was created meanwhile and the container has overwrite = false",
                                   by_this_job=_meta(h, JOB_META) == job_id)
            if ans.status == 400:
                raise SinkError(f"{what}: HTTP 400 InvalidBlockList: the staged blocks are gone (another "
                                f"writer committed this name meanwhile, or they expired)")
        raise self.failed(what, ans)

    async def uncommitted(self, label: str, key: str, prefix: str) -> list[str] | None:
        """The ids of this prefix's staged blocks numbered 1..n, in order; None when they
        are not all there (none, or a gap)."""
        what = f"{label}: Get Block List"
        ans = await self.request(what, "GET", self.url(key, "comp=blocklist&blocklisttype=uncommitted"))
        if ans.status == 404:
            return None
        if ans.status != 200:
            raise self.failed(what, ans)
        try:
            root = ET.fromstring(ans.body)
        except ET.ParseError:
            raise SinkError(f"{what}: the answer is not XML") from None
        found: dict[int, str] = {}
        for el in root.iterfind("./UncommittedBlocks/Block/Name"):
            parsed = parse_block_id(el.text or "")
            if parsed is not None and parsed[0] == prefix:
                found[parsed[1]] = el.text or ""
        n = len(found)
        if n == 0 or sorted(found) != list(range(1, n + 1)):
            return None
        return [found[i] for i in range(1, n + 1)]

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        if token.get("kind") != "azure" or "key" not in token or "name" not in token:
            raise SinkError(f"{self.name}: not an azure output token: {sorted(token)}")
        name, key = token["name"], token["key"]
        label = f"{self.name}/{name}"
        if self.key_for(name) != key:
            raise SinkError(f"{label}: the token's key {key!r} is not this container's key for {name!r}")
        h = await self.properties(label, key)
        if _meta(h, JOB_META) == job_id:
            return COMMITTED
        prefix = token.get("prefix", "")
        if committing and len(prefix) == PREFIX_LEN:
            ids = await self.uncommitted(label, key, prefix)
            if ids:  # every block was staged before the job reached its commit
                try:
                    await self.put_block_list(label, key, ids, job_id=job_id, attempt=token.get("attempt", ""),
                                              overwrite=token.get("overwrite", "1") != "0")
                    return COMMITTED
                except SinkConflict:
                    return ABORTED  # another writer's blob stands; the staged blocks are discarded
        return ABORTED  # staged blocks are invisible; Azure discards them

    async def sweep(self) -> int:
        return 0  # uncommitted blocks are invisible and discarded by Azure itself


class AzureSink:
    def __init__(self, c: AzureSinkContainer, name: str, key: str, *, job_id: str, attempt: int,
                 overwrite: bool, prefix: str) -> None:
        self.container = c.name
        self.name = name
        self.key = key
        self.prefix = prefix
        self._c = c
        self._label = f"{c.name}/{name}"
        self._job_id = job_id
        self._attempt = attempt
        self._overwrite = overwrite
        self._buf = bytearray()
        self._blocks: list[str] = []
        self._written = 0
        self._state = "writing"  # writing, sealed, committed, aborted
        self._lock = asyncio.Lock()
        self.etag: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def written(self) -> int:
        return self._written

    @property
    def state(self) -> str:
        return self._state

    @property
    def blocks(self) -> int:
        """Blocks staged so far."""
        return len(self._blocks)

    async def _put_block(self) -> None:
        number = len(self._blocks) + 1
        what = f"{self._label}: Put Block {number}"
        if number > MAX_BLOCKS:
            raise SinkError(f"{what}: a blob has at most {MAX_BLOCKS} blocks (raise part_size)")
        bid = block_id(self.prefix, number)
        body = self._buf
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        ans = await self._c.request(what, "PUT", self._c.url(self.key, f"comp=block&blockid={quote(bid, safe='')}"),
                                    headers={"Content-MD5": md5}, data=body)
        if ans.status != 201:
            raise self._c.failed(what, ans)
        self._blocks.append(bid)
        self._buf = bytearray()

    async def write(self, data: bytes) -> None:
        async with self._lock:
            if self._state != "writing":
                raise SinkError(f"{self._label}: write after the output was {self._state}")
            view = memoryview(data)
            size = self._c.part_size
            while view:
                room = size - len(self._buf)
                self._buf += view[:room]
                self._written += min(room, len(view))
                view = view[room:]
                if len(self._buf) >= size:
                    await self._put_block()

    async def seal(self) -> None:
        async with self._lock:
            if self._state == "sealed":
                return
            if self._state != "writing":
                raise SinkError(f"{self._label}: seal after the output was {self._state}")
            if self._blocks and self._buf:
                await self._put_block()  # the last block may be short
            self._state = "sealed"  # without a block: one Put Blob at commit

    async def commit(self) -> str | None:
        if self._state == "writing":
            await self.seal()
        async with self._lock:
            if self._state == "committed":
                return self.etag
            if self._state != "sealed":
                raise SinkError(f"{self._label}: commit after the output was {self._state}")
            try:
                if not self._overwrite:  # early and clear; If-None-Match: * on the write closes the race
                    await self._c.check_absent(self._label, self.key, self._job_id)
                if self._blocks:
                    self.etag = await self._c.put_block_list(self._label, self.key, self._blocks,
                                                             job_id=self._job_id, attempt=str(self._attempt),
                                                             overwrite=self._overwrite)
                else:
                    self.etag = await self._put_blob()
            except SinkConflict:
                self._drop("aborted")
                raise
            self._drop("committed")
            return self.etag

    async def _put_blob(self) -> str | None:
        what = f"{self._label}: Put Blob"
        body = self._buf
        headers = self._c.commit_headers(self._job_id, str(self._attempt), self._overwrite)
        headers["x-ms-blob-type"] = "BlockBlob"
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
        ans = await self._c.request(what, "PUT", self._c.url(self.key), headers=headers, data=body)
        if ans.status == 201:
            return ans.headers.get("ETag")
        if ans.status in (409, 412):
            h = await self._c.properties(self._label, self.key)
            if (h is not None and _meta(h, JOB_META) == self._job_id
                    and _meta(h, ATTEMPT_META) == str(self._attempt)
                    and h.get("Content-Length") == str(len(body))):
                return h.get("ETag")  # a retried Put Blob whose first try went through
            if h is not None:
                raise SinkConflict(f"{self._label}: was created meanwhile and the container has overwrite = false",
                                   by_this_job=_meta(h, JOB_META) == self._job_id)
            # No committed blob: the name only has uncommitted blocks (an earlier attempt's), which
            # Azurite counts as a blob for If-None-Match. Put Block List judges the committed blob
            # only: stage the bytes as one block and commit that instead.
            if body:
                await self._put_block()
            return await self._c.put_block_list(self._label, self.key, self._blocks, job_id=self._job_id,
                                                attempt=str(self._attempt), overwrite=self._overwrite)
        raise self._c.failed(what, ans)

    def _drop(self, state: str) -> None:
        self._buf = bytearray()
        self._blocks = []
        self._state = state

    async def abort(self) -> None:
        """Nothing is visible until the commit: drop the buffer and the staged block ids
        (Azure discards uncommitted blocks itself; there is no request that removes them)."""
        async with self._lock:
            if self._state in ("committed", "aborted"):
                return
            self._drop("aborted")

    def token(self) -> dict[str, str]:
        return {"kind": "azure", "container": self.container, "name": self.name, "key": self.key,
                "prefix": self.prefix, "job": self._job_id, "attempt": str(self._attempt),
                "overwrite": "1" if self._overwrite else "0"}
