"""Makes docs/status-page.png: a real daemon on loopback with a running paced job of
two streams, a queued job, ended jobs, and Debian's chromium (headless) on its page."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser_support import headless_chromium  # noqa: E402
from tests.service_support import Server, free_port, wait_for  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "status-page.png"
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
