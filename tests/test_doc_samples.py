"""Every code sample in docs/guests.md is complete: extracted from the doc as is, built with
its language's tool, run with `chunkd run` on a folder, it prints the right answer, and a
missing blob fails the job with its reason instead of trapping.

A sample is a fenced block (python, js, rust, c, toml) preceded by a marker line
`<!-- sample: NAME WORLD FILE -->`; blocks with the same NAME make one guest project (a
Rust sample without its own Cargo.toml uses rust-lines's). A block of those languages
without a marker, or a sample this file does not know, fails the test: none goes unbuilt."""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "guests.md"
CODE_LANGS = ("python", "js", "rust", "c", "toml")
MARKER = re.compile(r"<!-- sample: (\S+) (\S+) (\S+) -->")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


@dataclass
class Sample:
    name: str
    world: str
    files: dict[str, str] = field(default_factory=dict)
    lang: str = ""


def samples() -> dict[str, Sample]:
    text = DOC.read_text()
    found: dict[str, Sample] = {}
    unmarked = []
    for m in BLOCK.finditer(text):
        lang = m.group(1)
        if lang not in CODE_LANGS:
            continue
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARKER.fullmatch(before.strip())
        if not mark:
            unmarked.append(m.group(2).splitlines()[0])
            continue
        name, world, path = mark.groups()
        s = found.setdefault(name, Sample(name, world))
        assert s.world == world, f"sample {name}: two worlds"
        s.files[path] = m.group(2)
        if lang != "toml":
            s.lang = lang
    assert not unmarked, f"docs/guests.md has code blocks with no sample marker: {unmarked}"
    return found


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path.home() / '.cargo' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["CARGO_TARGET_DIR"] = str(Path.home() / ".cache" / "chunkd" / "cargo-guests")
    env["CHUNKD_CACHE"] = str(tmp / "cache")
    return env


def _sh(argv: list[str], cwd: Path, tmp: Path) -> None:
    r = subprocess.run(argv, cwd=cwd, env=_env(tmp), capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, f"{argv}: {r.stdout[-2000:]}{r.stderr[-3000:]}"


def build(s: Sample, all_samples: dict[str, Sample], proj: Path, tmp: Path) -> list[Path]:
    """Writes the sample's files into proj (with the WIT in proj/wit), builds it and returns
    the guests built (C: the core module and the component)."""
    shutil.copytree(ROOT / "wit", proj / "wit")
    files = dict(s.files)
    if s.lang == "rust" and "Cargo.toml" not in files:
        files["Cargo.toml"] = all_samples["rust-lines"].files["Cargo.toml"]
    for rel, text in files.items():
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(text)
    out = proj / "guest.wasm"
    if s.lang == "python":
        _sh([str(ROOT / ".venv" / "bin" / "componentize-py"), "-d", "wit", "-w", s.world, "componentize",
             Path(next(iter(s.files))).stem, "-o", str(out)], proj, tmp)
    elif s.lang == "js":
        _sh([str(ROOT / "node_modules" / ".bin" / "componentize-js"), next(iter(s.files)), "--wit", "wit",
             "--world-name", s.world, "--disable", "http", "fetch-event", "-o", str(out)], proj, tmp)
    elif s.lang == "rust":
        _sh(["cargo", "build", "-q", "--release", "--target", "wasm32-wasip2"], proj, tmp)
        crate = re.search(r'^name = "([^"]+)"', files["Cargo.toml"], re.M)
        assert crate
        shutil.copy(Path(_env(tmp)["CARGO_TARGET_DIR"]) / "wasm32-wasip2" / "release" / f"{crate.group(1)}.wasm", out)
    elif s.lang == "c":
        core = proj / "core.wasm"
        _sh(["clang", "--target=wasm32", "-nostdlib", "-O2", "-fno-builtin", "-Wl,--no-entry", "-o", str(core),
             next(iter(s.files))], proj, tmp)
        _sh(["node", str(ROOT / "scripts" / "lib" / "componentize-core.mjs"), str(core), "wit", s.world, str(out)],
            proj, tmp)
        return [core, out]
    else:
        raise AssertionError(f"sample {s.name}: no language")
    return [out]


def run(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunkd", "run", *argv], cwd=tmp, env=_env(tmp),
                          capture_output=True, text=True, timeout=240)


TEXT = b"one\ntwo\nthree\nHello, World\n"
BLOB = (hashlib.sha256(b"seed").hexdigest() + "\n").encode() * 20_000  # 1.3 MB: two chunks of 1 MiB
BLOB_LINES = f"{BLOB.count(10)}  b.bin"


def _rot13(data: bytes) -> bytes:
    return bytes((b - 65 + 13) % 26 + 65 if 65 <= b <= 90 else (b - 97 + 13) % 26 + 97 if 97 <= b <= 122 else b
                 for b in data)


# sample -> (args, the lines it must print | None, check of the output folder | None)
CASES = {
    "py-sha256": (["local", "b.bin", "a.txt"], [f"{hashlib.sha256(BLOB).hexdigest()}  b.bin",
                                                f"{hashlib.sha256(TEXT).hexdigest()}  a.txt"], None),
    "py-streams-sha256": (["local", "b.bin"], [f"{hashlib.sha256(BLOB).hexdigest()}  b.bin"], None),
    "js-lines": (["local", "a.txt", "b.bin"], ["4  a.txt", BLOB_LINES], None),
    "c-lines": (["local", "a.txt", "b.bin"], ["4  a.txt", BLOB_LINES], None),
    "rust-lines": (["local", "a.txt", "b.bin"], ["4  a.txt", BLOB_LINES], None),
    "rust-streams-lines": (["local", "a.txt", "b.bin"], ["4  a.txt", BLOB_LINES], None),
    "py-gzip": (["local", "b.bin", "out", "b.gz"], ["gzip b.bin: done"],
                lambda out: gzip.decompress((out / "b.gz").read_bytes()) == BLOB),
    "rust-rot13": (["local", "a.txt", "out", "a.rot"], ["rot13 a.txt -> out/a.rot"],
                   lambda out: (out / "a.rot").read_bytes() == _rot13(TEXT)),
    "js-copy": (["local", "b.bin", "out", "copy.bin"], ["copy b.bin: done"],
                lambda out: (out / "copy.bin").read_bytes() == BLOB),
}
GUESTS = sorted(CASES)


def test_every_sample_is_marked_and_known() -> None:
    found = samples()
    assert sorted(n for n in found if n != "config") == GUESTS, "a sample in docs/guests.md is not tested here"
    assert "config" in found
    for n in GUESTS:
        assert found[n].lang, f"sample {n} has no code"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", GUESTS)
def test_doc_sample_builds_and_answers(tmp_path: Path, name: str) -> None:
    found = samples()
    s = found[name]
    proj = tmp_path / "proj"
    proj.mkdir()
    guests = build(s, found, proj, tmp_path)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "a.txt").write_bytes(TEXT)
    (data / "b.bin").write_bytes(BLOB)
    args, lines, check = CASES[name]
    for wasm in guests:
        r = run(tmp_path, "--wasm", str(wasm), "--dir", f"local={data}", "--out", f"out={out}", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        printed = r.stdout.splitlines()
        for line in lines:
            assert line in printed, (wasm.name, line, r.stdout)
        if check:
            assert check(out), r.stdout
        # a missing blob: the job fails with its reason, and nothing traps
        bad = ["local", "nope.txt"] + args[2:]
        r = run(tmp_path, "--wasm", str(wasm), "--dir", f"local={data}", "--out", f"out={out}", *bad)
        said = r.stdout + r.stderr
        assert r.returncode == 1, said
        assert "no blob 'nope.txt' in container 'local'" in said and "trap" not in said.lower(), said
    if name == "py-sha256":
        _the_config_sample_runs_it(found["config"], guests[0], tmp_path)


def _the_config_sample_runs_it(config: Sample, wasm: Path, tmp_path: Path) -> None:
    """docs/guests.md's config, written beside a data folder and the guest as mine.wasm."""
    (rel, text), = config.files.items()
    where = tmp_path / "conf"
    shutil.copytree(tmp_path / "data", where / "data")
    shutil.copy(wasm, where / "mine.wasm")
    (where / rel).write_text(text)
    r = subprocess.run([sys.executable, "-m", "chunkd", "check", "-c", rel], cwd=where, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(where, "-c", rel, "mine", "local", "b.bin")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{hashlib.sha256(BLOB).hexdigest()}  b.bin" in r.stdout.splitlines()


@pytest.mark.timeout(300)
def test_a_guest_that_lets_a_non_string_err_escape_still_shows_the_reason(tmp_path: Path) -> None:
    """The Python sample made careless: `blobs.open` not wrapped, so the Err(stream-error)
    escapes invoke and componentize-py traps (its payload is not a string). The job's error
    still names the reason: the last error chunkd returned to the guest, and the guest's
    stderr."""
    src = samples()["py-sha256"].files["app.py"]
    careless = re.sub(r"try:  # a failed import.*?\n(\s+)stream = blobs.open\(container, name\)\n\s+except Err as e:\n"
                      r"\s+raise Err\(f\"open \{container\}/\{name\}: \{why\(e\)\}\"\)\n",
                      r"stream = blobs.open(container, name)\n", src, flags=re.S)
    assert careless != src and "except Err as e:\n                raise Err(f\"open" not in careless
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "app.py").write_text(careless)
    _sh([str(ROOT / ".venv" / "bin" / "componentize-py"), "-d", str(ROOT / "wit"), "-w", "consumer-with-events",
         "componentize", "app", "-o", str(tmp_path / "g.wasm")], guest, tmp_path)
    (tmp_path / "data").mkdir()
    r = run(tmp_path, "--wasm", str(tmp_path / "g.wasm"), "--dir", f"local={tmp_path / 'data'}", "local", "nope.txt")
    said = r.stdout + r.stderr
    assert r.returncode == 1 and "trapped" in said, said
    assert "the last error chunkd returned to the guest: open local/nope.txt: failed(no blob 'nope.txt'" in said
    assert "TypeError" in said  # componentize-py's own complaint, from the guest's stderr
