"""Guests that write blobs back (issue 25), on the real guests and the real runtime.

The example guests of both worlds: examples/gzip (Python, handle-chunk world:
blobs.create, output-stream.write/finish) compresses a blob into a new one,
examples/transform-rs (Rust, streams world: write-blob with a stream<u8>) writes
the ROT13 of a blob, and examples/copy-js (JavaScript, handle-chunk world) copies
it. All write into a file container `out` with `writable = true`; their outputs
are checked byte for byte against Python's gzip, bytes.translate and the input. A container that is not writable fails the job with a clear
error and leaves nothing behind.
"""
from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chunkd.errors import GuestTrap
from chunkd.jobs import COMPLETED, FAILED
from tests.conftest import GUESTS, ROOT, make_blob

MINE = ("gzip", "transform_rs", "copy_js")
CHUNK = 65536
# tr 'A-Za-z' 'N-ZA-Mn-za-m'
ROT13 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                        b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")


GUESTS_ = list(MINE)


@pytest.fixture(scope="module")
def writers() -> dict[str, dict[str, Any]]:
    """The two writing guests as harness components (built when missing or stale: a
    no-op when build/guests already has them)."""
    subprocess.run([str(ROOT / "scripts" / "build-guests"), *MINE], check=True)
    return {n: {"path": str(GUESTS / f"{n}.wasm")} for n in MINE}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def out_container(root: Path, writable: bool = True) -> dict[str, dict[str, Any]]:
    return {"out": {"kind": "file", "root": str(root), "writable": writable}}


LIMITS = {"call_timeout": "30s"}  # 2 shared cores: a 1 MiB chunk through zlib in wasm, with margin


def left_in(folder: Path) -> list[str]:
    """Everything in `folder` and below (temp files included, hidden or not)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def text_blob(blobs: Path, name: str, size: int) -> bytes:
    """Random bytes with every letter in them (so ROT13 changes something), as a blob."""
    data = bytearray(make_blob(blobs, name, size))
    letters = b"The quick brown fox jumps over the lazy dog. PACK MY BOX WITH FIVE DOZEN LIQUOR JUGS! "
    for at in range(0, size, 7):  # overwrite every 7th byte with a letter: a mix of both
        data[at] = letters[at % len(letters)]
    (blobs / name).write_bytes(bytes(data))
    return bytes(data)


SIZES = [0, 1, CHUNK - 1, CHUNK + 1, 3 * 1048576 + 5]


def check_output(guest: str, data: bytes, got: bytes, lines: list[str], target: str) -> None:
    """`got` (the output blob) is exactly what the guest's plain-tool twin makes of `data`,
    and the guest said so."""
    if guest == "gzip":
        assert gzip.decompress(got) == data
        assert lines == [f"gzip a.bin -> out/{target} {len(data)} -> {len(got)}"]
    elif guest == "copy_js":
        assert got == data
        assert lines == [f"copy a.bin -> out/{target} {len(data)} bytes"]
    else:
        assert len(got) == len(data) and got == data.translate(ROT13)
        assert lines == [f"rot13 a.bin -> out/{target} {len(data)} bytes"]


@pytest.mark.parametrize("size", SIZES, ids=["0", "1", "64KiB-1", "64KiB+1", "3MiB+5"])
@pytest.mark.parametrize("guest", GUESTS_)
async def test_a_guest_writes_its_output_exactly(harness, blobs: Path, out_dir: Path, writers: dict[str, Any],
                                                 guest: str, size: int) -> None:
    data = text_blob(blobs, "a.bin", size)
    # the chunk size the sizes are about (64 KiB), and the default (1 MiB) for the big one
    chunks = [CHUNK, 1048576] if size > 1048576 else [CHUNK]
    async with harness(components={guest: writers[guest]}, containers=out_container(out_dir), limits=LIMITS) as h:
        for chunk in chunks:
            target = f"a-{chunk}.out"
            job = await h.run(guest, [f"--chunk-size={chunk}", "local", "a.bin", "out", target])
            assert job.state == COMPLETED, (chunk, job.error)
            check_output(guest, data, (out_dir / target).read_bytes(), h.out(job), target)
        assert left_in(out_dir) == sorted(f"a-{c}.out" for c in chunks)  # no temp file beside them


@pytest.mark.parametrize("guest", GUESTS_)
async def test_a_container_that_is_not_writable_fails_the_job_and_leaves_nothing(
        harness, blobs: Path, out_dir: Path, writers: dict[str, Any], guest: str) -> None:
    text_blob(blobs, "a.bin", 3 * CHUNK + 7)
    async with harness(components={guest: writers[guest]}, containers=out_container(out_dir, writable=False),
                       limits=LIMITS) as h:
        job = await h.run(guest, ["--chunk-size=65536", "local", "a.bin", "out", "a.out"])
        assert job.state == FAILED
        err = (job.error or "").lower()
        assert "out" in err and ("writable" in err or "read-only" in err), job.error
        assert left_in(out_dir) == []
        # the instance is fine afterwards: the same guest still reads (and refuses again)
        again = await h.run(guest, ["--chunk-size=65536", "local", "a.bin", "out", "b.out"])
        assert again.state == FAILED and left_in(out_dir) == []
    assert os.listdir(blobs) == ["a.bin"]
