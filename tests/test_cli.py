"""`chunkd run` and `chunkd check`, called through main(argv) as a user would."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import structlog

from chunkd.cli import EXIT_CONFIG, EXIT_JOB_FAILED, EXIT_OK, main
from tests.conftest import WAT, make_blob


def write_config(tmp_path: Path, state_dir: Path, blobs: Path, components: dict[str, Path]) -> Path:
    comps = "".join(f'[components.{n}]\npath = "{p}"\n' for n, p in components.items())
    text = f"""
[daemon]
state_dir = "{state_dir}"
log_format = "json"
[limits]
call_timeout = "5s"
[containers.local]
kind = "file"
root = "{blobs}"
{comps}"""
    p = tmp_path / "chunkd.toml"
    p.write_text(text)
    return p


def test_run_prints_the_digest_and_exits_zero(tmp_path: Path, state_dir: Path, blobs: Path,
                                              guests: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    make_blob(blobs, "a.bin", 3 * 1024 * 1024 + 17)
    cfg = write_config(tmp_path, state_dir, blobs, {"sha256": guests["sha256"]})
    code = main(["run", "-c", str(cfg), "sha256", "local", "a.bin"])
    out, err = capsys.readouterr()
    digest = hashlib.sha256((blobs / "a.bin").read_bytes()).hexdigest()
    assert code == EXIT_OK
    assert f"{digest}  a.bin" in out.splitlines()
    assert "completed" in out
    # logs are JSON lines on stderr, each stream event carries component, job id and correlation id
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    ends = [e for e in events if e["event"] == "stream_ended"]
    assert ends and all({"component", "job_id", "correlation_id"} <= set(e) for e in ends)
    assert any(e["event"] == "guest_output" and digest in e["line"] for e in events)


def test_run_json_summary_and_failure_exit(tmp_path: Path, state_dir: Path, blobs: Path,
                                           guests: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, state_dir, blobs, {"sha256": guests["sha256"]})
    code = main(["run", "-c", str(cfg), "--json", "sha256", "local", "missing.bin"])
    out, _ = capsys.readouterr()
    assert code == EXIT_JOB_FAILED
    summary = json.loads(out[out.index("{"):])
    assert summary["state"] == "failed" and summary["invoke"]["ok"] is False
    assert "missing.bin" in summary["invoke"]["result"]


def test_run_cancelled_stream_is_not_success(tmp_path: Path, state_dir: Path, blobs: Path,
                                             guests: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    make_blob(blobs, "a.bin", 100_000)
    cfg = write_config(tmp_path, state_dir, blobs, {"cancel_after": guests["cancel_after"]})
    assert main(["run", "-c", str(cfg), "cancel_after", "local", "a.bin", "1000", "2"]) == EXIT_JOB_FAILED
    out, _ = capsys.readouterr()
    assert "chunk 0/100 1000 bytes" in out and "chunk 2/100" not in out


def test_run_unknown_component_and_bad_config(tmp_path: Path, state_dir: Path, blobs: Path,
                                              guests: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, state_dir, blobs, {"sha256": guests["sha256"]})
    assert main(["run", "-c", str(cfg), "nope"]) == EXIT_JOB_FAILED
    assert "no component named 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\ncall_timeout = 'x'\n")
    assert main(["run", "-c", str(bad), "sha256"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(bad) in err and "limits.call_timeout" in err


def test_check_accepts_consumers_and_refuses_bad_wasm_and_wrong_world(
        tmp_path: Path, state_dir: Path, blobs: Path, guests: dict[str, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path, state_dir, blobs, {"sha256": guests["sha256"], "plain": guests["cancel_after"]})
    assert main(["check", "-c", str(good)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "component sha256: ok: exports consumer-with-events" in out
    assert "component plain: ok: exports consumer " in out

    junk = tmp_path / "junk.wasm"
    junk.write_bytes(b"\0asm\x01\0\0\0garbage" + os.urandom(64))
    wrong = tmp_path / "wrong.wat"
    shutil.copy(WAT / "not-a-consumer.wat", wrong)
    half = tmp_path / "half.wat"
    shutil.copy(WAT / "trigger-only.wat", half)
    bad = write_config(tmp_path, state_dir, blobs, {"junk": junk, "wrong": wrong, "half": half,
                                                    "absent": tmp_path / "absent.wasm"})
    assert main(["check", "-c", str(bad)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert "component junk: FAIL" in out and "not a valid wasm" in out
    assert "component wrong: FAIL" in out and "not a chunkd consumer" in out
    assert "component half: FAIL" in out
    assert "component absent: FAIL" in out and "cannot read" in out


async def test_stream_log_events_carry_context(harness, blobs: Path) -> None:
    make_blob(blobs, "a.bin", 20_000)
    async with harness() as h:
        with structlog.testing.capture_logs() as logs:
            job = await h.run("probe", ["open s local a.bin", "start s 8192 42"])
    for name in ("stream_started", "stream_ended"):
        ev = [e for e in logs if e["event"] == name]
        assert ev and ev[0]["component"] == "probe" and ev[0]["job_id"] == job.id and ev[0]["correlation_id"] == 42
