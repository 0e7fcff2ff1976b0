"""The live status page at GET / and its data: GET /v1/status and the server-sent
events of GET /v1/status/events, against a real daemon; then the page itself in
Debian's chromium, headless: progress rising, cancel from the page, the job cancelled."""
from __future__ import annotations

import hashlib
import http.client
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from selenium.webdriver.common.by import By

from tests.browser_support import headless_chromium
from tests.conftest import make_blob
from tests.service_support import Server, free_port, wait_for

TOKEN = "page-test-token"
RATE = 4 * 1024 * 1024  # the paced component's bytes/s
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def daemon(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> Iterator[Callable[..., Server]]:
    made: list[Server] = []
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    out = tmp_path / "out"
    out.mkdir()

    def make(rate: int = RATE) -> Server:
        port = free_port()
        cfg = tmp_path / "chunkd.toml"
        cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
auth_token = "{TOKEN}"
shutdown_grace = "5s"
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.paced]
path = "{guests['sha256']}"
max_bytes_per_second = {rate}
[components.sha256]
path = "{guests['sha256']}"
[containers.out]
kind = "file"
root = "{out}"
writable = true
[components.gzip]
path = "{guests['gzip']}"
""")
        s = Server(cfg, port, tmp_path / "daemon.log")
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


def wait_job(s: Server, job_id: str, timeout: float = 30) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        code, job = s.request("GET", f"/v1/jobs/{job_id}", headers=AUTH)
        assert code == 200, job
        return dict(job) if job["state"] in ("completed", "failed", "cancelled") else None
    job: dict[str, Any] = wait_for(ended, timeout, 0.1, f"job {job_id} to end")
    return job


def read_events(s: Server, n: int, interval: float = 0.2, timeout: float = 30) -> list[dict[str, Any]]:
    """The first n `status` events of one SSE connection."""
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=timeout)
    try:
        conn.request("GET", f"/v1/status/events?interval={interval}", headers=AUTH)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
        events: list[dict[str, Any]] = []
        event, data = "", []
        deadline = time.monotonic() + timeout
        while len(events) < n and time.monotonic() < deadline:
            line = resp.readline().decode().rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                if event == "status":
                    events.append(json.loads("\n".join(data)))
                event, data = "", []
        return events
    finally:
        conn.close()


def test_status_snapshot_events_and_auth(daemon: Callable[..., Server], tmp_path: Path) -> None:
    s = daemon()
    make_blob(tmp_path / "blobs", "big.bin", 24 * 1024 * 1024)
    # the page and its files need no token (they hold no data); the data does
    code, page = s.request("GET", "/")
    assert code == 200 and "<title>chunkd status</title>" in page
    assert s.request("GET", "/ui/status.js")[0] == 200 and s.request("GET", "/ui/status.css")[0] == 200
    assert s.request("GET", "/v1/status")[0] == 401
    assert s.request("GET", "/v1/status/events")[0] == 401
    assert s.request("GET", "/v1/status/events?interval=0.01", headers=AUTH)[0] == 400
    assert s.request("GET", "/v1/status/events?interval=x", headers=AUTH)[0] == 400

    code, done_id = s.request("POST", "/v1/jobs", {"component": "sha256", "args": ["local", "big.bin"]},
                              headers=AUTH)
    assert code == 202
    assert wait_job(s, done_id["job_id"], 60)["state"] == "completed"
    code, body = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]}, headers=AUTH)
    job_id = body["job_id"]
    wait_for(lambda: any(j["job_id"] == job_id and j["streams"]
                         for j in s.request("GET", "/v1/status", headers=AUTH)[1]["running"]), 30,
             what="the paced job in the snapshot")
    events = read_events(s, 8, interval=0.25)
    assert len(events) == 8
    seen = [next(st for j in e["running"] if j["job_id"] == job_id for st in j["streams"]) for e in events]
    assert all(b["bytes"] >= a["bytes"] for a, b in zip(seen, seen[1:]))
    assert seen[-1]["bytes"] > seen[0]["bytes"]  # progress rises between events
    last = seen[-1]
    assert last["size"] == 24 * 1024 * 1024 and last["blob"] == "big.bin" and last["total_chunks"] == 24
    # the rate is measured from the counts (paced at 4 MiB/s), the ETA follows from it
    assert 0.5 * RATE < last["rate"] < 2 * RATE, last["rate"]
    assert abs(last["eta_s"] - (last["size"] - last["bytes"]) / last["rate"]) < 0.01
    e = events[-1]
    assert e["budget"]["limit"] > 0 and 0 <= e["budget"]["in_use"] <= e["budget"]["limit"]
    comps = {c["name"]: c for c in e["components"]}
    assert comps["paced"]["running"] == 1 and comps["paced"]["rate"] > 0
    assert comps["sha256"]["bytes"] == 24 * 1024 * 1024  # the completed job's bytes, counted once
    assert any(r["job_id"] == done_id["job_id"] and r["state"] == "completed" for r in e["recent"])
    code, _ = s.request("DELETE", f"/v1/jobs/{job_id}", headers=AUTH)
    assert code == 202
    # a job that writes a blob back: its output in the job, and in the snapshot's recent jobs
    make_blob(tmp_path / "blobs", "small.bin", 300_000)
    code, gz = s.request("POST", "/v1/jobs", {"component": "gzip", "args": ["local", "small.bin", "out", "small.gz"]},
                         headers=AUTH)
    assert code == 202
    done = wait_job(s, gz["job_id"], 60)
    assert done["state"] == "completed", done
    (o,) = done["outputs"]
    assert (o["container"], o["name"], o["state"]) == ("out", "small.gz", "committed")
    assert o["bytes"] == (tmp_path / "out" / "small.gz").stat().st_size
    recent = wait_for(lambda: next((r for r in s.request("GET", "/v1/status", headers=AUTH)[1]["recent"]
                                    if r["job_id"] == gz["job_id"]), None), 10, what="the gzip job in recent")
    assert [(x["name"], x["state"]) for x in recent["outputs"]] == [("small.gz", "committed")]


def test_the_page_in_chromium_shows_progress_and_cancels(daemon: Callable[..., Server], tmp_path: Path) -> None:
    t0 = time.monotonic()
    s = daemon()
    data = make_blob(tmp_path / "blobs", "big.bin", 64 * 1024 * 1024)
    code, body = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]}, headers=AUTH)
    assert code == 202
    job_id = body["job_id"]
    timings: dict[str, float] = {"daemon_ready_s": time.monotonic() - t0}
    browser = headless_chromium(tmp_path / "profile")
    try:
        t1 = time.monotonic()
        browser.get(s.url + "/")
        # the page asks for the token once
        form = wait_for(lambda: browser.find_element(By.ID, "token-form").is_displayed()
                        and browser.find_element(By.ID, "token-form"), 20, 0.1, "the token form")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        bar = f'.job[data-job="{job_id}"] .stream [role="progressbar"]'

        def in_page(selector: str, what: str) -> str | None:
            """One read in the page's own JS: the page redraws its streams every update, so
            an element found by one WebDriver call may be gone by the next."""
            v = browser.execute_script(
                "const e = document.querySelector(arguments[0]);"
                "return e ? (arguments[1] === 'text' ? e.textContent : e.getAttribute(arguments[1])) : null;",
                selector, what)
            return None if v is None else str(v)

        def progress() -> float | None:
            v = in_page(bar, "aria-valuenow")
            return float(v) if v else None

        first = wait_for(lambda: (p := progress()) is not None and p > 0 and p, 30, 0.1, "the stream's progress")
        timings["progress_shown_s"] = time.monotonic() - t1
        later = wait_for(lambda: (p := progress()) is not None and p > first + 2 and p, 30, 0.1,
                         "the progress to rise")
        assert later < 100
        text = in_page(f'.job[data-job="{job_id}"] .figures', "text") or ""
        assert "big.bin" in browser.find_element(By.CSS_SELECTOR, f'.job[data-job="{job_id}"]').text
        assert "MiB of 64.0 MiB" in text and "chunks" in text and "/s" in text and "ETA" in text
        assert browser.find_element(By.ID, "conn").text == "live"
        assert not browser.find_element(By.ID, "token-form").is_displayed()  # asked once, then gone
        assert browser.find_element(By.CSS_SELECTOR, '#components tr[data-component="paced"]')
        browser.save_screenshot(str(tmp_path / "status-page.png"))
        # cancel from the page
        t2 = time.monotonic()
        browser.find_element(By.CSS_SELECTOR, f'button[data-cancel="{job_id}"]').click()
        job = wait_job(s, job_id)
        assert job["state"] == "cancelled"
        assert 0 < job["streams"][0]["bytes"] < len(data) and job["streams"][0]["end"] == "cancelled"
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#recent tr[data-job="{job_id}"] [data-state="cancelled"]'),
                 10, 0.1, "the page to list the job as cancelled")
        assert not browser.find_elements(By.CSS_SELECTOR, f'.job[data-job="{job_id}"]')
        timings["cancel_to_cancelled_on_page_s"] = time.monotonic() - t2
        browser.save_screenshot(str(tmp_path / "status-page-after-cancel.png"))
        # a job's output blob is listed with its state
        make_blob(tmp_path / "blobs", "small.bin", 200_000)
        code, gz = s.request("POST", "/v1/jobs", {"component": "gzip", "args": ["local", "small.bin", "out", "s.gz"]},
                             headers=AUTH)
        assert code == 202 and wait_job(s, gz["job_id"], 60)["state"] == "completed"
        out = f'#recent tr[data-job="{gz["job_id"]}"] [data-output="out/s.gz"]'
        shown = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, out), 10, 0.1, "the output on the page")
        assert "committed" in shown[0].text
    finally:
        browser.quit()
    timings["total_s"] = time.monotonic() - t0
    (tmp_path / "timings.json").write_text(json.dumps(timings))
    print("status page test timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    assert (tmp_path / "status-page.png").stat().st_size > 10_000
    assert hashlib.sha256(data).hexdigest()  # the blob was real data, not a sparse file
