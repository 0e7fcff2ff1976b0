"""Config of the object-store kinds: every key, its default, the refusals (file, key,
reason), ${VAR} credentials kept out of every repr, and docs/config.md's examples load."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from chunkd.config import Secret, config_from_mapping, load_config
from chunkd.errors import ConfigError, SourceError
from chunkd.sources import build_container
from chunkd.sources.azure import AzureContainer
from chunkd.sources.azure_auth import credentials_for, parse_connection_string
from chunkd.sources.gcs import GcsContainer

ROOT = Path(__file__).resolve().parent.parent
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def one(table: dict[str, object]) -> object:
    return config_from_mapping({"containers": {"c": table}}, file="t.toml").containers["c"]


def test_gcs_keys_and_defaults() -> None:
    c = one({"kind": "gcs", "bucket": "b", "endpoint_url": "http://127.0.0.1:1"})
    opts = c.options  # type: ignore[attr-defined]
    assert opts["bucket"] == "b" and opts["prefix"] == "" and opts["range_size"] == 8 << 20
    assert opts["timeout_s"] == 30.0 and opts["credentials_file"] is None and opts["anonymous"] is False
    assert c.writable is False and c.overwrite is True and c.part_size == 8 << 20  # type: ignore[attr-defined]
    built = build_container(c)  # type: ignore[arg-type]
    assert isinstance(built, GcsContainer) and built.credentials.source == "anonymous"


def test_azure_keys_defaults_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_AZ_KEY", KEY)
    c = one({"kind": "azure", "account": "acct", "container_name": "blobs", "account_key": "${T_AZ_KEY}",
             "writable": True, "part_size": "5MiB"})
    opts = c.options  # type: ignore[attr-defined]
    assert isinstance(opts["account_key"], Secret) and opts["account_key"] == KEY
    assert KEY not in repr(c) and "***" in repr(c)
    built = build_container(c)  # type: ignore[arg-type]
    assert isinstance(built, AzureContainer)
    assert built.endpoint == "https://acct.blob.core.windows.net" and built.credentials.source == "account key"
    assert KEY not in repr(built.credentials.account_key)  # bytes of the decoded key, never the text


@pytest.mark.parametrize("table,key,reason", [
    ({"kind": "azure", "account_key": "a", "sas_token": "b"}, "containers.c.sas_token",
     "give one of account_key, sas_token and connection_string"),
    ({"kind": "azure", "account_key": "${T_NOT_SET_ANYWHERE}"}, "containers.c.account_key",
     "environment variable T_NOT_SET_ANYWHERE is not set"),
    ({"kind": "gcs", "credentials_file": 3}, "containers.c.credentials_file", "expected"),
    ({"kind": "gcs", "endpoint_url": "ftp://x"}, "containers.c.endpoint_url", "expected an http"),
    ({"kind": "gcs", "part_size": "1MiB"}, "containers.c.part_size", ""),
    ({"kind": "azure", "bucket": "x"}, "containers.c.bucket", "unknown key"),
    ({"kind": "gcs", "region": "x"}, "containers.c.region", "unknown key"),
    ({"kind": "http", "base_url": "http://x", "writable": True}, "containers.c.writable",
     "outputs go to a file, s3, gcs or azure container"),
])
def test_refusals_name_file_key_reason(table: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        one(table)
    assert e.value.file == "t.toml" and e.value.key == key and reason in e.value.reason, str(e.value)


def test_azure_credentials_from_the_environment_and_connection_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(SourceError, match="no Azure storage account"):
        credentials_for("c", {})
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "envacct")
    assert credentials_for("c", {}).source == "anonymous"
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=abc")
    cr = credentials_for("c", {})
    assert cr.source == "SAS token" and cr.sas_token == "sv=1&sig=abc"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=https;AccountName=csacct;AccountKey={KEY};EndpointSuffix=core.windows.net")
    cr = credentials_for("c", {})
    assert cr.account == "csacct" and cr.source == "account key"
    assert cr.blob_endpoint == "https://csacct.blob.core.windows.net"
    with pytest.raises(SourceError, match="not base64") as e:
        credentials_for("c", {"account": "a", "account_key": "not base64 !!"})
    assert "not base64 !!" not in str(e.value)
    with pytest.raises(ValueError):
        parse_connection_string("no equals sign here")


def test_gcs_credentials_file_errors_name_the_file_not_the_key(tmp_path: Path) -> None:
    f = tmp_path / "sa.json"
    f.write_text('{"type": "service_account", "client_email": "x@y", "private_key": "SECRET-PEM"}')
    c = one({"kind": "gcs", "bucket": "b", "credentials_file": str(f)})
    built = build_container(c)  # type: ignore[arg-type]
    assert isinstance(built, GcsContainer) and built.credentials.source.startswith("service_account file")
    f.write_text('{"type": "service_account", "client_email": "x@y"}')
    with pytest.raises(SourceError, match="has no private_key"):
        build_container(one({"kind": "gcs", "bucket": "b", "credentials_file": str(f)}))  # type: ignore[arg-type]
    f.write_text("SECRET not json")
    with pytest.raises(SourceError) as e:
        build_container(one({"kind": "gcs", "bucket": "b", "credentials_file": str(f)}))  # type: ignore[arg-type]
    assert "is not JSON" in str(e.value) and "SECRET" not in str(e.value)


def test_the_examples_in_docs_config_md_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/sa.json")
    monkeypatch.setenv("AZURE_STORAGE_KEY", KEY)
    text = (ROOT / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    clouds = [b for b in blocks if 'kind = "gcs"' in b]
    assert clouds, "docs/config.md lost its object-store example"
    for b in clouds:
        tomllib.loads(b)
        p = tmp_path / "c.toml"
        p.write_text(b)
        cfg = load_config(p)
        assert {c.kind for c in cfg.containers.values()} >= {"s3", "gcs", "azure"}


def test_check_names_cloud_credentials_that_cannot_load(tmp_path: Path, guests: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from chunkd.cli import main
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'st'}"
[containers.az]
kind = "azure"
account = "x"
container_name = "c"
account_key = "not base64 !!"
[containers.g]
kind = "gcs"
bucket = "b"
credentials_file = "{tmp_path / 'missing.json'}"
[components.p]
path = "{guests['sha256']}"
""")
    code = main(["check", "-c", str(cfg)])
    out = capsys.readouterr().out
    assert code != 0 and "2 problem(s)" in out, out
    assert "container az: container 'az': the account key is not base64" in out
    assert "container g:" in out and "cannot read the GCS credentials file" in out
    assert "not base64 !!" not in out
