"""What the user sees when invoke's error is not a string, with real guests built here.

invoke's WIT error type is `string`. componentize-py (`raise Err(42)`) and componentize-js
(`throw 42`, `throw new Error("...")`) cannot lower anything else: their bindings write a
TypeError-like line to stderr and trap, and the value never leaves the guest. The job's
error then carries what the guest did say (that stderr line: the value's type), and a
plain-words explanation of the cause and the fix. An ordinary exception raised in invoke
is different: componentize-py prints its traceback, so its message does reach the user.
(docs/guests.md, "When invoke's error is not a string", says why the value cannot.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chunkd.host.instance import NON_STRING_ERR_HINT

ROOT = Path(__file__).resolve().parent.parent

PY_GUEST = '''
from wit_world import exports
from componentize_py_types import Err

class Trigger(exports.Trigger):
    def invoke(self, args: list[str]) -> str:
        if args[0] == "int":
            raise Err(42)
        if args[0] == "exception":
            raise ValueError("boom 4242")
        raise Err("plain text 4343")

class ChunkedStreamHandler(exports.ChunkedStreamHandler):
    def handle_chunk(self, stream, correlation_id, current_chunk, total_chunks, data: bytes) -> bool:
        return True
'''

JS_GUEST = '''
export const trigger = {
  invoke(args) {
    if (args[0] === 'number') throw 42;
    if (args[0] === 'error') throw new Error('boom 4242');
    throw 'plain text 4343';
  },
};
export const chunkedStreamHandler = {
  handleChunk(stream, correlationId, currentChunk, totalChunks, data) { return true; },
};
'''


def _run(wasm: Path, tmp_path: Path, *args: str) -> str:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "chunkd", "run", "--wasm", str(wasm), "--dir", f"local={data}", *args],
                       capture_output=True, text=True, env={**os.environ, "CHUNKD_CACHE": str(tmp_path / "cache")},
                       timeout=240)
    said = r.stdout + r.stderr
    assert r.returncode == 1, said
    job_lines = [line for line in r.stdout.splitlines() if line.startswith("job ")]
    assert job_lines, said
    return job_lines[-1]  # "job ID: failed (REASON), attempt 1 in ..."


@pytest.mark.timeout(300)
def test_python_err_with_a_non_string_payload(tmp_path: Path) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "app.py").write_text(PY_GUEST)
    built = subprocess.run([str(ROOT / ".venv" / "bin" / "componentize-py"), "-d", str(ROOT / "wit"), "-w", "consumer",
                            "componentize", "app", "-o", str(tmp_path / "g.wasm")],
                           cwd=tmp_path / "g", capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    wasm = tmp_path / "g.wasm"

    said = _run(wasm, tmp_path, "int")
    assert "invoke trapped" in said and NON_STRING_ERR_HINT in said, said
    assert "'int' object is not an instance of 'str'" in said, said  # the guest's own words: the type
    assert said.count("wasm trap") == 1, said

    said = _run(wasm, tmp_path, "exception")  # an ordinary exception: its traceback carries the text
    assert "invoke trapped" in said and "ValueError: boom 4242" in said, said
    assert NON_STRING_ERR_HINT not in said, said

    said = _run(wasm, tmp_path, "text")
    assert "invoke returned error: plain text 4343" in said and "trap" not in said, said


@pytest.mark.timeout(300)
def test_js_throw_of_a_non_string(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text(JS_GUEST)
    built = subprocess.run([str(ROOT / "node_modules" / ".bin" / "componentize-js"), str(tmp_path / "app.js"),
                            "--wit", str(ROOT / "wit"), "--world-name", "consumer", "--disable", "http", "fetch-event",
                            "-o", str(tmp_path / "g.wasm")], capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stderr[-2000:]
    wasm = tmp_path / "g.wasm"

    said = _run(wasm, tmp_path, "number")
    assert "invoke trapped" in said and NON_STRING_ERR_HINT in said, said
    assert "expected a string, received [number]" in said, said

    said = _run(wasm, tmp_path, "error")  # an Error object is not a string either: its message is lost too
    assert NON_STRING_ERR_HINT in said and "received [object]" in said, said

    said = _run(wasm, tmp_path, "text")
    assert "invoke returned error: plain text 4343" in said and "trap" not in said, said
