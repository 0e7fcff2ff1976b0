"""Tenants and scoped tokens (docs/tenants.md), against a real `chunkd serve` on loopback:
config refusals, each role, every cross-tenant attempt (ids, lists, cancels, streams, the
status snapshot, its SSE feed, the page), 401 for an unknown token, the admin's view, the
max_jobs quota (429, and back under it when jobs end), ownership across a restart, and a
job store written before tenants (the column is added)."""
from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.config import load_config
from chunkd.errors import ConfigError
from chunkd.jobstore import SqliteJobStore
from chunkd.tenancy import ADMIN as ADMIN_PRINCIPAL, Tokens
from tests.conftest import make_blob
from tests.service_support import Server, free_port, wait_for

ADMIN = "admin-token-0123456789"
TOK = {"a": "token-of-a-0123456789", "b": "token-of-b-0123456789", "r": "token-of-r-0123456789",
       "sup": "token-of-sup-012345678", "q": "token-of-q-0123456789"}
RATE = 2 * 1024 * 1024


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _config_text(tmp: Path, port: int, guests: dict[str, Path], state_dir: Path, tenants: str,
                 daemon: str = "") -> str:
    return f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
shutdown_grace = "1s"
{daemon}
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{tmp / 'blobs'}"
[components.sha256]
path = "{guests['sha256']}"
instances = 2
[components.paced]
path = "{guests['sha256']}"
instances = 4
max_bytes_per_second = {RATE}
{tenants}
"""


TENANTS = f"""
[tenants.a]
token = "{TOK['a']}"
components = ["sha256", "paced"]
[tenants.b]
token = "{TOK['b']}"
[tenants.r]
token = "{TOK['r']}"
role = "read"
[tenants.sup]
token = "{TOK['sup']}"
role = "admin"
[tenants.q]
token = "{TOK['q']}"
components = ["paced"]
max_jobs = 2
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, guests: dict[str, Path], state_dir: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("tenants")
    (tmp / "blobs").mkdir()
    make_blob(tmp / "blobs", "small.bin", 100_000)
    make_blob(tmp / "blobs", "big.bin", 64 * 1024 * 1024)  # 32 s paced: runs until cancelled
    port = free_port()
    cfg = tmp / "chunkd.toml"
    cfg.write_text(_config_text(tmp, port, guests, state_dir, TENANTS, f'auth_token = "{ADMIN}"'))
    s = Server(cfg, port, tmp / "daemon.log").start()
    yield s
    s.stop()


def submit(s: Server, token: str, component: str, args: list[str]) -> str:
    code, body = s.request("POST", "/v1/jobs", {"component": component, "args": args}, headers=auth(token))
    assert code == 202, body
    return str(body["job_id"])


def get(s: Server, token: str, path: str) -> tuple[int, Any]:
    return s.request("GET", path, headers=auth(token))


def wait_state(s: Server, job_id: str, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    def now() -> dict[str, Any] | None:
        code, body = get(s, ADMIN, f"/v1/jobs/{job_id}")
        assert code == 200, body
        return dict(body) if body["state"] in states else None
    return dict(wait_for(now, timeout, 0.1, f"job {job_id} in {states}"))


def wait_streaming(s: Server, job_id: str) -> None:
    wait_for(lambda: (j := get(s, ADMIN, f"/v1/jobs/{job_id}")[1])["state"] == "running" and j["streams"],
             30, 0.1, f"job {job_id} streaming")


def unknown_answer(s: Server, token: str, job_id: str, method: str = "GET") -> tuple[int, Any]:
    return s.request(method, f"/v1/jobs/{job_id}", headers=auth(token))


# --- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("table,key,reason", [
    ('[tenants.x]\ntoken = "0123456789abcdef"\nrole = "owner"\n', "tenants.x.role", "read"),
    ('[tenants.x]\ntoken = "short"\n', "tenants.x.token", "at least 16 characters"),
    ('[tenants.x]\ntoken = "0123456789abcdef"\n[tenants.y]\ntoken = "0123456789abcdef"\n', "tenants.y.token",
     "the same token as tenants.x.token"),
    ('[daemon]\nauth_token = "0123456789abcdef"\n[tenants.y]\ntoken = "0123456789abcdef"\n', "tenants.y.token",
     "the same token as daemon.auth_token"),
    ('[tenants.x]\ntoken = "0123456789abcdef"\ncomponents = ["nope"]\n', "tenants.x.components",
     "no component named 'nope'"),
    ('[tenants.x]\ntoken = "0123456789abcdef"\nmax_jobs = -1\n', "tenants.x.max_jobs", ""),
    ('[tenants."a b"]\ntoken = "0123456789abcdef"\n', "tenants.a b", "letters, digits"),
])
def test_bad_tenant_tables_are_refused(tmp_path: Path, guests: dict[str, Path], table: str, key: str,
                                       reason: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[components.sha256]\npath = "{guests["sha256"]}"\n' + table)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert key in str(e.value) and reason in str(e.value), str(e.value)


def test_a_tenant_token_equal_to_the_admin_token_from_the_environment_is_refused(tmp_path: Path,
                                                                                 guests: dict[str, Path]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[components.sha256]\npath = "{guests["sha256"]}"\n[tenants.x]\ntoken = "0123456789abcdef"\n')
    config = load_config(cfg)
    with pytest.raises(ConfigError, match="tenants.x.token: the same token as the admin token"):
        Tokens("0123456789abcdef", config.tenants, file=str(cfg))
    tokens = Tokens("another-admin-token", config.tenants)
    assert tokens.resolve("Bearer another-admin-token") is ADMIN_PRINCIPAL
    assert tokens.resolve("Bearer 0123456789abcdef").tenant == "x"  # type: ignore[union-attr]
    for bad in ("", "Bearer ", "Bearer 0123456789abcde", "Bearer 0123456789abcdefg", "Basic 0123456789abcdef",
                "bearer 0123456789abcdef"):
        assert tokens.resolve(bad) is None, bad
    assert tokens.resolve("", unix=True) is ADMIN_PRINCIPAL  # the socket's permissions are the gate
    assert tokens.resolve("Bearer wrong", unix=True) is None
    # no tenants: exactly the rules from before
    plain = Tokens("tok", {})
    assert plain.resolve("Bearer tok") is ADMIN_PRINCIPAL and plain.resolve("Bearer x") is None
    assert Tokens("", {}).resolve("Bearer anything") is ADMIN_PRINCIPAL
    assert Tokens("tok", {}).resolve("", unix=True) is ADMIN_PRINCIPAL


# --- who may do what --------------------------------------------------------------------

def test_unknown_or_missing_tokens_are_401(daemon: Server) -> None:
    for headers in ({}, auth("not-a-token-at-all-xx"), auth(TOK["a"] + "x"), auth(TOK["a"][:-1]),
                    {"Authorization": f"Basic {TOK['a']}"}, {"Authorization": TOK["a"]}):
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/status"), ("GET", "/v1/streams"),
                             ("GET", "/metrics"), ("GET", "/v1/jobs/0123456789abcdef"),
                             ("DELETE", "/v1/jobs/0123456789abcdef"), ("GET", "/v1/status/events")):
            code, body = daemon.request(method, path, headers=headers)
            assert (code, body) == (401, {"error": "missing or wrong bearer token"}), (headers, path)
        code, body = daemon.request("POST", "/v1/jobs", {"component": "sha256", "args": []}, headers=headers)
        assert code == 401
    assert daemon.request("GET", "/healthz")[0] == 200  # public, as before


def test_roles_and_components(daemon: Server) -> None:
    s = daemon
    code, body = s.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "small.bin"]},
                           headers=auth(TOK["r"]))
    assert code == 403 and "tenant 'r' has role 'read'" in body["error"] and "may not submit" in body["error"]
    code, body = s.request("DELETE", "/v1/jobs/0123456789abcdef", headers=auth(TOK["r"]))
    assert code == 403 and "role 'read'" in body["error"] and "may not cancel" in body["error"]
    code, body = s.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "small.bin"]},
                           headers=auth(TOK["q"]))
    assert code == 403 and body["error"] == ("tenant 'q' may not use component 'sha256' "
                                             "(tenants.q.components = ['paced'])")
    # a component that does not exist at all: the same 403 (no hint at what else is configured)
    code, body = s.request("POST", "/v1/jobs", {"component": "secret-thing", "args": []}, headers=auth(TOK["q"]))
    assert code == 403 and "may not use component 'secret-thing'" in body["error"]
    # a tenant with every component: unknown is 404 as before
    code, body = s.request("POST", "/v1/jobs", {"component": "nope", "args": []}, headers=auth(TOK["b"]))
    assert code == 404 and "no component named 'nope'" in body["error"]
    # /metrics count every tenant's jobs: the admin's, and an admin tenant's
    code, body = get(s, TOK["a"], "/metrics")
    assert code == 403 and "tenant 'a' may not read /metrics" in body["error"]
    assert get(s, TOK["sup"], "/metrics")[0] == 200
    # a submission is the tenant's; the summary says whose
    jid = submit(s, TOK["a"], "sha256", ["local", "small.bin"])
    done = wait_state(s, jid, ("completed",))
    assert done["tenant"] == "a"
    assert get(s, TOK["a"], f"/v1/jobs/{jid}")[1]["tenant"] == "a"
    admin_job = submit(s, ADMIN, "sha256", ["local", "small.bin"])
    assert wait_state(s, admin_job, ("completed",))["tenant"] is None
    code, text = get(s, ADMIN, "/metrics")
    assert code == 200 and 'chunkd_jobs_submitted_total{tenant="a"}' in text
    assert 'chunkd_tenant_jobs_ended_total{outcome="completed",tenant="a"}' in text
    assert 'chunkd_jobs_submitted_total{tenant=""}' in text


def test_cross_tenant_ids_lists_cancels_streams(daemon: Server) -> None:
    s = daemon
    a_done = submit(s, TOK["a"], "sha256", ["local", "small.bin"])
    wait_state(s, a_done, ("completed",))
    a_run = submit(s, TOK["a"], "paced", ["local", "big.bin"])
    b_run = submit(s, TOK["b"], "paced", ["local", "big.bin"])
    wait_streaming(s, a_run)
    wait_streaming(s, b_run)
    unknown = "feedfacefeedface"
    code, unknown_body = unknown_answer(s, TOK["b"], unknown)
    assert (code, unknown_body) == (404, {"error": f"no job {unknown!r}"})
    for jid in (a_done, a_run):
        # GET and DELETE of another tenant's job: the very answer an unknown id gets
        assert unknown_answer(s, TOK["b"], jid) == (404, {"error": f"no job {jid!r}"})
        assert unknown_answer(s, TOK["b"], jid, "DELETE") == (404, {"error": f"no job {jid!r}"})
        assert unknown_answer(s, TOK["r"], jid) == (404, {"error": f"no job {jid!r}"})
    assert get(s, ADMIN, f"/v1/jobs/{a_run}")[1]["state"] == "running"  # the DELETE did nothing
    # lists: own jobs only, whatever the state filter
    for query in ("", "?state=running", "?state=completed", "?limit=10000"):
        code, body = get(s, TOK["b"], "/v1/jobs" + query)
        assert code == 200
        ids = {j["job_id"] for j in body["jobs"]}
        assert a_done not in ids and a_run not in ids and {j["tenant"] for j in body["jobs"]} <= {"b"}
    assert b_run in {j["job_id"] for j in get(s, TOK["b"], "/v1/jobs")[1]["jobs"]}
    a_ids = {j["job_id"] for j in get(s, TOK["a"], "/v1/jobs")[1]["jobs"]}
    assert {a_done, a_run} <= a_ids and b_run not in a_ids
    assert get(s, TOK["r"], "/v1/jobs")[1]["jobs"] == []
    # streams: own only; the admin sees both with their tenants
    code, body = get(s, TOK["b"], "/v1/streams")
    assert code == 200 and {r["job_id"] for r in body["streams"]} == {b_run}
    code, body = get(s, ADMIN, "/v1/streams")
    assert {(r["job_id"], r["tenant"]) for r in body["streams"]} >= {(a_run, "a"), (b_run, "b")}
    # the admin sees everything, with the tenant field
    rows = {j["job_id"]: j["tenant"] for j in get(s, ADMIN, "/v1/jobs")[1]["jobs"]}
    assert rows[a_done] == "a" and rows[a_run] == "a" and rows[b_run] == "b"
    # an admin tenant sees and cancels any job
    assert get(s, TOK["sup"], f"/v1/jobs/{b_run}")[0] == 200
    # the snapshot the status page reads: B never sees A's ids (anywhere in the text)
    for token, mine, theirs in ((TOK["b"], b_run, [a_done, a_run]), (TOK["a"], a_run, [b_run])):
        code, snap = get(s, token, "/v1/status")
        assert code == 200 and mine in json.dumps(snap)
        assert not any(t in json.dumps(snap) for t in theirs)
        assert all(c["bytes"] is None for c in snap["components"])  # daemon-wide totals are the admin's
    snap = get(s, TOK["q"], "/v1/status")[1]
    assert [c["name"] for c in snap["components"]] == ["paced"]
    admin_snap = json.dumps(get(s, ADMIN, "/v1/status")[1])
    assert a_run in admin_snap and b_run in admin_snap
    # cancel: own job yes (202); the admin tenant cancels B's
    code, body = s.request("DELETE", f"/v1/jobs/{a_run}", headers=auth(TOK["a"]))
    assert code == 202 and body["cancel_requested"] is True
    code, body = s.request("DELETE", f"/v1/jobs/{b_run}", headers=auth(TOK["sup"]))
    assert code == 202
    assert wait_state(s, a_run, ("cancelled",))["tenant"] == "a"
    wait_state(s, b_run, ("cancelled",))


def _sse_events(port: int, token: str, want: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The first `want` status events of the feed, read with a deadline."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", "/v1/status/events?interval=0.2", headers=auth(token))
    r = conn.getresponse()
    assert r.status == 200, r.read()
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            line = r.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
    finally:
        conn.close()
    assert len(out) == want, f"{len(out)} of {want} events in {timeout}s"
    return out


def test_the_sse_feed_and_the_page_show_a_tenant_only_its_own(daemon: Server) -> None:
    s = daemon
    a_run = submit(s, TOK["a"], "paced", ["local", "big.bin"])
    b_run = submit(s, TOK["b"], "paced", ["local", "big.bin"])
    wait_streaming(s, a_run)
    wait_streaming(s, b_run)
    try:
        events = _sse_events(s.port, TOK["a"], 8)
        for ev in events:
            text = json.dumps(ev)
            assert b_run not in text, "tenant a saw b's job on its status feed"
            assert ev["tenant"] == "a" and all(j["tenant"] == "a" for j in ev["running"] + ev["queued"] + ev["recent"])
        assert any(a_run in [j["job_id"] for j in ev["running"]] for ev in events)  # it does see its own
        admin = _sse_events(s.port, ADMIN, 3)
        assert any({a_run, b_run} <= {j["job_id"] for j in ev["running"]} for ev in admin)
        # the page itself: static files with no data in them, the same for everyone
        for path in ("/", "/ui/status.js", "/ui/status.css"):
            plain = s.request("GET", path)
            assert plain[0] == 200
            for token in (TOK["a"], TOK["b"], "not-a-token-at-all-xx"):
                got = s.request("GET", path, headers=auth(token))
                assert got == plain and a_run not in got[1] and b_run not in got[1]
    finally:
        for jid, token in ((a_run, TOK["a"]), (b_run, TOK["b"])):
            s.request("DELETE", f"/v1/jobs/{jid}", headers=auth(token))
        wait_state(s, a_run, ("cancelled",))
        wait_state(s, b_run, ("cancelled",))


def test_max_jobs_is_429_until_jobs_end(daemon: Server) -> None:
    s = daemon
    first = submit(s, TOK["q"], "paced", ["local", "big.bin"])
    second = submit(s, TOK["q"], "paced", ["local", "big.bin"])
    code, body = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]},
                           headers=auth(TOK["q"]))
    assert (code, body) == (429, {"error": "tenant 'q' is at its quota tenants.q.max_jobs = 2 (queued and running)"})
    # another tenant is not held by q's quota
    other = submit(s, TOK["b"], "sha256", ["local", "small.bin"])
    wait_state(s, other, ("completed",))
    # a cancel ends one: room for one more, not two
    assert s.request("DELETE", f"/v1/jobs/{first}", headers=auth(TOK["q"]))[0] == 202
    wait_state(s, first, ("cancelled",))
    third = submit(s, TOK["q"], "paced", ["local", "big.bin"])
    assert s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]},
                     headers=auth(TOK["q"]))[0] == 429
    for jid in (second, third):
        assert s.request("DELETE", f"/v1/jobs/{jid}", headers=auth(TOK["q"]))[0] == 202
        wait_state(s, jid, ("cancelled",))
    # a job that completes frees its place too
    done = [submit(s, TOK["q"], "paced", ["local", "small.bin"]) for _ in range(2)]
    for jid in done:
        wait_state(s, jid, ("completed",))
    extra = submit(s, TOK["q"], "paced", ["local", "small.bin"])
    wait_state(s, extra, ("completed",))


# --- restarts, the store ----------------------------------------------------------------

def test_ownership_and_quota_survive_a_restart(tmp_path: Path, guests: dict[str, Path], state_dir: Path) -> None:
    (tmp_path / "blobs").mkdir()
    make_blob(tmp_path / "blobs", "small.bin", 100_000)
    make_blob(tmp_path / "blobs", "big.bin", 64 * 1024 * 1024)
    tenants = f"""
[tenants.w]
token = "{TOK['a']}"
max_jobs = 2
[tenants.x]
token = "{TOK['b']}"
"""
    cfg = tmp_path / "chunkd.toml"
    port = free_port()
    cfg.write_text(_config_text(tmp_path, port, guests, state_dir, tenants, f'auth_token = "{ADMIN}"'))
    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        done = submit(s, TOK["a"], "sha256", ["local", "small.bin"])
        wait_state(s, done, ("completed",))
        long = [submit(s, TOK["a"], "paced", ["local", "big.bin"]) for _ in range(2)]
        for jid in long:
            wait_streaming(s, jid)
        s.signal(signal.SIGTERM)
        assert s.wait_exit(60) == 0
    finally:
        s.stop()
    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        for jid in [done, *long]:
            assert get(s, TOK["a"], f"/v1/jobs/{jid}")[1]["tenant"] == "w"
            assert unknown_answer(s, TOK["b"], jid) == (404, {"error": f"no job {jid!r}"})
        assert {done, *long} <= {j["job_id"] for j in get(s, TOK["a"], "/v1/jobs")[1]["jobs"]}
        assert get(s, TOK["b"], "/v1/jobs")[1]["jobs"] == []
        # the resumed jobs count: still at the quota
        code, body = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]},
                               headers=auth(TOK["a"]))
        assert code == 429 and "tenants.w.max_jobs = 2" in body["error"]
        for jid in long:
            assert s.request("DELETE", f"/v1/jobs/{jid}", headers=auth(TOK["a"]))[0] == 202
            wait_state(s, jid, ("cancelled",))
        s.signal(signal.SIGTERM)
        assert s.wait_exit(60) == 0
    finally:
        s.stop()
    # the same tenant, now read-only: it reads its jobs, submits and cancels nothing
    cfg.write_text(cfg.read_text().replace("max_jobs = 2", 'role = "read"'))
    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        assert get(s, TOK["a"], f"/v1/jobs/{done}")[1]["state"] == "completed"
        assert s.request("POST", "/v1/jobs", {"component": "sha256", "args": []}, headers=auth(TOK["a"]))[0] == 403
        assert s.request("DELETE", f"/v1/jobs/{done}", headers=auth(TOK["a"]))[0] == 403
    finally:
        s.stop()


async def test_a_store_from_before_tenants_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE jobs (
        id TEXT PRIMARY KEY, component TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
        invoke_ok INTEGER, invoke_result TEXT, error TEXT, streams TEXT NOT NULL DEFAULT '[]',
        output TEXT NOT NULL DEFAULT '[]')""")
    db.execute("INSERT INTO jobs (id, component, args, state, created_at) VALUES ('old1', 'sha256', '[]', "
               "'completed', 1.0)")
    db.commit()
    db.close()
    store = SqliteJobStore(path)
    await store.open()
    try:
        old = await store.get("old1")
        assert old is not None and old["tenant"] is None
        rec = dict(old, id="new1", tenant="a", created_at=2.0)
        await store.save(rec)
        assert [r["id"] for r in await store.recent(10, None, "a")] == ["new1"]
        assert [r["id"] for r in await store.recent(10, "completed", "a")] == ["new1"]
        assert [r["id"] for r in await store.recent(10)] == ["new1", "old1"]
        assert await store.recent(10, None, "b") == []
    finally:
        await store.close()
    # opened again: nothing to add, nothing lost
    store = SqliteJobStore(path)
    await store.open()
    try:
        assert (await store.get("new1") or {}).get("tenant") == "a"
    finally:
        await store.close()


# --- the command line ---------------------------------------------------------------------

def test_the_cli_works_with_a_tenant_token(daemon: Server) -> None:
    import subprocess
    import sys

    from tests.service_support import ROOT

    def cli(token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chunkd", args[0], "--url", daemon.url, "--token", token,
                               *args[1:]], capture_output=True, text=True, timeout=120, cwd=ROOT)

    r = cli(TOK["a"], "submit", "--wait", "sha256", "local", "small.bin")
    assert r.returncode == 0 and "completed" in r.stdout, r.stderr
    r = cli(TOK["a"], "submit", "sha256", "local", "small.bin")
    job_id = r.stdout.strip()
    assert r.returncode == 0 and len(job_id) == 16, r.stderr
    wait_state(daemon, job_id, ("completed",))
    r = cli(TOK["a"], "status", job_id)
    assert r.returncode == 0 and "completed" in r.stdout, r.stderr
    r = cli(TOK["a"], "status")
    assert r.returncode == 0 and job_id in r.stdout
    r = cli(TOK["b"], "status")
    assert r.returncode == 0 and job_id not in r.stdout
    for cmd in ("status", "cancel"):
        r = cli(TOK["b"], cmd, job_id)
        assert r.returncode != 0 and f"no job '{job_id}'" in r.stderr, (cmd, r.stdout, r.stderr)
    r = cli(TOK["r"], "submit", "sha256", "local", "small.bin")
    assert r.returncode != 0 and "role 'read'" in r.stderr, r.stderr
    r = cli("not-a-token-at-all-xx", "status")
    assert r.returncode != 0 and "token" in r.stderr, r.stderr


# --- cluster mode -------------------------------------------------------------------------

def test_tenants_in_cluster_mode(tmp_path: Path, guests: dict[str, Path], state_dir: Path) -> None:
    from tests.cluster_support import NatsServer, start_node

    blobs = tmp_path / "blobs"
    blobs.mkdir()
    make_blob(blobs, "small.bin", 100_000)
    make_blob(blobs, "long.bin", 64 * 1024 * 1024)
    tenants = f"""
[tenants.a]
token = "{TOK['a']}"
max_jobs = 1
[tenants.b]
token = "{TOK['b']}"
"""
    nats = NatsServer(tmp_path / "nats-store", tmp_path / "nats.log").start()
    nodes: list[Server] = []
    try:
        for name in ("n1", "n2"):
            nodes.append(start_node(tmp_path, name, nats.url, guests, blobs, state_dir / "cache",
                                    extra_components=tenants, daemon_extra=f'auth_token = "{ADMIN}"'))
        n1, n2 = nodes
        long = submit(n1, TOK["a"], "paced", ["local", "long.bin"])
        # the quota holds across the cluster: at once on the same node, and from the other node
        # once its index has the record
        code, body = n1.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "small.bin"]},
                                headers=auth(TOK["a"]))
        assert (code, body) == (429, {"error": "tenant 'a' is at its quota tenants.a.max_jobs = 1 (queued and running)"})
        wait_for(lambda: get(n2, TOK["a"], f"/v1/jobs/{long}")[0] == 200, 30, 0.1, "n2 to know a's job")
        assert n2.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "small.bin"]},
                          headers=auth(TOK["a"]))[0] == 429
        b_job = submit(n2, TOK["b"], "sha256", ["local", "small.bin"])
        wait_state(n1, b_job, ("completed",))
        for node in nodes:
            # another tenant's job: the unknown id's answer, on every node; lists are its own
            assert unknown_answer(node, TOK["b"], long) == (404, {"error": f"no job {long!r}"})
            assert unknown_answer(node, TOK["b"], long, "DELETE") == (404, {"error": f"no job {long!r}"})
            assert {j["job_id"] for j in get(node, TOK["b"], "/v1/jobs")[1]["jobs"]} == {b_job}
            assert {j["job_id"] for j in get(node, TOK["a"], "/v1/jobs")[1]["jobs"]} == {long}
            assert {j["job_id"] for j in get(node, TOK["a"], "/v1/jobs?state=completed")[1]["jobs"]} == set()
            assert long not in json.dumps(get(node, TOK["b"], "/v1/status")[1])
            assert long not in json.dumps(get(node, TOK["b"], "/v1/streams")[1])
            rows = {j["job_id"]: j["tenant"] for j in get(node, ADMIN, "/v1/jobs")[1]["jobs"]}
            assert rows[long] == "a" and rows[b_job] == "b"
        assert get(n2, TOK["a"], f"/v1/jobs/{long}")[1]["tenant"] == "a"
        # a cancel from the other node ends it; the quota frees
        assert n2.request("DELETE", f"/v1/jobs/{long}", headers=auth(TOK["a"]))[0] == 202
        wait_state(n2, long, ("cancelled",))
        wait_for(lambda: n2.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "small.bin"]},
                                    headers=auth(TOK["a"]))[0] == 202, 30, 0.2, "a's quota to free on n2")
    finally:
        for node in nodes:
            node.stop()
        nats.stop()


def test_one_tenant_cannot_take_every_status_listener(daemon: Server) -> None:
    from chunkd.api import MAX_EVENT_CLIENTS_PER_TENANT

    conns: list[http.client.HTTPConnection] = []
    try:
        for _ in range(MAX_EVENT_CLIENTS_PER_TENANT):
            c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
            c.request("GET", "/v1/status/events?interval=10", headers=auth(TOK["a"]))
            r = c.getresponse()
            assert r.status == 200
            while not r.readline().startswith(b"data: "):  # counted once its first event came
                pass
            conns.append(c)
        code, body = get(daemon, TOK["a"], "/v1/status/events")
        assert (code, body) == (503, {"error": f"too many status listeners of tenant 'a' "
                                               f"(at most {MAX_EVENT_CLIENTS_PER_TENANT})"})
        assert _sse_events(daemon.port, TOK["b"], 1)  # another tenant still gets its page
    finally:
        for c in conns:
            c.close()

    def feed_status() -> int:
        c = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            c.request("GET", "/v1/status/events?interval=10", headers=auth(TOK["a"]))
            return c.getresponse().status
        finally:
            c.close()
    # the daemon sees a listener gone at its next write (interval 10 s): then a's page comes back
    wait_for(lambda: feed_status() == 200, 40, 0.5, "a's listeners to be let go")
