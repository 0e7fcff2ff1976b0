"""`chunkd run --wasm` (a guest on local folders with no config) and `chunkd wit` (the WIT
package guests build against), as a user runs them: the real CLI in a subprocess."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def chunkd(*argv: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHUNKD_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "chunkd", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_run_a_guest_on_a_folder_with_no_config(tmp_path: Path, guests: dict[str, Path]) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    blob = os.urandom(300_000)
    (data / "a.bin").write_bytes(blob)
    cache = tmp_path / "cache"
    r = chunkd("run", "--wasm", str(guests["sha256_c"]), "--dir", "local=data", "local", "a.bin",
               cwd=tmp_path, cache=cache)
    assert r.returncode == 0, r.stderr
    assert f"{hashlib.sha256(blob).hexdigest()}  a.bin" in r.stdout.splitlines()
    assert list((cache / "compile" / "native").glob("*.cwasm"))  # compiled once, kept for the next run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "out"]  # nothing else written
    # a writable folder for outputs
    r = chunkd("run", "--wasm", str(guests["copy_rs"]), "--dir", "local=data", "--out", "out=out",
               "local", "a.bin", "out", "copy.bin", cwd=tmp_path, cache=cache)
    assert r.returncode == 0, r.stderr
    assert (out / "copy.bin").read_bytes() == blob and "output out/copy.bin: committed" in r.stdout
    # a missing blob: the job fails and says why
    r = chunkd("run", "--wasm", str(guests["sha256_c"]), "--dir", "local=data", "local", "nope.bin",
               cwd=tmp_path, cache=cache)
    assert r.returncode == 1 and "no blob 'nope.bin' in container 'local'" in r.stdout + r.stderr


def test_run_wasm_refuses_bad_arguments_clearly(tmp_path: Path, guests: dict[str, Path]) -> None:
    for argv, said in ((["--dir", "bad"], "--dir wants NAME=FOLDER"),
                       (["--dir", "x=/nonexistent-folder"], "not a folder"),
                       (["--dir", "x=.", "--out", "x=."], "given twice")):
        r = chunkd("run", "--wasm", str(guests["sha256_c"]), *argv, cwd=tmp_path, cache=tmp_path / "c")
        assert r.returncode == 2 and said in r.stderr, (argv, r.stderr)
    r = chunkd("run", cwd=tmp_path, cache=tmp_path / "c")
    assert r.returncode == 2 and "--wasm GUEST.wasm" in r.stderr
    r = chunkd("run", "--wasm", str(tmp_path / "missing.wasm"), "--dir", "x=.", cwd=tmp_path, cache=tmp_path / "c")
    assert r.returncode != 0 and "missing.wasm" in r.stdout + r.stderr


def test_wit_prints_and_writes_the_package(tmp_path: Path) -> None:
    r = chunkd("wit", cwd=tmp_path, cache=tmp_path / "c")
    assert r.returncode == 0 and r.stdout == (ROOT / "wit" / "streams.wit").read_text()
    assert r.stdout.startswith("package chunkd:streams@")
    r = chunkd("wit", "--out", "guest/wit", cwd=tmp_path, cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "guest" / "wit" / "streams.wit").read_text() == (ROOT / "wit" / "streams.wit").read_text()
