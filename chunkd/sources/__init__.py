"""Blob sources: one Protocol (base.py), one module per container kind."""
from __future__ import annotations

from concurrent.futures import Executor

from chunkd.config import ContainerConfig
from chunkd.sources.base import Blob, Container
from chunkd.sources.file import FileContainer
from chunkd.sources.unavailable import UnavailableContainer

__all__ = ["Blob", "Container", "build_container"]


def build_container(cfg: ContainerConfig, executor: Executor | None = None) -> Container:
    if cfg.kind == "file":
        assert cfg.root is not None
        return FileContainer(cfg.name, cfg.root, executor)
    return UnavailableContainer(cfg.name, cfg.kind)
