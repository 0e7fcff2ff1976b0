"""The HTTP JSON control API (aiohttp) on daemon.listen.

POST /v1/jobs {component, args} -> 202 {job_id}; GET /v1/jobs[?state=&limit=];
GET/DELETE /v1/jobs/{id}; GET /v1/streams; GET /healthz; GET /metrics;
GET /v1/status (one snapshot for the status page) and GET /v1/status/events
(the same, pushed as server-sent events); GET / is the live status page itself
(chunkd/web/, static files served without the token: they hold no data, and the
page asks for the token before it reads any).
Every error is a JSON object {"error": message} with a 4xx/5xx status.

Who asks (chunkd/tenancy.py, docs/tenants.md): the bearer token names the admin or a
tenant. A tenant sees, lists and cancels only its own jobs (another's id answers the
same 404 as an unknown one), its streams and its status page; role `read` cannot
submit or cancel (403), a component outside its list is 403, its max_jobs is 429.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Awaitable, Callable

import structlog
from aiohttp import web

from chunkd.metrics import CONTENT_TYPE
from chunkd.errors import ChunkdError, ClusterUnavailable, NotAccepting, QueueFull, UnknownComponent
from chunkd.runtime import Runtime
from chunkd.tracing import carrier_from_headers
from chunkd.status import Rates, SharedSnapshot
from chunkd.tenancy import Principal, Tokens

log = structlog.get_logger("chunkd.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUNTIME = web.AppKey("runtime", Runtime)
PRINCIPAL = web.RequestKey("principal", Principal)
MAX_ARGS = 1000
MAX_ARG_LEN = 64 * 1024
MAX_EVENT_CLIENTS = 32  # status pages listening at once; more get 503
MAX_EVENT_CLIENTS_PER_TENANT = 8  # one tenant's share of them: it cannot take every listener
PUBLIC_PATHS = frozenset(("/healthz", "/", "/ui/status.css", "/ui/status.js"))
UI_FILES = {"/": ("status.html", "text/html"), "/ui/status.css": ("status.css", "text/css"),
            "/ui/status.js": ("status.js", "text/javascript")}


@dataclass
class EventClients:
    """The status-event connections open now, and the flag that ends them at shutdown."""

    count: int = 0
    per_tenant: dict[str, int] = field(default_factory=dict)
    closing: asyncio.Event | None = None


EVENTS = web.AppKey("events", EventClients)


class Auth:
    """The tokens the API takes: the admin token and the tenants of the runtime's config
    (rebuilt when a reload brings other tenants)."""

    def __init__(self, token: str, unix: bool) -> None:
        self.token = token
        self.unix = unix
        self._tokens: Tokens | None = None

    def tokens(self, rt: Runtime) -> Tokens:
        tenants = rt.config.tenants
        if self._tokens is None or self._tokens.tenants is not tenants:
            try:
                self._tokens = Tokens(self.token, tenants, file=rt.config.file)
            except ChunkdError:  # the daemon checks a reload before it applies it: keep the last good
                log.exception("tenant_tokens_refused")
                if self._tokens is None:
                    raise
        return self._tokens


AUTH = web.AppKey("auth", Auth)
SNAPSHOTS = web.AppKey("snapshots", SharedSnapshot)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.content_type == "application/json":
            raise
        return _error(e.status, e.reason if e.status != 413 else "request body too large")
    except ClusterUnavailable as e:  # the job store could not be read: say so, never a wrong answer
        return _error(503, str(e))
    except Exception as e:  # a bug: answer 500 and keep serving
        log.exception("api_error", path=request.path)
        return _error(500, f"internal error: {type(e).__name__}")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS:
        auth = request.app[AUTH]
        who = auth.tokens(request.app[RUNTIME]).resolve(request.headers.get("Authorization", ""), unix=auth.unix)
        if who is None:
            return _error(401, "missing or wrong bearer token")
        request[PRINCIPAL] = who
    return await handler(request)


def _who(request: web.Request) -> Principal:
    return request[PRINCIPAL]  # set by bearer_auth on every path that is not public


def _no_job(job_id: str) -> web.Response:
    """An unknown id, and another tenant's: the same answer, so ids do not leak."""
    return _error(404, f"no job {job_id!r}")


def _role_refused(who: Principal, what: str) -> web.Response:
    return _error(403, f"{who.describe()} has role {who.role!r} (tenants.{who.tenant}.role): it may not {what}; "
                       f"it may only read its own jobs")


async def post_job(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    who = _who(request)
    if not who.may_submit:
        return _role_refused(who, "submit jobs")
    if request.content_type != "application/json":
        return _error(415, "send a JSON body with Content-Type: application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _error(400, f"body is not valid JSON: {e}")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object {\"component\": ..., \"args\": [...]}")
    unknown = sorted(set(body) - {"component", "args"})
    if unknown:
        return _error(400, f"unknown field {unknown[0]!r}")
    component = body.get("component")
    args = body.get("args", [])
    if not isinstance(component, str) or not component:
        return _error(400, "'component' must be a non-empty string")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return _error(400, "'args' must be a list of strings")
    if len(args) > MAX_ARGS or any(len(a) > MAX_ARG_LEN for a in args):
        return _error(400, f"too many or too long args (at most {MAX_ARGS}, each {MAX_ARG_LEN} chars)")
    if who.components is not None and component not in who.components:
        return _error(403, f"tenant {who.tenant!r} may not use component {component!r} (tenants.{who.tenant}.components "
                           f"= {sorted(who.components)})")
    try:
        # a valid W3C traceparent (tracestate) is the job's trace parent; a bad one is ignored
        with rt.tracing.submission(carrier_from_headers(request.headers)):
            job = await rt.accept(component, args, who.tenant)
    except UnknownComponent as e:
        return _error(404, str(e))
    except QueueFull as e:
        return _error(429, str(e))
    except (NotAccepting, ClusterUnavailable) as e:
        return _error(503, str(e))
    return web.json_response({"job_id": job.id, "state": job.state}, status=202,
                             headers={"Location": f"/v1/jobs/{job.id}"})


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    summary = await request.app[RUNTIME].job_summary(job_id)
    if summary is None or not _who(request).sees(summary["tenant"]):
        return _no_job(job_id)
    return web.json_response(summary)


async def list_jobs(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    state = request.query.get("state")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return _error(400, "limit must be an integer")
    if not 1 <= limit <= 10000:
        return _error(400, "limit must be between 1 and 10000")
    jobs = await rt.job_summaries(limit, state, _who(request).scope)
    return web.json_response({"jobs": jobs})


async def delete_job(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    job_id = request.match_info["job_id"]
    who = _who(request)
    if not who.may_submit:  # whatever the id: the answer tells nothing about it
        return _role_refused(who, "cancel jobs")
    if who.scope is not None:  # its own jobs only: another's is unknown to it
        mine = await rt.job_summary(job_id)
        if mine is None or not who.sees(mine["tenant"]):
            return _no_job(job_id)
    summary = await rt.cancel_job(job_id)
    if summary is None:
        return _no_job(job_id)
    if summary["state"] in ("completed", "failed", "cancelled"):
        return _error(409, f"job {job_id} already ended: {summary['state']}", state=summary["state"])
    return web.json_response({"job_id": job_id, "state": summary["state"], "cancel_requested": True}, status=202)


async def list_streams(request: web.Request) -> web.Response:
    who = _who(request)
    rows = await request.app[RUNTIME].streams_view()
    return web.json_response({"streams": [r for r in rows if who.sees(r.get("tenant"))]})


async def healthz(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    if not rt.accepting:
        return web.json_response({"status": "draining"}, status=503)
    body: dict[str, Any] = {"status": "ok", "components": sorted(rt.pools), "jobs_running": rt.running_jobs,
                            "jobs_queued": rt.queued_jobs}
    if rt.cluster is not None:
        body.update(node=rt.cluster.node, nats="connected" if rt.cluster.connected else "disconnected")
        if not rt.cluster.connected:
            return web.json_response({**body, "status": "nats disconnected"}, status=503)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    who = _who(request)
    if who.scope is not None:
        return _error(403, f"{who.describe()} may not read /metrics: they count every tenant's jobs "
                           f"(use the admin token, or a tenant with role 'admin')")
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def ui_file(request: web.Request) -> web.Response:
    name, ctype = UI_FILES[request.path]
    body = resources.files("chunkd").joinpath("web", name).read_bytes()
    return web.Response(body=body, content_type=ctype, charset="utf-8", headers={"Cache-Control": "no-cache"})


SNAPSHOT_TICK_S = 0.2  # the status page's shortest interval: one snapshot per tick for everyone


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(Rates().annotate(await request.app[SNAPSHOTS].get(
        request.app[RUNTIME], SNAPSHOT_TICK_S, _who(request).scope)))


async def status_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: `event: status` with a snapshot every `interval` seconds
    (default 1, 0.2 to 10) until the client leaves or the daemon shuts down."""
    try:
        interval = float(request.query.get("interval", "1"))
    except ValueError:
        return _error(400, "interval must be a number of seconds")
    if not 0.2 <= interval <= 10:
        return _error(400, "interval must be between 0.2 and 10 seconds")
    clients = request.app[EVENTS]
    if clients.count >= MAX_EVENT_CLIENTS:
        return _error(503, f"too many status listeners (at most {MAX_EVENT_CLIENTS})")
    tenant = _who(request).tenant
    if tenant is not None and clients.per_tenant.get(tenant, 0) >= MAX_EVENT_CLIENTS_PER_TENANT:
        return _error(503, f"too many status listeners of tenant {tenant!r} (at most {MAX_EVENT_CLIENTS_PER_TENANT})")
    if clients.closing is None:
        clients.closing = asyncio.Event()
    closing = clients.closing
    rt = request.app[RUNTIME]
    scope = _who(request).scope  # a tenant's page: its own jobs only
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    clients.count += 1
    if tenant is not None:
        clients.per_tenant[tenant] = clients.per_tenant.get(tenant, 0) + 1
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        rates = Rates()
        while not closing.is_set():
            snap = rates.annotate(await request.app[SNAPSHOTS].get(rt, SNAPSHOT_TICK_S, scope))
            await resp.write(b"event: status\ndata: " + json.dumps(snap).encode() + b"\n\n")
            try:
                await asyncio.wait_for(closing.wait(), interval)
            except TimeoutError:
                pass
    except (ConnectionResetError, ClusterUnavailable):
        pass  # the page went away, or NATS did: the page reconnects
    except Exception:  # a bug: this listener ends (the page reconnects), the daemon keeps serving
        log.exception("status_events_error")
    finally:
        clients.count -= 1
        if tenant is not None:
            clients.per_tenant[tenant] -= 1
            if clients.per_tenant[tenant] <= 0:
                del clients.per_tenant[tenant]
    return resp


async def _end_event_streams(app: web.Application) -> None:
    clients = app[EVENTS]
    if clients.closing is None:
        clients.closing = asyncio.Event()
    clients.closing.set()


def make_app(runtime: Runtime, *, token: str = "", max_request_bytes: int = 64 * 1024,
             unix: bool = False) -> web.Application:
    """`token`: the admin token ("" none); `unix`: served on a unix socket (a request with
    no token is the admin there; chunkd/tenancy.py)."""
    app = web.Application(middlewares=[errors_as_json, bearer_auth], client_max_size=max_request_bytes)
    app[RUNTIME] = runtime
    app[AUTH] = Auth(token, unix)
    app[AUTH].tokens(runtime)  # a token that clashes raises ConfigError here, at start
    app[EVENTS] = EventClients()
    app[SNAPSHOTS] = SharedSnapshot()
    app.on_shutdown.append(_end_event_streams)
    for path in UI_FILES:
        app.router.add_get(path, ui_file)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/status/events", status_events)
    app.router.add_post("/v1/jobs", post_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", delete_job)
    app.router.add_get("/v1/streams", list_streams)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
