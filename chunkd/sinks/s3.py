"""Outputs to an `s3` container: a multipart upload, completed at commit.

The sink holds at most one part (`part_size`, >= 5 MiB) in memory. The first
full part creates the multipart upload (CreateMultipartUpload, lazily), every
full part is uploaded before `write` returns, `seal` uploads the last one, and
`commit` is CompleteMultipartUpload. An output smaller than one part never
opens an upload: it is one PutObject at commit. Both paths put the metadata
`chunkd-job: <job id>` on the object, so `recover` can tell this job's commit.

overwrite = true: a HeadObject at create; an object whose `chunkd-job` is this
job's raises SinkConflict(by_this_job=True): an earlier attempt committed it.
overwrite = false: a HeadObject at create and again before commit (a clear
error early, and a fallback for stores that ignore conditional writes), and
`If-None-Match: *` on the PutObject / CompleteMultipartUpload itself, which
closes the race (AWS S3 and moto honour it: 412 PreconditionFailed).

The client, its error classification and the request bounds are the source
container's (chunkd/sources/s3.py): one client per container for reads and writes.
Transient errors (throttling, 5xx, resets, a request past its deadline) are
retried a few times with backoff; an UploadPart retry re-sends the same part.
"""
from __future__ import annotations

import asyncio
import random
from typing import Any, Awaitable, Callable

from botocore.exceptions import BotoCoreError, ClientError

from chunkd.errors import NameRefused
from chunkd.sinks.base import ABORTED, COMMITTED, SinkConflict, SinkError
from chunkd.sources.s3 import S3Container, error_code

JOB_META = "chunkd-job"
RETRIES = 3  # transient failures of one request retried this many times
BACKOFF_S = 0.1
_RETRY_CODES = {"ConditionalRequestConflict"}  # 409 from a concurrent conditional write: retry


def _code(e: ClientError) -> str:
    code, status, _ = error_code(e)
    return code or str(status)


def _gone(e: ClientError) -> bool:
    code, status, _ = error_code(e)
    return code in ("NoSuchUpload", "NoSuchKey", "NotFound", "404") or status == 404


def _precondition(e: ClientError) -> bool:
    code, status, _ = error_code(e)
    return code in ("PreconditionFailed", "412") or status == 412


class S3SinkContainer:
    kind = "s3"

    def __init__(self, name: str, source: S3Container, *, part_size: int) -> None:
        self.name = name
        self.source = source
        self.part_size = part_size

    @property
    def bucket(self) -> str:
        if not self.source.bucket:
            raise SinkError(f"container {self.name!r} has no bucket configured")
        return self.source.bucket

    def key_for(self, name: str) -> str:
        try:
            return self.source.key_for(name)
        except NameRefused as e:
            raise SinkError(f"{self.name}/{name}: the name escapes the container or is not allowed: {e}") from None

    async def call(self, what: str, nbytes: int, op: Callable[[Any], Awaitable[Any]]) -> Any:
        """One S3 request, bounded by the container's deadline for `nbytes`, transient
        failures retried; a ClientError that is not transient is raised as is."""
        client = await self.source.client()
        for attempt in range(RETRIES + 1):
            last = attempt == RETRIES
            try:
                return await asyncio.wait_for(op(client), timeout=self.source.bounds.deadline_s(nbytes))
            except ClientError as e:
                code, _, transient = error_code(e)
                if last or not (transient or code in _RETRY_CODES):
                    if transient or code in _RETRY_CODES:
                        raise SinkError(f"{what}: {_code(e)} (after {RETRIES} retries)") from None
                    raise
            except asyncio.TimeoutError:
                if last:
                    raise SinkError(f"{what}: no answer within {self.source.bounds.deadline_s(nbytes):.3g}s "
                                    f"(after {RETRIES} retries)") from None
            except (BotoCoreError, OSError) as e:
                if last:
                    raise SinkError(f"{what}: {type(e).__name__}: {e} (after {RETRIES} retries)") from None
            except Exception as e:  # aiohttp errors when a connection drops
                if not type(e).__module__.startswith("aiohttp"):
                    raise
                if last:
                    raise SinkError(f"{what}: {type(e).__name__}: {e} (after {RETRIES} retries)") from None
            await asyncio.sleep(BACKOFF_S * (2 ** attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def head(self, what: str, key: str) -> dict[str, Any] | None:
        """HeadObject, or None when there is no such object."""
        bucket = self.bucket
        try:
            head: dict[str, Any] = await self.call(what, 0, lambda c: c.head_object(Bucket=bucket, Key=key))
            return head
        except ClientError as e:
            if _gone(e):
                return None
            raise SinkError(f"{what}: {_code(e)}") from None

    async def check_absent(self, label: str, key: str, job_id: str) -> None:
        head = await self.head(f"{label}: HeadObject", key)
        if head is not None:
            raise SinkConflict(f"{label}: exists already and the container has overwrite = false",
                               by_this_job=head.get("Metadata", {}).get(JOB_META) == job_id)

    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> "S3Sink":
        key = self.key_for(name)
        _ = self.bucket  # refuses a container without a bucket now, not at the first part
        if not overwrite:
            await self.check_absent(f"{self.name}/{name}", key, job_id)
        else:  # an object an earlier attempt of this job committed is not written twice
            head = await self.head(f"{self.name}/{name}: HeadObject", key)
            if head is not None and head.get("Metadata", {}).get(JOB_META) == job_id:
                raise SinkConflict(f"{self.name}/{name}: committed already by an earlier attempt of this job",
                                   by_this_job=True)
        return S3Sink(self, name, key, job_id=job_id, attempt=attempt, overwrite=overwrite)

    async def abort_upload(self, label: str, key: str, upload_id: str) -> bool:
        """AbortMultipartUpload; False when it was gone already (completed or aborted)."""
        bucket = self.bucket
        try:
            await self.call(f"{label}: AbortMultipartUpload", 0,
                            lambda c: c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id))
            return True
        except ClientError as e:
            if _gone(e):
                return False
            raise SinkError(f"{label}: AbortMultipartUpload: {_code(e)}") from None

    async def complete(self, label: str, key: str, upload_id: str, parts: list[dict[str, Any]], *,
                       job_id: str, overwrite: bool) -> str | None:
        """CompleteMultipartUpload (If-None-Match: * unless overwrite); the ETag.
        A conflict aborts the upload and raises SinkConflict."""
        bucket = self.bucket
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id,
                              "MultipartUpload": {"Parts": parts}}
        if not overwrite:
            kw["IfNoneMatch"] = "*"
        try:
            resp = await self.call(f"{label}: CompleteMultipartUpload", 0,
                                   lambda c: c.complete_multipart_upload(**kw))
            etag: str | None = resp.get("ETag")
            return etag
        except ClientError as e:
            if _precondition(e):
                await self.abort_upload(label, key, upload_id)
                head = await self.head(f"{label}: HeadObject", key)
                raise SinkConflict(f"{label}: was created meanwhile and the container has overwrite = false",
                                   by_this_job=head is not None and head.get("Metadata", {}).get(JOB_META) == job_id
                                   ) from None
            if _gone(e):  # a retried Complete whose first try went through, or another's
                head = await self.head(f"{label}: HeadObject", key)
                if head is not None and head.get("Metadata", {}).get(JOB_META) == job_id:
                    found: str | None = head.get("ETag")
                    return found
            raise SinkError(f"{label}: CompleteMultipartUpload: {_code(e)}") from None

    async def list_parts(self, label: str, key: str, upload_id: str) -> list[dict[str, Any]] | None:
        """Every uploaded part of an upload (PartNumber, ETag), or None when it is gone."""
        bucket = self.bucket
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            try:
                resp = await self.call(f"{label}: ListParts", 0, lambda c: c.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker))
            except ClientError as e:
                if _gone(e):
                    return None
                raise SinkError(f"{label}: ListParts: {_code(e)}") from None
            parts.extend({"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in resp.get("Parts", []))
            if not resp.get("IsTruncated"):
                return sorted(parts, key=lambda p: int(p["PartNumber"]))
            marker = int(resp["NextPartNumberMarker"])

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        if token.get("kind") != "s3" or "key" not in token or "name" not in token:
            raise SinkError(f"{self.name}: not an s3 output token: {sorted(token)}")
        name, key = token["name"], token["key"]
        label = f"{self.name}/{name}"
        if self.key_for(name) != key:
            raise SinkError(f"{label}: the token's key {key!r} is not this container's key for {name!r}")
        upload_id = token.get("upload_id", "")
        if upload_id:
            if committing:
                parts = await self.list_parts(label, key, upload_id)
                if parts:  # every part was uploaded before the job reached its commit
                    try:
                        await self.complete(label, key, upload_id, parts, job_id=job_id,
                                            overwrite=token.get("overwrite", "1") != "0")
                        return COMMITTED
                    except SinkConflict:
                        pass  # undone by complete; the existing object decides below
            await self.abort_upload(label, key, upload_id)
        head = await self.head(f"{label}: HeadObject", key)
        return COMMITTED if head is not None and head.get("Metadata", {}).get(JOB_META) == job_id else ABORTED

    async def sweep(self) -> int:
        return 0  # orphan uploads are aborted through recover, by the ids their tokens recorded


class S3Sink:
    def __init__(self, c: S3SinkContainer, name: str, key: str, *, job_id: str, attempt: int,
                 overwrite: bool) -> None:
        self.container = c.name
        self.name = name
        self.key = key
        self._c = c
        self._label = f"{c.name}/{name}"
        self._job_id = job_id
        self._attempt = attempt
        self._overwrite = overwrite
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
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
    def upload_id(self) -> str | None:
        return self._upload_id

    def _meta(self) -> dict[str, str]:
        return {JOB_META: self._job_id}

    async def _upload_part(self) -> None:
        c, bucket, key = self._c, self._c.bucket, self.key
        if self._upload_id is None:
            meta = self._meta()
            try:
                resp = await c.call(f"{self._label}: CreateMultipartUpload", 0, lambda cl: cl.create_multipart_upload(
                    Bucket=bucket, Key=key, Metadata=meta))
            except ClientError as e:
                raise SinkError(f"{self._label}: CreateMultipartUpload: {_code(e)}") from None
            self._upload_id = str(resp["UploadId"])
        upload_id, number, body = self._upload_id, len(self._parts) + 1, self._buf
        try:
            resp = await c.call(f"{self._label}: UploadPart {number}", len(body), lambda cl: cl.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body))
        except ClientError as e:
            raise SinkError(f"{self._label}: UploadPart {number}: {_code(e)}") from None
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
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
                    await self._upload_part()

    async def seal(self) -> None:
        async with self._lock:
            if self._state == "sealed":
                return
            if self._state != "writing":
                raise SinkError(f"{self._label}: seal after the output was {self._state}")
            if self._upload_id is not None and self._buf:
                await self._upload_part()  # the last part may be smaller than 5 MiB
            self._state = "sealed"  # without an upload: one PutObject at commit

    async def commit(self) -> str | None:
        if self._state == "writing":
            await self.seal()
        async with self._lock:
            if self._state == "committed":
                return self.etag
            if self._state != "sealed":
                raise SinkError(f"{self._label}: commit after the output was {self._state}")
            if not self._overwrite:  # early, clear, and the fallback where If-None-Match is ignored
                try:
                    await self._c.check_absent(self._label, self.key, self._job_id)
                except SinkConflict:
                    await self._abort_now()
                    raise
            if self._upload_id is not None:
                try:
                    self.etag = await self._c.complete(self._label, self.key, self._upload_id, self._parts,
                                                       job_id=self._job_id, overwrite=self._overwrite)
                except SinkConflict:
                    self._state, self._upload_id, self._buf = "aborted", None, bytearray()  # complete aborted it
                    raise
            else:
                self.etag = await self._put()
            self._state = "committed"
            self._buf = bytearray()
            return self.etag

    async def _put(self) -> str | None:
        bucket, key, body = self._c.bucket, self.key, bytes(self._buf)
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body, "Metadata": self._meta()}
        if not self._overwrite:
            kw["IfNoneMatch"] = "*"
        try:
            resp = await self._c.call(f"{self._label}: PutObject", len(body), lambda cl: cl.put_object(**kw))
        except ClientError as e:
            if _precondition(e):
                head = await self._c.head(f"{self._label}: HeadObject", key)
                meta = head.get("Metadata", {}) if head is not None else {}
                if meta.get(JOB_META) == self._job_id and head is not None and head.get("ContentLength") == len(body):
                    found: str | None = head.get("ETag")  # a retried PutObject whose first try went through
                    return found
                self._state = "aborted"
                self._buf = bytearray()
                raise SinkConflict(f"{self._label}: was created meanwhile and the container has overwrite = false",
                                   by_this_job=meta.get(JOB_META) == self._job_id) from None
            raise SinkError(f"{self._label}: PutObject: {_code(e)}") from None
        etag: str | None = resp.get("ETag")
        return etag

    async def _abort_now(self) -> None:
        self._buf = bytearray()
        if self._upload_id is not None:  # on an error it stays, and abort can be called again
            await self._c.abort_upload(self._label, self.key, self._upload_id)
            self._upload_id = None
        self._state = "aborted"

    async def abort(self) -> None:
        async with self._lock:
            if self._state == "committed" or (self._state == "aborted" and self._upload_id is None):
                return
            await self._abort_now()

    def token(self) -> dict[str, str]:
        return {"kind": "s3", "container": self.container, "name": self.name, "key": self.key,
                "upload_id": self._upload_id or "", "job": self._job_id, "attempt": str(self._attempt),
                "overwrite": "1" if self._overwrite else "0"}
