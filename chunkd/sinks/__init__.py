"""Output sinks: one Protocol (base.py), one module per writable container kind.

`sink_container` turns a writable container's config and its (read) source
container into the WritableContainer outputs are created in; it shares the
source's confinement rules, executor (file) and client (s3) or session (gcs, azure).
"""
from __future__ import annotations

from chunkd.config import ContainerConfig
from chunkd.sinks.base import ABORTED, COMMITTED, Sink, SinkConflict, SinkError, WritableContainer
from chunkd.sources.base import Container

__all__ = ["ABORTED", "COMMITTED", "Sink", "SinkConflict", "SinkError", "WritableContainer", "sink_container"]


def sink_container(name: str, cfg: ContainerConfig, source: Container, *,
                   node: str | None = None) -> WritableContainer:
    """The WritableContainer of container `name`. Raises SinkError when it is not
    writable (`containers.NAME.writable` is false, or its kind is read-only). `node`:
    cluster mode's node name (a file container's temp names carry it; its sweep is
    limited to them)."""
    if not cfg.writable:
        raise SinkError(f"container {name!r} is read-only (containers.{name}.writable is not true)")
    if cfg.kind == "file":
        from chunkd.sinks.file import FileSinkContainer
        from chunkd.sources.file import FileContainer
        if isinstance(source, FileContainer):
            return FileSinkContainer(name, source, node=node)
    elif cfg.kind == "s3":
        from chunkd.sinks.s3 import S3SinkContainer
        from chunkd.sources.s3 import S3Container
        if isinstance(source, S3Container):
            return S3SinkContainer(name, source, part_size=cfg.part_size)
    elif cfg.kind == "gcs":
        from chunkd.sinks.gcs import GcsSinkContainer
        from chunkd.sources.gcs import GcsContainer
        if isinstance(source, GcsContainer):
            return GcsSinkContainer(name, source, part_size=cfg.part_size)
    elif cfg.kind == "azure":
        from chunkd.sinks.azure import AzureSinkContainer
        from chunkd.sources.azure import AzureContainer
        if isinstance(source, AzureContainer):
            return AzureSinkContainer(name, source, part_size=cfg.part_size)
    raise SinkError(f"container {name!r} ({cfg.kind}) cannot be written to")
