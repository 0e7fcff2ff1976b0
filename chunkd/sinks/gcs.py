"""Outputs to a `gcs` container: parts staged as temp objects, composed at commit.

The JSON API has no S3-style multipart upload, so the sink stages its parts as
objects of their own and composes them into the final name at commit. The sink
holds at most one part (`part_size`, >= 5 MiB) in memory: every full part is
uploaded (`uploadType=media`) before `write` returns, as

    <prefix>/.chunkd-out/<job>/<attempt>/<sha256(name)[:16]>/part-000001, -000002, ...

`seal` uploads the last one (any size); `commit` is a `compose` of the parts
into the final name, with the metadata `chunkd-job: <job id>`, then the staged
objects are deleted (a failed delete after a good compose is logged, never
fails the commit: `recover` and `abort` delete by listing the staging folder).
GCS composes at most 32 sources per call (MAX_COMPOSE): more parts are composed
in rounds into intermediate objects in the same staging folder. An output
smaller than one part never stages: it is one `uploadType=multipart` upload of
the final object at commit, its metadata in the same request (the object never
exists without it).

The staging folder is a function of the token (job, attempt, name), so a
restart can always list what a killed writer left and finish or delete it;
readers cannot name it (GcsContainer.key_for refuses `.chunkd-out/`).

overwrite = true: the object's metadata is read at create; one whose `chunkd-job`
is this job's raises SinkConflict(by_this_job=True) (an earlier attempt committed it).
overwrite = false: the metadata is read at create and again right before the
commit, and the write itself carries `ifGenerationMatch=0`. GCS honours that on
uploads and on compose. fake-gcs-server 1.56.1 (what the tests run against)
honours it on uploads (412) but IGNORES it on compose: there the check right
before the compose is all there is (a window of one request), as for an S3
store that ignores If-None-Match.

Every request is the source container's (chunkd/sources/rest.py: signed with
its credentials, bounded by its deadline for the bytes sent); transient
failures (408/425/429/5xx, resets, a request past its deadline) are retried
RETRIES times with jittered backoff; a part is re-sent whole. A conditional
upload or compose whose retry finds the object there with this job's metadata
and the right size counts as done. Errors name container/name and the
operation, never a credential.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import uuid
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import aiohttp
import structlog

from chunkd.errors import NameRefused, SourceError
from chunkd.sinks.base import ABORTED, COMMITTED, SinkConflict, SinkError
from chunkd.sources.gcs import GcsContainer, object_id

log = structlog.get_logger("chunkd.sinks.gcs")

JOB_META = "chunkd-job"
RETRIES = 3  # transient failures of one request retried this many times
BACKOFF_S = 0.1
MAX_COMPOSE = 32  # source objects per compose call (the GCS limit)
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


def part_name(n: int) -> str:
    return f"part-{n:06d}"


def _segment(value: str) -> str:
    """`value` as one object-name segment: itself when plain, else a digest."""
    if _SAFE_SEGMENT.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:32]


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


class GcsSinkContainer:
    kind = "gcs"

    def __init__(self, name: str, source: GcsContainer, *, part_size: int) -> None:
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

    def staging_for(self, name: str, job_id: str, attempt: int | str) -> str:
        """The folder (ending in '/') the parts of this output are staged in."""
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return f"{self.source.staging_prefix()}{_segment(job_id)}/{_segment(str(attempt))}/{digest}/"

    # -- requests ---------------------------------------------------------------------
    def _upload_url(self, query: str) -> str:
        return f"{self.source.endpoint}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o?{query}"

    def _objects_url(self) -> str:
        return f"{self.source.endpoint}/storage/v1/b/{quote(self.bucket, safe='')}/o"

    async def request(self, method: str, url: str, what: str, *, data: bytes | bytearray | None = None,
                      headers: Mapping[str, str] | None = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """One request within the container's deadline for its bytes, transient failures
        retried: (status, the JSON body or None). A status outside `ok` raises SinkError."""
        for attempt in range(RETRIES + 1):
            last = attempt == RETRIES
            try:
                status, _, body = await self.source.call(method, url, what, headers=headers, data=data,
                                                         ok=ok, read=_json)
                return int(status), body
            except SourceError as e:
                if not e.transient:
                    raise SinkError(str(e)) from None
                if last:
                    raise SinkError(f"{e} (after {RETRIES} retries)") from None
            await asyncio.sleep(BACKOFF_S * (2 ** attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def metadata(self, what: str, key: str) -> dict[str, Any] | None:
        """The object's resource, or None when there is no such object."""
        status, body = await self.request("GET", self.source.meta_url(key), what, ok=(200, 404))
        if status == 404:
            return None
        if not isinstance(body, dict):
            raise SinkError(f"{what}: the store's answer is not an object resource")
        return body

    @staticmethod
    def job_of(meta: Mapping[str, Any] | None) -> str | None:
        m = meta.get("metadata") if meta is not None else None
        job = m.get(JOB_META) if isinstance(m, dict) else None
        return job if isinstance(job, str) else None

    async def check_absent(self, label: str, key: str, job_id: str) -> None:
        meta = await self.metadata(f"{label}: get metadata", key)
        if meta is not None:
            raise SinkConflict(f"{label}: exists already and the container has overwrite = false",
                               by_this_job=self.job_of(meta) == job_id)

    async def upload_part(self, label: str, key: str, data: bytes | bytearray) -> None:
        """A staged part (a plain media upload; a retry replaces it)."""
        url = self._upload_url(f"uploadType=media&name={object_id(key)}")
        await self.request("POST", url, f"{label}: upload part {key.rsplit('/', 1)[-1]}", data=data)

    async def upload_final(self, label: str, key: str, data: bytes | bytearray, *, job_id: str,
                           overwrite: bool) -> dict[str, Any]:
        """The whole object and its metadata in one request (uploadType=multipart); with
        ifGenerationMatch=0 unless overwrite. Its resource, or SinkConflict."""
        boundary = f"chunkd-{uuid.uuid4().hex}"
        meta = json.dumps({"name": key, "metadata": {JOB_META: job_id}}).encode()
        body = b"".join([f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(), meta,
                         f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        query = "uploadType=multipart" + ("" if overwrite else "&ifGenerationMatch=0")
        what = f"{label}: upload"
        status, resource = await self.request("POST", self._upload_url(query), what, data=body,
                                              headers={"Content-Type": f"multipart/related; boundary={boundary}"},
                                              ok=(200, 412))
        if status == 412:
            return await self._already(label, key, job_id, len(data))
        if not isinstance(resource, dict):
            raise SinkError(f"{what}: the store's answer is not an object resource")
        return resource

    async def _already(self, label: str, key: str, job_id: str, size: int | None) -> dict[str, Any]:
        """After a 412 on a conditional write: the object is this job's (a retry whose first
        try went through; returned) or another writer's (SinkConflict)."""
        found = await self.metadata(f"{label}: get metadata", key)
        if found is not None and self.job_of(found) == job_id and (size is None or str(found.get("size")) == str(size)):
            return found
        raise SinkConflict(f"{label}: was created meanwhile and the container has overwrite = false",
                           by_this_job=self.job_of(found) == job_id)

    async def compose(self, label: str, key: str, sources: list[str], *, staging: str, job_id: str,
                      overwrite: bool, size: int | None) -> dict[str, Any]:
        """Compose `sources` (staged object names, in order) into `key` with this job's
        metadata; rounds of MAX_COMPOSE into intermediates under `staging` first when
        there are more. Its resource, or SinkConflict (overwrite = false)."""
        level = 0
        while len(sources) > MAX_COMPOSE:
            level += 1
            nxt: list[str] = []
            for i in range(0, len(sources), MAX_COMPOSE):
                inter = f"{staging}compose-{level}-{i // MAX_COMPOSE + 1:06d}"
                await self._compose_call(f"{label}: compose round {level}", inter, sources[i:i + MAX_COMPOSE],
                                         metadata=None, conditional=False)
                nxt.append(inter)
            sources = nxt
        what = f"{label}: compose"
        status, resource = await self._compose_call(what, key, sources, metadata={JOB_META: job_id},
                                                    conditional=not overwrite)
        if status == 412:
            return await self._already(label, key, job_id, size)
        if not isinstance(resource, dict):
            raise SinkError(f"{what}: the store's answer is not an object resource")
        return resource

    async def _compose_call(self, what: str, dest: str, sources: list[str], *, metadata: dict[str, str] | None,
                            conditional: bool) -> tuple[int, Any]:
        destination: dict[str, Any] = {"contentType": "application/octet-stream"}
        if metadata is not None:
            destination["metadata"] = metadata
        body = json.dumps({"sourceObjects": [{"name": s} for s in sources], "destination": destination}).encode()
        url = f"{self.source.meta_url(dest)}/compose" + ("?ifGenerationMatch=0" if conditional else "")
        return await self.request("POST", url, what, data=body, headers={"Content-Type": "application/json"},
                                  ok=(200, 412) if conditional else (200,))

    async def list_staged(self, label: str, staging: str) -> dict[str, int]:
        """Every object under `staging`: name -> size."""
        found: dict[str, int] = {}
        page = ""
        while True:
            url = f"{self._objects_url()}?prefix={quote(staging, safe='')}&fields=items(name,size),nextPageToken"
            if page:
                url += f"&pageToken={quote(page, safe='')}"
            _, body = await self.request("GET", url, f"{label}: list staged parts")
            if not isinstance(body, dict):
                raise SinkError(f"{label}: list staged parts: the store's answer is not a list")
            for item in body.get("items") or []:
                if isinstance(item, dict) and isinstance(item.get("name"), str) \
                        and str(item["name"]).startswith(staging):
                    try:
                        found[str(item["name"])] = int(item.get("size", 0))
                    except (TypeError, ValueError):
                        found[str(item["name"])] = -1
            page = str(body.get("nextPageToken") or "")
            if not page:
                return found

    async def delete(self, label: str, key: str) -> bool:
        """Delete one object; False when it was gone already."""
        status, _ = await self.request("DELETE", self.source.meta_url(key), f"{label}: delete {key}",
                                       ok=(200, 204, 404))
        return status != 404

    async def clear_staging(self, label: str, staging: str, known: Sequence[str] = ()) -> int:
        """Delete `known` and whatever else is listed under `staging`; the count deleted."""
        names = set(known) | set(await self.list_staged(label, staging))
        n = 0
        for key in sorted(names):
            n += await self.delete(label, key)
        return n

    async def clear_quietly(self, label: str, staging: str, known: Sequence[str]) -> None:
        """After a good commit: staged leftovers deleted, a failure logged (recover deletes them)."""
        try:
            await self.clear_staging(label, staging, known)
        except Exception as e:
            log.warning("output_staging_not_deleted", container=self.name, output=label, error=str(e))

    # -- the WritableContainer --------------------------------------------------------
    async def create(self, name: str, *, job_id: str, attempt: int, overwrite: bool) -> "GcsSink":
        key = self.key_for(name)
        label = f"{self.name}/{name}"
        _ = self.bucket  # refuses a container without a bucket now, not at the first part
        if not overwrite:
            await self.check_absent(label, key, job_id)
        else:  # an object an earlier attempt of this job committed is not written twice
            meta = await self.metadata(f"{label}: get metadata", key)
            if meta is not None and self.job_of(meta) == job_id:
                raise SinkConflict(f"{label}: committed already by an earlier attempt of this job",
                                   by_this_job=True)
        return GcsSink(self, name, key, job_id=job_id, attempt=attempt, overwrite=overwrite)

    async def recover(self, token: dict[str, str], *, job_id: str, committing: bool) -> str:
        if token.get("kind") != "gcs" or "key" not in token or "name" not in token:
            raise SinkError(f"{self.name}: not a gcs output token: {sorted(token)}")
        name, key = token["name"], token["key"]
        label = f"{self.name}/{name}"
        if self.key_for(name) != key:
            raise SinkError(f"{label}: the token's key {key!r} is not this container's key for {name!r}")
        staging = token.get("staging", "")
        if staging != self.staging_for(name, token.get("job", ""), token.get("attempt", "")):
            raise SinkError(f"{label}: the token's staging folder {staging!r} is not chunkd's for this output")
        overwrite = token.get("overwrite", "1") != "0"
        meta = await self.metadata(f"{label}: get metadata", key)
        if meta is not None and self.job_of(meta) == job_id:
            await self.clear_staging(label, staging)  # committed before the crash: leftovers only
            return COMMITTED
        if committing and token.get("sealed") == "1" and (meta is None or overwrite):
            parts = await self._complete_parts(label, staging, token)
            if parts:
                try:
                    await self.compose(label, key, parts, staging=staging, job_id=job_id, overwrite=overwrite,
                                       size=int(token.get("bytes", "0")))
                    await self.clear_quietly(label, staging, parts)
                    return COMMITTED
                except SinkConflict:
                    pass  # another writer's object: undone below
        await self.clear_staging(label, staging)
        meta = await self.metadata(f"{label}: get metadata", key)
        return COMMITTED if meta is not None and self.job_of(meta) == job_id else ABORTED

    async def _complete_parts(self, label: str, staging: str, token: Mapping[str, str]) -> list[str]:
        """The staged parts 1..n of a sealed token when every one is there and their sizes
        add up to its bytes; [] otherwise (nothing staged, or something is missing)."""
        try:
            n, total = int(token.get("parts", "0")), int(token.get("bytes", "-1"))
        except ValueError:
            return []
        if n <= 0:
            return []  # a small output lived only in memory: nothing to roll forward
        listed = await self.list_staged(label, staging)
        names = [staging + part_name(i) for i in range(1, n + 1)]
        if any(p not in listed for p in names) or sum(listed[p] for p in names) != total:
            log.warning("output_parts_incomplete", container=self.name, output=label, parts=n,
                        found=sum(p in listed for p in names))
            return []
        return names

    async def sweep(self) -> int:
        return 0  # staged parts are deleted through recover, from the folders their tokens name


class GcsSink:
    def __init__(self, c: GcsSinkContainer, name: str, key: str, *, job_id: str, attempt: int,
                 overwrite: bool) -> None:
        self.container = c.name
        self.name = name
        self.key = key
        self._c = c
        self._label = f"{c.name}/{name}"
        self._job_id = job_id
        self._attempt = attempt
        self._overwrite = overwrite
        self.staging = c.staging_for(name, job_id, attempt)
        self._buf = bytearray()
        self._parts: list[str] = []  # staged object names, in order
        self._staged_bytes = 0
        self._written = 0
        self._state = "writing"  # writing, sealed, committed, aborted
        self._dirty = False  # something may be staged (cleared by a successful abort)
        self._lock = asyncio.Lock()
        self.generation: str | None = None

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
    def parts(self) -> list[str]:
        return list(self._parts)

    async def _upload_part(self) -> None:
        key = self.staging + part_name(len(self._parts) + 1)
        self._dirty = True
        await self._c.upload_part(self._label, key, self._buf)
        self._parts.append(key)
        self._staged_bytes += len(self._buf)
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
            if self._parts and self._buf:
                await self._upload_part()  # the last part, any size
            self._state = "sealed"  # nothing staged: one upload at commit

    async def commit(self) -> str | None:
        if self._state == "writing":
            await self.seal()
        async with self._lock:
            if self._state == "committed":
                return self.generation
            if self._state != "sealed":
                raise SinkError(f"{self._label}: commit after the output was {self._state}")
            try:
                if not self._overwrite:  # early, clear, and the fallback where ifGenerationMatch is ignored
                    await self._c.check_absent(self._label, self.key, self._job_id)
                if self._parts:
                    resource = await self._c.compose(self._label, self.key, self._parts, staging=self.staging,
                                                     job_id=self._job_id, overwrite=self._overwrite,
                                                     size=self._staged_bytes)
                else:
                    resource = await self._c.upload_final(self._label, self.key, self._buf, job_id=self._job_id,
                                                          overwrite=self._overwrite)
            except SinkConflict:
                await self._abort_now()
                raise
            self.generation = str(resource.get("generation")) if resource.get("generation") is not None else None
            self._state = "committed"
            self._buf = bytearray()
            if self._parts:
                await self._c.clear_quietly(self._label, self.staging, self._parts)
                self._dirty = False
            return self.generation

    async def _abort_now(self) -> None:
        self._buf = bytearray()
        self._state = "aborted"
        if self._dirty:  # on an error it stays dirty, and abort can be called again
            await self._c.clear_staging(self._label, self.staging, self._parts)
            self._dirty = False

    async def abort(self) -> None:
        async with self._lock:
            if self._state == "committed" or (self._state == "aborted" and not self._dirty):
                return
            await self._abort_now()

    def token(self) -> dict[str, str]:
        return {"kind": "gcs", "container": self.container, "name": self.name, "key": self.key,
                "job": self._job_id, "attempt": str(self._attempt), "overwrite": "1" if self._overwrite else "0",
                "staging": self.staging, "parts": str(len(self._parts)), "bytes": str(self._staged_bytes),
                "sealed": "1" if self._state in ("sealed", "committed") else "0"}
