"""The first sample every author copies, docs/guests.md's abridged Python guest, is
complete: extracted from the doc as is, built with componentize-py, run with
`chunkd run --wasm` on a folder, it prints the right digest, and a missing blob fails
the job with its reason instead of trapping."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def python_sample() -> str:
    text = (ROOT / "docs" / "guests.md").read_text()
    section = text.split("## Python (componentize-py)", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "docs/guests.md lost its Python sample"
    return m.group(1)


@pytest.mark.timeout(300)
def test_the_abridged_python_sample_builds_runs_and_fails_clearly(tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "app.py").write_text(python_sample())
    built = subprocess.run([str(ROOT / ".venv" / "bin" / "componentize-py"), "-d", str(ROOT / "wit"), "-w",
                            "consumer-with-events", "componentize", "app", "-o", str(tmp_path / "g.wasm")],
                           cwd=guest, capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    data = tmp_path / "data"
    data.mkdir()
    blob = os.urandom(2_500_000)
    (data / "b.bin").write_bytes(blob)
    env = {**os.environ, "CHUNKD_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "chunkd", "run", "--wasm", str(tmp_path / "g.wasm"),
                               "--dir", f"local={data}", *args], capture_output=True, text=True, env=env,
                              timeout=240)
    r = run("local", "b.bin")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{hashlib.sha256(blob).hexdigest()}  b.bin" in r.stdout.splitlines()
    r = run("local", "nope.bin")
    said = r.stdout + r.stderr
    assert r.returncode == 1 and "open local/nope.bin:" in said and "no blob 'nope.bin'" in said, said
    assert "trapped" not in said


@pytest.mark.timeout(300)
def test_a_guest_that_lets_a_non_string_err_escape_still_shows_the_reason(tmp_path: Path) -> None:
    """The sample as it was before: `blobs.open` not wrapped, so the Err(stream-error) escapes
    invoke and componentize-py traps (its payload is not a string). The job's error still
    names the reason: the last error chunkd returned to the guest, and the guest's stderr."""
    src = python_sample()
    careless = re.sub(r"try:  # a failed import.*?\n(\s+)stream = blobs.open\(container, name\)\n\s+except Err as e:\n"
                      r"\s+raise Err\(f\"open \{container\}/\{name\}: \{e.value\}\"\)\n",
                      r"stream = blobs.open(container, name)\n", src, flags=re.S)
    assert careless != src and "except Err as e:\n                raise Err(f\"open" not in careless
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "app.py").write_text(careless)
    built = subprocess.run([str(ROOT / ".venv" / "bin" / "componentize-py"), "-d", str(ROOT / "wit"), "-w",
                            "consumer-with-events", "componentize", "app", "-o", str(tmp_path / "g.wasm")],
                           cwd=guest, capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    (tmp_path / "data").mkdir()
    r = subprocess.run([sys.executable, "-m", "chunkd", "run", "--wasm", str(tmp_path / "g.wasm"), "--dir",
                        f"local={tmp_path / 'data'}", "local", "nope.txt"], capture_output=True, text=True,
                       env={**os.environ, "CHUNKD_CACHE": str(tmp_path / "cache")}, timeout=240)
    said = r.stdout + r.stderr
    assert r.returncode == 1 and "trapped" in said, said
    assert "the last error chunkd returned to the guest: open local/nope.txt: failed(no blob 'nope.txt'" in said
    assert "TypeError" in said  # componentize-py's own complaint, from the guest's stderr
