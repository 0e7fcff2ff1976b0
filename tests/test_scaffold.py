"""`chunkd new`: each supported (language, world) scaffold builds with its ./build.sh and
counts the lines of data/sample.txt; a missing blob is a clear invoke error, not a trap;
the refusals exit 2 with a message."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chunkd.cli import main
from chunkd.scaffold import SUPPORTED

REPO = Path(__file__).resolve().parent.parent
CASES = [(lang, world) for lang, worlds in SUPPORTED.items() for world in worlds]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    cargo_bin = Path.home() / ".cargo" / "bin"
    env["PATH"] = f"{cargo_bin}{os.pathsep}{env.get('PATH', '')}"
    env["COMPONENTIZE_PY"] = str(REPO / ".venv" / "bin" / "componentize-py")
    env["COMPONENTIZE_JS"] = str(REPO / "node_modules" / ".bin" / "componentize-js")
    env["NODE_MODULES"] = str(REPO / "node_modules")
    env["CARGO_TARGET_DIR"] = str(Path.home() / ".cache" / "chunkd" / "cargo-guests")
    env["PYTHONPATH"] = str(REPO)
    return env


def _chunkd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chunkd", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=240)


def _missing_tool(lang: str) -> str | None:
    env = _env()
    need = {"python": [env["COMPONENTIZE_PY"]],
            "js": [env["COMPONENTIZE_JS"], str(REPO / "node_modules" / ".bin" / "componentize-qjs")],
            "rust": ["cargo"], "c": ["clang", "wasm-ld", "node"]}[lang]
    for tool in need:
        if not shutil.which(tool, path=env["PATH"]):
            return tool
    if lang in ("c", "js") and not (REPO / "node_modules" / "@bytecodealliance" / "jco").is_dir():
        return "node_modules/@bytecodealliance/jco"
    return None


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("lang", "world"), CASES, ids=[f"{lang}-{world}" for lang, world in CASES])
def test_new_builds_and_counts_lines(tmp_path: Path, lang: str, world: str) -> None:
    tool = _missing_tool(lang)  # scripts/test installs every tool first: a missing one is a failure
    assert tool is None, f"no {tool} for the {lang} guests (scripts/build-guests installs it)"
    name = f"lines_{lang}_{world.replace('-', '_')}"
    t0 = time.monotonic()
    made = _chunkd(tmp_path, "new", "--lang", lang, "--world", world, name)
    assert made.returncode == 0, made.stderr
    proj = tmp_path / name
    for rel in ("wit/streams.wit", "build.sh", "data/sample.txt", "chunkd.toml", "README.md"):
        assert (proj / rel).is_file(), rel
    assert (proj / "wit" / "streams.wit").read_text() == (REPO / "wit" / "streams.wit").read_text()
    readme = (proj / "README.md").read_text()
    assert "./build.sh" in readme
    assert f"chunkd run --wasm {name}.wasm --dir local=data local sample.txt" in readme
    assert "{{" not in "".join(p.read_text() for p in proj.rglob("*") if p.is_file())

    built = subprocess.run(["./build.sh"], cwd=proj, env=_env(), capture_output=True, text=True, timeout=280)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (proj / f"{name}.wasm").is_file()

    ran = _chunkd(proj, "run", "--wasm", f"{name}.wasm", "--dir", "local=data", "local", "sample.txt")
    elapsed = time.monotonic() - t0
    lines = (proj / "data" / "sample.txt").read_bytes().count(b"\n")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"{lines}  sample.txt" in ran.stdout.splitlines(), ran.stdout
    print(f"\nchunkd new --lang {lang} --world {world}: new -> build -> first correct run in {elapsed:.1f} s")

    # several blobs in one job, an empty one too (the consumer world finds each blob's last chunk)
    (proj / "data" / "two.txt").write_bytes(b"a\nb\n")
    (proj / "data" / "empty.txt").write_bytes(b"")
    ran = _chunkd(proj, "run", "--wasm", f"{name}.wasm", "--dir", "local=data", "local", "two.txt",
                  "empty.txt", "sample.txt")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    said = ran.stdout.splitlines()
    assert {"2  two.txt", "0  empty.txt", f"{lines}  sample.txt"} <= set(said), ran.stdout

    bad = _chunkd(proj, "run", "--wasm", f"{name}.wasm", "--dir", "local=data", "local", "nope.txt")
    out = bad.stdout + bad.stderr
    assert bad.returncode == 1, out
    assert "no blob local/nope.txt" in out, out
    assert "trap" not in out.lower(), out


def test_new_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new", "--lang", "cobol", "--world", "consumer", "x"]) == 2
    assert "unknown language 'cobol'" in capsys.readouterr().err
    assert main(["new", "--lang", "python", "--world", "producer", "x"]) == 2
    assert "unknown world 'producer'" in capsys.readouterr().err
    assert main(["new", "--lang", "c", "--world", "consumer-streams", "x"]) == 2
    err = capsys.readouterr().err
    assert "not supported" in err and "async ABI" in err and "wit-bindgen" in err and "wasi-sdk" in err
    assert "python: consumer, consumer-with-events, consumer-streams" in err
    assert "c: consumer, consumer-with-events" in err
    assert main(["new", "--lang", "python", "--world", "consumer", "../x"]) == 2
    assert "bad name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

    (tmp_path / "taken").mkdir()
    assert main(["new", "--lang", "python", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not any((tmp_path / "taken").iterdir())

    assert main(["new", "--lang", "c", "fresh"]) == 0
    assert (tmp_path / "fresh" / "build.sh").stat().st_mode & 0o111
    assert "[components.fresh]" in (tmp_path / "fresh" / "chunkd.toml").read_text()
    assert (tmp_path / "fresh" / "data" / "sample.txt").read_text().count("\n") >= 3
