"""Hostile API clients: fuzzed methods, paths, queries, headers and bodies against a real
`chunkd serve`, every answer checked against docs/openapi.json.

Every request gets an answer in bounded time, with a status the document lists for that
path and method (404 for an unknown path, 405 for an unknown method), never a 5xx but the
documented 503s, and a JSON {"error": ...} body for every error. The daemon keeps serving
and no job it accepted (202) is lost.
"""
from __future__ import annotations

import http.client
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service_support import ROOT, Server, free_port, wait_for

SPEC = json.loads((ROOT / "docs" / "openapi.json").read_text())
TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("CHUNKD_HYPOTHESIS_EXAMPLES", "300"))
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]


def _route(path: str) -> tuple[str, dict[str, Any]] | None:
    """The documented path template that `path` matches, and its operations."""
    for template, ops in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", re.escape(template).replace(r"\{", "{").replace(r"\}", "}")) + "$"
        if re.match(pattern, path):
            return template, ops
    return None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, guests: dict[str, Path]) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "blobs").mkdir()
    (tmp / "blobs" / "a.bin").write_bytes(os.urandom(10_000))
    port = free_port()
    cfg = tmp / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
auth_token = "{TOKEN}"
max_request_bytes = "16KiB"
[limits]
max_queued_jobs = 50
[containers.local]
kind = "file"
root = "{tmp / 'blobs'}"
[components.sha256]
path = "{guests['sha256']}"
""")
    s = Server(cfg, port, tmp / "daemon.log").start()
    yield s
    s.stop()


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=30)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=12)
bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"component": st.one_of(st.just("sha256"), st.text(max_size=10), json_values)},
                          optional={"args": st.one_of(st.just(["local", "a.bin"]), st.lists(st.text(max_size=8), max_size=5),
                                                      json_values),
                                    "extra": json_values}).map(lambda v: json.dumps(v).encode()),
    st.integers(16 * 1024, 40 * 1024).map(lambda n: b'{"component": "' + b"x" * n + b'"}'),  # over the limit
)
paths = st.one_of(
    st.sampled_from([p for p in SPEC["paths"] if "{" not in p]),
    st.text(alphabet="abcdef0123456789-", min_size=0, max_size=40).map(lambda j: f"/v1/jobs/{j}"),
    st.sampled_from(["/v1/jobs/", "/v1//jobs", "/../etc/passwd", "/v1/jobs/%2e%2e", "/v1/jobs/a%00b", "/ui/../../x",
                     "/v1/" + "x" * 3000, "/healthz/", "/metrics?x", "/v2/jobs"]),
    st.text(alphabet="/abcxyz%.~", max_size=30).map(lambda p: "/" + p),
)
queries = st.one_of(st.just(""), st.sampled_from(["?limit=5", "?limit=0", "?limit=-1", "?limit=abc", "?limit=99999999999",
                                                  "?state=running", "?state=%ff", "?interval=0", "?interval=nan",
                                                  "?interval=1e308", "?limit=1&limit=2", "?" + "a=b&" * 500]))
headers = st.fixed_dictionaries({}, optional={
    "Authorization": st.sampled_from([f"Bearer {TOKEN}", "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer ", f"bearer {TOKEN}",
                                      "Bearer " + "x" * 5000]),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1",
                                     "multipart/form-data; boundary=x", ""]),
})


def _send(port: int, method: str, target: str, body: bytes | None, hdrs: dict[str, str]) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read() if method != "HEAD" else b""
        return r.status, r.getheader("Content-Type", ""), data
    finally:
        conn.close()


def _allowed(method: str, path: str) -> set[int]:
    route = _route(path.split("?")[0])
    if route is None:
        return {404, 401, 405}  # an unknown path (auth is checked first)
    op = route[1].get(method.lower()) or (route[1].get("get") if method == "HEAD" else None)
    if op is None:
        return {405, 401}
    return {int(c) for c in op["responses"]} | {413, 400}


accepted: list[str] = []


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), path=paths, query=queries, body=bodies, hdrs=headers)
def test_fuzzed_requests_get_documented_answers(daemon: Server, method: str, path: str, query: str,
                                                body: bytes | None, hdrs: dict[str, str]) -> None:
    status, ctype, data = _send(daemon.port, method, path + query, body, hdrs)
    assert status < 500 or status == 503, (method, path, query, status, data[:200])
    allowed = _allowed(method, path)
    assert status in allowed or status == 431 or (status == 400 and _route(path) is None), \
        (method, path, query, status, data[:200], sorted(allowed))
    if status >= 400 and method != "HEAD" and status not in (431,):
        assert "json" in ctype, (status, ctype, data[:200])
        assert isinstance(json.loads(data)["error"], str)
    if status == 202 and method == "POST":
        accepted.append(json.loads(data)["job_id"])


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=st.lists(st.one_of(st.text(max_size=40), st.sampled_from(["local", "a.bin", "--chunk-size=1",
                                                                     "--chunk-size=0", "../../x", "missing.bin"])),
                     max_size=6),
       component=st.sampled_from(["sha256", "sha256", "nope", ""]))
def test_fuzzed_submissions_are_accepted_or_refused_clearly(daemon: Server, args: list[str], component: str) -> None:
    hdrs = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    status, ctype, data = _send(daemon.port, "POST", "/v1/jobs",
                                json.dumps({"component": component, "args": args}).encode(), hdrs)
    assert status in {202, 400, 404, 429}, (status, data[:200])
    if status == 202:
        accepted.append(json.loads(data)["job_id"])
    else:
        assert isinstance(json.loads(data)["error"], str)


def test_the_daemon_still_serves_and_lost_no_accepted_job(daemon: Server) -> None:
    assert daemon.healthy()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = daemon.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "a.bin"]}, headers=auth)
    assert ok[0] == 202
    for job_id in [*accepted, ok[1]["job_id"]]:
        def ended(j: str = job_id) -> bool:
            status, body = daemon.request("GET", f"/v1/jobs/{j}", headers=auth)
            assert status == 200, (j, status, body)  # never lost
            return body["state"] in ("completed", "failed", "cancelled")
        wait_for(ended, 60, 0.1, f"job {job_id} to end")
    print(f"fuzz: {len(accepted)} fuzzed jobs accepted, every one found and ended")


# --- cross-tenant: another tenant's ids, lists, cancels, streams, status, page (docs/tenants.md) ---

TENANT_TOKENS = {"a": "fuzz-tenant-a-0123456789", "b": "fuzz-tenant-b-0123456789", "r": "fuzz-tenant-r-0123456789"}


@pytest.fixture(scope="module")
def tenants_daemon(tmp_path_factory: pytest.TempPathFactory, guests: dict[str, Path]) -> Iterator[tuple[Server, dict[str, str]]]:
    """A daemon with tenants a, b (submit) and r (read); a has one ended job and one that
    streams (paced) for the whole test."""
    tmp = tmp_path_factory.mktemp("fuzz-tenants")
    (tmp / "blobs").mkdir()
    (tmp / "blobs" / "a.bin").write_bytes(os.urandom(10_000))
    (tmp / "blobs" / "long.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    port = free_port()
    cfg = tmp / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
auth_token = "{TOKEN}"
max_request_bytes = "16KiB"
[limits]
max_queued_jobs = 50
[containers.local]
kind = "file"
root = "{tmp / 'blobs'}"
[components.sha256]
path = "{guests['sha256']}"
[components.paced]
path = "{guests['sha256']}"
max_bytes_per_second = "512KiB"
[tenants.a]
token = "{TENANT_TOKENS['a']}"
[tenants.b]
token = "{TENANT_TOKENS['b']}"
[tenants.r]
token = "{TENANT_TOKENS['r']}"
role = "read"
""")
    s = Server(cfg, port, tmp / "daemon.log").start()
    a = {"Authorization": f"Bearer {TENANT_TOKENS['a']}"}
    code, done = s.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "a.bin"]}, headers=a)
    assert code == 202
    code, run = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "long.bin"]}, headers=a)
    assert code == 202
    ids = {"A_DONE": done["job_id"], "A_RUN": run["job_id"]}
    wait_for(lambda: s.request("GET", f"/v1/jobs/{ids['A_DONE']}", headers=a)[1]["state"] == "completed", 60, 0.1,
             "a's first job to end")
    wait_for(lambda: s.request("GET", f"/v1/jobs/{ids['A_RUN']}", headers=a)[1]["streams"], 60, 0.1,
             "a's paced job to stream")
    yield s, ids
    s.stop()


cross_paths = st.one_of(
    st.sampled_from(["/v1/jobs/A_DONE", "/v1/jobs/A_RUN", "/v1/jobs/A_RUN/", "/v1/jobs/A_RUN%00", "/v1/jobs/a_run",
                     "/v1/jobs/A_RUN/../A_DONE", "/v1/jobs/%41_RUN", "/v1/jobs", "/v1/streams", "/v1/status",
                     "/v1/status/events", "/metrics", "/", "/ui/status.js", "/ui/status.css", "/healthz"]),
    st.text(alphabet="abcdef0123456789", min_size=15, max_size=17).map(lambda j: f"/v1/jobs/{j}"),
)
cross_queries = st.sampled_from(["", "?state=running", "?state=completed", "?limit=10000", "?limit=1",
                                 "?tenant=a", "?job_id=A_RUN", "?interval=10"])
cross_tokens = st.sampled_from(["b", "r", "b", "unknown", "a-prefix", "none"])


def _cross_headers(who: str) -> dict[str, str]:
    if who == "none":
        return {}
    token = {"unknown": "fuzz-tenant-z-0123456789", "a-prefix": TENANT_TOKENS["a"][:-1]}.get(who) or TENANT_TOKENS[who]
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def _send_bounded(port: int, method: str, target: str, body: bytes | None, hdrs: dict[str, str]) -> tuple[int, str, bytes]:
    """Like _send, but an event stream is read for a bounded number of bytes (it never ends)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=hdrs)
        r = conn.getresponse()
        ctype = r.getheader("Content-Type", "")
        if method == "HEAD":
            return r.status, ctype, b""
        if "event-stream" not in ctype:
            return r.status, ctype, r.read()
        lines: list[bytes] = []
        while sum(1 for line in lines if line.startswith(b"data: ")) < 3:  # three snapshots, then leave
            line = r.readline()
            if not line:
                break
            lines.append(line)
        return r.status, ctype, b"".join(lines)
    finally:
        conn.close()


@settings(max_examples=max(40, EXAMPLES // 2), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "GET", "DELETE", "POST", "HEAD", "PUT"]), path=cross_paths,
       query=cross_queries, who=cross_tokens,
       body=st.one_of(st.none(), st.sampled_from([b'{"component": "sha256", "args": ["local", "a.bin"]}',
                                                  b'{"component": "sha256", "args": ["A_RUN"]}',
                                                  b'{"job_id": "A_RUN"}'])))
def test_no_answer_to_another_tenant_shows_its_jobs(tenants_daemon: tuple[Server, dict[str, str]], method: str,
                                                    path: str, query: str, who: str, body: bytes | None) -> None:
    s, ids = tenants_daemon
    target = path + query
    for k, v in ids.items():
        target = target.replace(k, v)
        body = body.replace(k.encode(), v.encode()) if body is not None else None
    if target.startswith("/v1/status/events"):
        target = "/v1/status/events?interval=0.2"  # a few events, then the client leaves
    status, ctype, data = _send_bounded(s.port, method, target, body, _cross_headers(who))
    assert status < 500 or status == 503, (method, target, who, status, data[:200])
    allowed = _allowed(method, target)
    assert status in allowed or status == 431 or (status == 400 and _route(target.split("?")[0]) is None), \
        (method, target, who, status, data[:300], sorted(allowed))
    for jid in ids.values():
        sent = jid in target or (body is not None and jid.encode() in body)  # an id echoed back is no leak
        assert jid.encode() not in data or sent, (method, target, who, status, data[:300])
        if f"/v1/jobs/{jid}" == target.split("?")[0] and status != 405:
            # another tenant's job: 404 like an unknown id (401 without a good token; 403 for a read role's DELETE)
            expect = {"none": 401, "unknown": 401, "a-prefix": 401}.get(who) or (
                403 if (who == "r" and method == "DELETE") else 404)
            assert status == expect, (method, target, who, status, data[:200])
            if status == 404 and method != "HEAD":
                assert json.loads(data) == {"error": f"no job {jid!r}"}
    if status == 202 and method == "POST":
        accepted.append(json.loads(data)["job_id"])


def test_the_other_tenants_jobs_are_untouched(tenants_daemon: tuple[Server, dict[str, str]]) -> None:
    s, ids = tenants_daemon
    a = {"Authorization": f"Bearer {TENANT_TOKENS['a']}"}
    assert s.request("GET", f"/v1/jobs/{ids['A_DONE']}", headers=a)[1]["state"] == "completed"
    running = s.request("GET", f"/v1/jobs/{ids['A_RUN']}", headers=a)[1]
    assert running["state"] == "running" and not running["error"], running  # no cancel from b got through
    listed = s.request("GET", "/v1/jobs?limit=10000", headers=a)[1]["jobs"]
    assert {j["job_id"] for j in listed} == set(ids.values()) and {j["tenant"] for j in listed} == {"a"}
    assert s.request("DELETE", f"/v1/jobs/{ids['A_RUN']}", headers=a)[0] == 202
