"""Makes docs/status-page.png: a real daemon on loopback with a running paced job of
two streams, a queued job, ended jobs, and Debian's chromium (headless) on its page.
With --shares, docs/status-shares.png instead: three tenants sharing the daemon (alpha
weight 1, beta weight 3, both CPU-bound; gamma capped at 8 MiB/s), beta joining a
minute after alpha, and the page's Shares section after almost three minutes."""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from selenium.webdriver.common.by import By  # noqa: E402

from tests.browser_support import headless_chromium  # noqa: E402
from tests.service_support import Server, free_port, wait_for  # noqa: E402


TENANTS = {"alpha": "screenshot-alpha-token", "beta": "screenshot-beta-token-", "gamma": "screenshot-gamma-token"}


def shares(out: Path) -> None:
    guests = ROOT / "build" / "guests"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        blobs = tmp / "blobs"
        blobs.mkdir()
        with open(blobs / "scan.bin", "wb") as f:
            for _ in range(256):
                f.write(bytes(range(256)) * 4096)
        port = free_port()
        cfg = tmp / "chunkd.toml"
        cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
cache_dir = "{ROOT / 'state' / 'cache'}"
log_format = "json"
auth_token = "screenshot-admin-token"
shutdown_grace = "2s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256_c]
path = "{guests / 'sha256_c.wasm'}"
instances = 8
[tenants.alpha]
token = "{TENANTS['alpha']}"
weight = 1
max_jobs = 4
[tenants.beta]
token = "{TENANTS['beta']}"
weight = 3
max_jobs = 4
[tenants.gamma]
token = "{TENANTS['gamma']}"
max_bytes_per_second = "8MiB"
max_jobs = 2
""")
        s = Server(cfg, port, tmp / "daemon.log").start()
        stop = time.monotonic() + 170

        def keep(tenant: str, n: int) -> None:
            """`n` jobs of `tenant` at once until `stop`."""
            auth = {"Authorization": f"Bearer {TENANTS[tenant]}"}
            live: list[str] = []
            while time.monotonic() < stop:
                live = [j for j in live if s.request("GET", f"/v1/jobs/{j}", headers=auth)[1]["state"]
                        in ("queued", "running")]
                while len(live) < n:
                    code, body = s.request("POST", "/v1/jobs", {"component": "sha256_c",
                                                                "args": ["local", "scan.bin"]}, headers=auth)
                    assert code == 202, body
                    live.append(body["job_id"])
                time.sleep(0.5)
            for j in live:
                s.request("DELETE", f"/v1/jobs/{j}", headers=auth)

        try:
            s.request("GET", "/v1/status", headers={"Authorization": "Bearer screenshot-admin-token"})
            threads = [threading.Thread(target=keep, args=("alpha", 3)),
                       threading.Thread(target=keep, args=("gamma", 1))]
            for t in threads:
                t.start()
            time.sleep(60)  # alpha alone (but gamma's capped trickle), then beta joins with 3x the weight
            threads.append(threading.Thread(target=keep, args=("beta", 3)))
            threads[-1].start()
            browser = headless_chromium(tmp / "profile", 1200, 1000)
            try:
                browser.get(s.url + "/")
                browser.execute_script("sessionStorage.setItem('chunkd-token', 'screenshot-admin-token');")
                browser.get(s.url + "/")
                time.sleep(max(0.0, stop - 8 - time.monotonic()))
                out.parent.mkdir(parents=True, exist_ok=True)
                browser.find_element(By.ID, "shares-section").screenshot(str(out))
            finally:
                browser.quit()
            for t in threads:
                t.join()
        finally:
            s.stop()
    print(f"wrote {out}")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--shares"]:
        return shares(Path(args[1]) if len(args) > 1 else ROOT / "docs" / "status-shares.png")
    out = Path(args[0]) if args else ROOT / "docs" / "status-page.png"
    guests = ROOT / "build" / "guests"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        blobs = tmp / "blobs"
        blobs.mkdir()
        for name, mib in (("genome.fa", 96), ("reads.fastq", 160), ("small.bin", 8)):
            with open(blobs / name, "wb") as f:
                for _ in range(mib):
                    f.write(bytes(range(256)) * 4096)
        port = free_port()
        cfg = tmp / "chunkd.toml"
        cfg.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{tmp / 'state'}"
cache_dir = "{ROOT / 'state' / 'cache'}"
log_format = "json"
shutdown_grace = "2s"
[containers.local]
kind = "file"
root = "{blobs}"
[components.sha256]
path = "{guests / 'sha256.wasm'}"
max_bytes_per_second = "24MiB"
[components.sha256_c]
path = "{guests / 'sha256_c_core.wasm'}"
""")
        s = Server(cfg, port, tmp / "daemon.log").start()
        try:
            s.wait_job(s.submit("sha256_c", ["local", "small.bin", "genome.fa"]))
            gone = s.submit("sha256", ["local", "small.bin"])
            time.sleep(0.2)
            s.request("DELETE", f"/v1/jobs/{gone}")
            s.wait_job(gone)
            s.wait_job(s.submit("sha256_c", ["local", "nope.bin"]))
            running = s.submit("sha256", ["local", "genome.fa", "reads.fastq"])
            s.submit("sha256", ["local", "small.bin"])  # queued behind it: one instance
            browser = headless_chromium(tmp / "profile", 1200, 1000)
            try:
                browser.get(s.url + "/")
                wait_for(lambda: browser.execute_script(
                    "const b = document.querySelector('.job .stream [role=progressbar]');"
                    "return b && parseFloat(b.getAttribute('aria-valuenow')) > 20"), 60, 0.2, "progress")
                time.sleep(1.2)  # one more update: rates from two samples
                out.parent.mkdir(parents=True, exist_ok=True)
                browser.save_screenshot(str(out))
            finally:
                browser.quit()
            s.request("DELETE", f"/v1/jobs/{running}")
        finally:
            s.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
