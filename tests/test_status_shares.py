"""The status page's shares: each flow's (tenant's) bytes per second over the last
minutes, beside its weight and quota. The ring of samples on its own; then a real daemon
with two tenants whose jobs run: the snapshot's series (the admin's view: both; a
tenant's: its own), and the page in Debian's chromium, headless: one SVG chart per
tenant with non-zero data, a tenant's token showing its own row only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from chunkd.status import ShareHistory
from tests.browser_support import headless_chromium
from tests.conftest import make_blob
from tests.service_support import Server, free_port, wait_for

ADMIN = "shares-admin-token-0123"
TOKENS = {"alpha": "shares-alpha-token-0123", "beta": "shares-beta-token-01234"}
RATE = 4 * 1024 * 1024  # the paced component's bytes/s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_share_history_rates_from_samples() -> None:
    h = ShareHistory(step_s=2.0, span_s=6.0)
    assert h.rates() == {}
    h.sample(0.0, {"a": 0})
    h.sample(2.0, {"a": 2000, "b": 600})  # b seen first: it delivered 600 since the last sample
    h.sample(4.0, {"a": 2000, "b": 1000})
    h.sample(6.0, {"a": 500, "b": 1000})  # a was reset: its new count is that step's
    assert h.rates() == {"a": [1000.0, 0.0, 250.0], "b": [300.0, 200.0, 0.0]}
    h.sample(8.0, {"b": 3000})  # the ring holds span/step + 1 samples: the oldest goes
    assert len(h.samples) == 4
    assert h.rates() == {"a": [0.0, 250.0, 0.0], "b": [200.0, 0.0, 1000.0]}


@pytest.fixture
def daemon(tmp_path: Path, state_dir: Path, guests: dict[str, Path]) -> Iterator[Server]:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    make_blob(blobs, "big.bin", 96 * 1024 * 1024)
    port = free_port()
    cfg = tmp_path / "chunkd.toml"
    cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp_path / 'state'}"
cache_dir = "{state_dir / 'cache'}"
log_format = "json"
auth_token = "{ADMIN}"
shutdown_grace = "5s"
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.paced]
path = "{guests['sha256_c']}"
instances = 2
max_bytes_per_second = {RATE}
[tenants.alpha]
token = "{TOKENS['alpha']}"
weight = 1
max_jobs = 3
max_bytes_per_second = "64MiB"
[tenants.beta]
token = "{TOKENS['beta']}"
weight = 3
""")
    s = Server(cfg, port, tmp_path / "daemon.log").start()
    try:
        yield s
    finally:
        s.stop()


def status(s: Server, token: str) -> dict[str, Any]:
    code, body = s.request("GET", "/v1/status", headers=auth(token))
    assert code == 200, body
    return dict(body)


def test_shares_in_the_snapshot_and_the_page(daemon: Server, tmp_path: Path) -> None:
    s = daemon
    jobs = {}
    for tenant, token in TOKENS.items():
        code, body = s.request("POST", "/v1/jobs", {"component": "paced", "args": ["local", "big.bin"]},
                               headers=auth(token))
        assert code == 202, body
        jobs[tenant] = body["job_id"]

    def both_moving() -> dict[str, Any] | None:
        flows = status(s, ADMIN)["shares"]["flows"]
        return flows if all(any(r > 0 for r in flows[t]["rates"]) for t in TOKENS) else None
    flows = wait_for(both_moving, 30, 0.25, "both tenants' bytes per second in the snapshot")
    snap = status(s, ADMIN)
    assert snap["shares"]["step_s"] > 0 and snap["shares"]["span_s"] >= 60
    a, b = flows["alpha"], flows["beta"]
    assert (a["tenant"], a["weight"], b["weight"]) == ("alpha", 1, 3)
    assert a["quota"] == {"max_bytes_per_second": 64 * 1024 * 1024, "max_jobs": 3, "max_buffered_bytes": 0}
    assert a["jobs"] == 1 and b["jobs"] == 1 and a["bytes"] > 0 and b["bytes"] > 0
    assert max(a["rates"]) <= 2 * RATE  # the component's pace holds: rates are bytes per second
    # a tenant's token: its own flow only
    assert list(status(s, TOKENS["alpha"])["shares"]["flows"]) == ["alpha"]
    assert list(status(s, TOKENS["beta"])["shares"]["flows"]) == ["beta"]

    browser = headless_chromium(tmp_path / "profile", 1200, 1000)
    try:
        browser.get(s.url + "/")
        browser.execute_script("sessionStorage.setItem('chunkd-token', arguments[0]);", ADMIN)
        browser.get(s.url + "/")

        def charts() -> dict[str, dict[str, Any]]:
            got = browser.execute_script("""
                const out = {};
                for (const svg of document.querySelectorAll('#shares svg.share-chart')) {
                  const row = svg.closest('tr');
                  out[svg.dataset.flow] = {points: +svg.dataset.points, peak: +svg.dataset.peak,
                    paths: svg.querySelectorAll('path.line').length, d: (svg.querySelector('path.line') || {}).getAttribute?.('d') || '',
                    quota: row.querySelector('.quota-text').textContent, weight: row.children[1].textContent};
                }
                return out;""")
            return dict(got or {})

        shown = wait_for(lambda: (c := charts()) and all(t in c and c[t]["peak"] > 0 for t in TOKENS) and c,
                         30, 0.2, "a chart with data for each tenant")
        for t in TOKENS:
            assert shown[t]["points"] >= 1 and shown[t]["paths"] == 1 and shown[t]["d"].startswith("M")
        assert shown["alpha"]["weight"] == "1" and shown["beta"]["weight"] == "3"
        assert "jobs 1/3" in shown["alpha"]["quota"] and "64.0 MiB/s" in shown["alpha"]["quota"]
        assert "no rate cap" in shown["beta"]["quota"]
        browser.save_screenshot(str(tmp_path / "shares.png"))
        # a tenant's token in the same page: its row only
        browser.execute_script("sessionStorage.setItem('chunkd-token', arguments[0]);", TOKENS["beta"])
        browser.get(s.url + "/")
        only = wait_for(lambda: (c := charts()) and "beta" in c and c, 30, 0.2, "beta's chart")
        assert list(only) == ["beta"]
    finally:
        browser.quit()
    for tenant, job_id in jobs.items():
        assert s.request("DELETE", f"/v1/jobs/{job_id}", headers=auth(TOKENS[tenant]))[0] == 202
    assert (tmp_path / "shares.png").stat().st_size > 10_000
