"""Bad configs of every kind are refused naming the file, the key and the reason."""
from __future__ import annotations

from pathlib import Path

import pytest

from chunkd.config import load_config
from chunkd.errors import ConfigError
from chunkd.units import parse_duration, parse_size

GOOD = """
[daemon]
listen = "127.0.0.1:7878"
state_dir = "state"
log_format = "console"

[limits]
max_chunk_size = "4MiB"
call_timeout = "250ms"
instance_memory = "128MiB"
max_buffered_bytes = "256MiB"
max_pending_streams = 10000

[containers.local]
kind = "file"
root = "blobs"

[containers.bucket]
kind = "s3"
bucket = "blobs"

[containers.origin]
kind = "http"
base_url = "http://127.0.0.1:8080/files"

[components.sha256]
path = "components/sha256.wasm"
instances = 2
max_bytes_per_second = "0"
prefetch_chunks = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "chunkd.toml"
    p.write_text(text)
    return p


def test_good_config_and_units(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.limits.max_chunk_size_bytes == 4 * 1024 * 1024
    assert cfg.limits.call_timeout_s == pytest.approx(0.25)
    assert cfg.daemon.state_dir == tmp_path / "state"
    assert cfg.containers["local"].root == tmp_path / "blobs"
    assert cfg.components["sha256"].path == tmp_path / "components" / "sha256.wasm"
    assert cfg.components["sha256"].instances == 2
    assert set(cfg.containers) == {"local", "bucket", "origin"}


def test_defaults_for_an_empty_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.limits.max_chunk_size_bytes == 4 * 1024 * 1024
    assert cfg.limits.call_timeout_s == 5.0
    assert cfg.components == {}


@pytest.mark.parametrize("text,key,reason", [
    ("[daemon]\nlisten = 'nope'\n", "daemon.listen", "HOST:PORT"),
    ("[daemon]\nlog_format = 'xml'\n", "daemon.log_format", "one of"),
    ("[daemon]\nbogus = 1\n", "daemon.bogus", "unknown key"),
    ("bogus = 1\n", "bogus", "unknown key"),
    ("[limits]\nmax_chunk_size = '4 parsecs'\n", "limits.max_chunk_size", "unknown size unit"),
    ("[limits]\nmax_chunk_size = 0\n", "limits.max_chunk_size", "at least 1"),
    ("[limits]\nmax_chunk_size = -5\n", "limits.max_chunk_size", "negative"),
    ("[limits]\ncall_timeout = 'soon'\n", "limits.call_timeout", "duration"),
    ("[limits]\ncall_timeout = '0s'\n", "limits.call_timeout", "above zero"),
    ("[limits]\ncall_timeout = '5 fortnights'\n", "limits.call_timeout", "unknown duration unit"),
    ("[limits]\nmax_pending_streams = 'many'\n", "limits.max_pending_streams", "integer"),
    ("[limits]\nmax_pending_streams = 0\n", "limits.max_pending_streams", "at least 1"),
    ("[limits]\nmax_buffered_bytes = '1KiB'\n", "limits.max_buffered_bytes", "max_chunk_size"),
    ("[limits]\nspeed = 1\n", "limits.speed", "unknown key"),
    ("[containers.x]\nroot = '/'\n", "containers.x.kind", "required"),
    ("[containers.x]\nkind = 'ftp'\n", "containers.x.kind", "one of"),
    ("[containers.x]\nkind = 'file'\n", "containers.x.root", "required"),
    ("[containers.x]\nkind = 'file'\nroot = 3\n", "containers.x.root", "string"),
    ("[containers.x]\nkind = 'file'\nroot = '/'\nextra = 1\n", "containers.x.extra", "unknown key"),
    ("[containers.x]\nkind = 'http'\nbase_url = 'ftp://x'\n", "containers.x.base_url", "http"),
    ("[containers.x]\nkind = 'http'\nbase_url = 'http://x'\nheaders = {a = 1}\n", "containers.x.headers", "string"),
    ("[containers.x]\nkind = 's3'\nbucket = 'b'\nrange_size = 'big'\n", "containers.x.range_size", "size"),
    ("[components.c]\ninstances = 2\n", "components.c.path", "required"),
    ("[components.c]\npath = 'a.wasm'\ninstances = 0\n", "components.c.instances", "at least 1"),
    ("[components.c]\npath = 'a.wasm'\ninstances = true\n", "components.c.instances", "integer"),
    ("[components.c]\npath = 'a.wasm'\nprefetch_chunks = 0\n", "components.c.prefetch_chunks", "at least 1"),
    ("[components.c]\npath = 'a.wasm'\nmax_bytes_per_second = 'fast'\n", "components.c.max_bytes_per_second", "size"),
    ("[components.c]\npath = 'a.wasm'\ncolour = 'red'\n", "components.c.colour", "unknown key"),
    ("components = 5\n", "components", "table"),
])
def test_bad_values_name_file_key_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    e = ei.value
    assert e.file == str(p)
    assert e.key == key
    assert reason.lower() in e.reason.lower()
    assert str(p) in str(e) and key in str(e)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[limits\nmax = ")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "invalid TOML" in str(ei.value) and str(p) in str(ei.value)
    with pytest.raises(ConfigError) as ei2:
        load_config(tmp_path / "absent.toml")
    assert "cannot read" in str(ei2.value)


@pytest.mark.parametrize("text,value", [("4MiB", 4 << 20), ("512KiB", 512 << 10), ("1GB", 10**9), ("0", 0),
                                        ("1.5KiB", 1536), (1024, 1024), ("7", 7)])
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text,value", [("5s", 5.0), ("250ms", 0.25), ("1m", 60.0), (2, 2.0), ("1.5s", 1.5)])
def test_parse_duration(text: object, value: float) -> None:
    assert parse_duration(text) == pytest.approx(value)
