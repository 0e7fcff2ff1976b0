"""A real Jaeger (v2: an OpenTelemetry collector with memory storage and the query API) on
loopback, built by scripts/install-jaeger from the Go module proxy into ~/.cache/chunkd/bin;
CHUNKD_JAEGER names another binary. It receives OTLP/HTTP on a free port and answers the
query API (/api/traces/{trace_id}, the UI's API) on another."""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.service_support import ROOT, free_port, wait_for

_JAEGER: str | None = None


def jaeger_binary() -> str:
    global _JAEGER
    if _JAEGER is None:
        out = subprocess.run([str(ROOT / "scripts" / "install-jaeger")], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()
        _JAEGER = out[-1]
    return _JAEGER


CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc_port}
{ui}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_port}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass
class Jaeger:
    workdir: Path
    ui_assets: Path | None = None  # a built jaeger-ui (the Go module carries only a placeholder page)
    otlp_port: int = field(default_factory=free_port)
    query_port: int = field(default_factory=free_port)
    query_grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def otlp_endpoint(self) -> str:
        """What [telemetry] otlp_endpoint is set to (chunkd adds /v1/traces)."""
        return f"http://127.0.0.1:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def start(self, timeout: float = 60.0) -> "Jaeger":
        self.workdir.mkdir(parents=True, exist_ok=True)
        ui = f"    ui:\n      assets_path: {self.ui_assets}" if self.ui_assets is not None else ""
        cfg = self.workdir / "jaeger.yaml"
        cfg.write_text(CONFIG.format(query_port=self.query_port, query_grpc_port=self.query_grpc_port,
                                     otlp_port=self.otlp_port, ui=ui))
        self.log = self.workdir / "jaeger.log"
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([jaeger_binary(), "--config", str(cfg)], stdout=self._logf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)
        wait_for(self._ready, timeout, 0.1, "jaeger to answer its query API and listen for OTLP")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"jaeger exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            self.get("/api/services")
            # the OTLP receiver: an empty export is accepted once it listens
            req = urllib.request.Request(self.otlp_endpoint + "/v1/traces", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, ValueError):
            return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.query_url + path, timeout=5) as r:
            return json.loads(r.read())

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as the query API has it now (None: not there yet)."""
        try:
            got = self.get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        data = got.get("data") or []
        return dict(data[0]) if data else None

    def wait_trace(self, trace_id: str, pred: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        """Poll (bounded) until the trace is there and `pred(trace)` holds (spans arrive in
        batches: a job's span may come after its streams')."""
        def ready() -> dict[str, Any] | None:
            t = self.trace(trace_id)
            return t if t is not None and (pred is None or pred(t)) else None
        got: dict[str, Any] = wait_for(ready, timeout, 0.2, f"trace {trace_id} in jaeger")
        return got

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if hasattr(self, "_logf"):
            self._logf.close()


def spans(trace: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    return [s for s in trace["spans"] if name is None or s["operationName"] == name]


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def parent_span_id(span: dict[str, Any]) -> str | None:
    for ref in span.get("references", []):
        if ref.get("refType") == "CHILD_OF":
            return str(ref["spanID"])
    return None
