"""Blob sources: one Protocol (base.py), one module per container kind."""
from __future__ import annotations

from concurrent.futures import Executor

from chunkd.config import ContainerConfig
from chunkd.errors import SourceError
from chunkd.sources.base import Blob, Container
from chunkd.sources.file import FileContainer
from chunkd.sources.unavailable import UnavailableContainer

__all__ = ["Blob", "Container", "build_container"]


def build_container(cfg: ContainerConfig, executor: Executor | None = None, *, file: str = "<config>") -> Container:
    if cfg.kind == "file":
        assert cfg.root is not None
        return FileContainer(cfg.name, cfg.root, executor)
    if cfg.kind == "http":
        from chunkd.sources.http import build_http
        if not cfg.options.get("base_url"):
            return UnavailableContainer(cfg.name, cfg.kind, "has no base_url configured")
        return build_http(cfg.name, cfg.options, file)
    if cfg.kind == "s3":
        from chunkd.sources.s3 import build_s3
        return build_s3(cfg.name, cfg.options)
    if cfg.kind == "gcs":
        from chunkd.sources.gcs import build_gcs
        return build_gcs(cfg.name, cfg.options)
    if cfg.kind == "azure":
        from chunkd.sources.azure import build_azure
        return build_azure(cfg.name, cfg.options)
    raise SourceError(f"unknown container kind {cfg.kind!r}")
