"""Client commands that talk to a running daemon: submit, status, cancel."""
from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

from chunkd.summary import describe
from chunkd.units import format_size

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_CANCELLED = 4
EXIT_UNREACHABLE = 5
DEFAULT_URL = "http://127.0.0.1:7878"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Endpoint:
    url: str  # http://host:port, https://host:port or unix:/path
    token: str = ""
    cafile: str | None = None  # https: the CA certificates to verify the daemon with (else the system's)

    @classmethod
    def from_listen(cls, listen: str, token: str = "", tls_cert: str | None = None,
                    cafile: str | None = None) -> "Endpoint":
        if listen.startswith("unix:"):
            return cls(listen, token)
        if tls_cert is not None:  # a daemon serving HTTPS; its own certificate is the CA unless told otherwise
            return cls(f"https://{listen}", token, cafile or tls_cert)
        return cls(f"http://{listen}", token, cafile)

    def session(self) -> aiohttp.ClientSession:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = aiohttp.ClientTimeout(total=30)
        if self.url.startswith("unix:"):
            return aiohttp.ClientSession(base_url="http://chunkd", headers=headers, timeout=timeout,
                                         connector=aiohttp.UnixConnector(path=self.url[len("unix:"):]))
        connector = None
        if self.url.startswith("https://"):  # always verified: the certificate and the host name
            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=self.cafile))
        return aiohttp.ClientSession(base_url=self.url.rstrip("/"), headers=headers, timeout=timeout,
                                     connector=connector)


async def _call(session: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
    async with session.request(method, path, json=body) as r:
        try:
            data = await r.json(content_type=None)
        except (json.JSONDecodeError, aiohttp.ContentTypeError):
            data = {"error": (await r.text())[:200]}
        if r.status >= 400:
            raise ApiError(r.status, data.get("error", "") if isinstance(data, dict) else str(data))
        return data


def _unreachable(ep: Endpoint, e: Exception, err: TextIO) -> int:
    print(f"chunkd: cannot reach the daemon at {ep.url}: {e}", file=err)
    return EXIT_UNREACHABLE


def _exit_for(state: str) -> int:
    return {"completed": EXIT_OK, "cancelled": EXIT_CANCELLED}.get(state, EXIT_JOB_FAILED)


async def submit(ep: Endpoint, component: str, args: list[str], *, wait: bool, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, poll_s: float = 0.5) -> int:
    try:
        async with ep.session() as s:
            r = await _call(s, "POST", "/v1/jobs", {"component": component, "args": args})
            job_id = r["job_id"]
            if not wait:
                print(job_id, file=out)
                return EXIT_OK
            print(f"job {job_id} submitted", file=err)
            bar = Progress(out if out.isatty() else None, err)
            while True:
                job = await _call(s, "GET", f"/v1/jobs/{job_id}")
                bar.show(job)
                if job["state"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(poll_s)
    except ApiError as e:
        print(f"chunkd: {e.message} (HTTP {e.status})", file=err)
        return EXIT_JOB_FAILED if e.status < 500 else EXIT_UNREACHABLE
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        return _unreachable(ep, e, err)
    bar.finish()
    for line in job.get("output", []):
        print(line, file=out)
    for line in describe(job):
        print(line, file=out)
    return _exit_for(job["state"])


class Progress:
    """One bar per stream on a terminal (redrawn in place); plain lines otherwise."""

    def __init__(self, tty: TextIO | None, plain: TextIO) -> None:
        self.tty = tty
        self.plain = plain
        self.drawn = 0
        self.last_plain: dict[int, tuple[int, float]] = {}

    @staticmethod
    def _line(st: dict[str, Any], width: int = 24) -> str:
        size, done = st.get("size"), st["bytes"]
        started = st.get("started_at") or time.time()
        ended = st.get("ended_at") or time.time()
        rate = done / max(ended - started, 1e-6)
        if size:
            frac = min(done / size, 1.0)
            fill = int(frac * width)
            eta = (size - done) / rate if rate > 0 else float("inf")
            eta_s = "-" if eta == float("inf") else f"{eta:.0f}s"
            bar = f"[{'#' * fill}{'.' * (width - fill)}] {frac * 100:5.1f}% {format_size(done)}/{format_size(size)}"
        else:
            bar, eta_s = f"[{'?' * width}] {format_size(done)}", "-"
        end = f" {st['end']}" if st.get("end") else f" ETA {eta_s}"
        return f"{st['correlation_id']:>4} {st['blob'][:24]:<24} {bar} {format_size(int(rate))}/s{end}"

    def show(self, job: dict[str, Any]) -> None:
        streams = job.get("streams", [])
        if self.tty is not None:
            if self.drawn:
                self.tty.write(f"\x1b[{self.drawn}F")
            for st in streams:
                self.tty.write("\x1b[2K" + self._line(st) + "\n")
            self.tty.flush()
            self.drawn = len(streams)
            return
        now = time.monotonic()
        for st in streams:
            cid = st["correlation_id"]
            prev = self.last_plain.get(cid)
            if prev is None or (st["chunks"] != prev[0] and now - prev[1] >= 1.0) or (st.get("end") and prev[0] != -1):
                print(self._line(st), file=self.plain, flush=True)
                self.last_plain[cid] = (-1 if st.get("end") else st["chunks"], now)

    def finish(self) -> None:
        pass


async def status(ep: Endpoint, job_id: str | None, *, as_json: bool, out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr) -> int:
    try:
        async with ep.session() as s:
            data = await _call(s, "GET", f"/v1/jobs/{job_id}" if job_id else "/v1/jobs")
    except ApiError as e:
        print(f"chunkd: {e.message} (HTTP {e.status})", file=err)
        return EXIT_JOB_FAILED if e.status < 500 else EXIT_UNREACHABLE
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        return _unreachable(ep, e, err)
    if as_json:
        print(json.dumps(data, indent=2), file=out)
    elif job_id:
        node = f" on {data['node']}" if data.get("node") else ""
        print(f"job {data['job_id']} {data['component']} {' '.join(data['args'])}: {data['state']}{node}"
              f" (attempt {data['attempts']})" + (f" error: {data['error']}" if data.get("error") else ""), file=out)
        for st in data["streams"]:
            print("  " + Progress._line(st), file=out)
    else:
        for j in data["jobs"]:
            node = f"  [{j['node']}]" if j.get("node") else ""
            print(f"{j['job_id']}  {j['state']:<9}  {j['component']}  {' '.join(j['args'])}{node}", file=out)
    return EXIT_OK


async def cancel(ep: Endpoint, job_id: str, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        async with ep.session() as s:
            data = await _call(s, "DELETE", f"/v1/jobs/{job_id}")
    except ApiError as e:
        print(f"chunkd: {e.message} (HTTP {e.status})", file=err)
        return EXIT_JOB_FAILED if e.status < 500 else EXIT_UNREACHABLE
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        return _unreachable(ep, e, err)
    print(f"job {data['job_id']}: cancel requested (was {data['state']})", file=out)
    return EXIT_OK


def endpoint_from(url: str | None, token: str | None, listen: str | None, config_token: str | None,
                  cafile: str | None = None, tls_cert: str | None = None) -> Endpoint:
    tok = token or os.environ.get("CHUNKD_AUTH_TOKEN") or config_token or ""
    ca = cafile or os.environ.get("CHUNKD_CACERT") or None
    if url:
        return Endpoint(url if url.startswith(("http://", "https://", "unix:")) else f"http://{url}", tok, ca)
    if listen:
        return Endpoint.from_listen(listen, tok, tls_cert, ca)
    env = os.environ.get("CHUNKD_URL")
    return Endpoint(env or DEFAULT_URL, tok, ca)
