"""The one shape of a job summary: GET /v1/jobs/{id}, each row of GET /v1/jobs,
`chunkd run --json`, and what `chunkd run`, `submit --wait` and `status` print."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from chunkd.units import format_size

from chunkd.streamview import StreamSummary, stream_summary

if TYPE_CHECKING:
    from chunkd.jobs import Job

__all__ = ["StreamSummary", "stream_summary", "JobSummary", "InvokeSummary", "OutputSummary", "job_summary"]


class InvokeSummary(TypedDict):
    ok: bool
    result: str


class OutputSummary(TypedDict):
    """One output blob of a job (chunkd/outputs.py): state is writing, sealed, committed or
    aborted; version is the committed ETag (s3) or "size:mtime_ns" (file)."""

    container: str
    name: str
    bytes: int
    state: str
    version: str | None


class JobSummary(TypedDict):
    job_id: str
    component: str
    args: list[str]
    state: str
    attempts: int
    invoke: InvokeSummary | None
    error: str | None
    instance: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    streams: list[StreamSummary]
    output: list[str]
    node: str | None  # cluster mode: the node that runs or ran the job; null on one machine
    outputs: list[OutputSummary]  # the blobs the job writes back
    tenant: str | None  # the tenant whose token submitted it (docs/tenants.md); null: the admin token


def job_summary(job: "Job") -> JobSummary:
    return {
        "job_id": job.id, "component": job.component, "args": list(job.args), "state": str(job.state),
        "attempts": job.attempts,
        "invoke": None if job.invoke_ok is None else {"ok": job.invoke_ok, "result": job.invoke_result or ""},
        "error": job.error, "instance": job.instance, "created_at": job.created_at, "started_at": job.started_at,
        "ended_at": job.ended_at, "streams": job.stream_summaries(), "output": list(job.output), "node": job.node,
        "outputs": [OutputSummary(container=o["container"], name=o["name"], bytes=o["bytes"] or 0, state=o["state"],
                                  version=o["version"]) for o in job.output_summaries()],
        "tenant": job.tenant,
    }


def summary_from_record(rec: dict[str, Any]) -> JobSummary:
    """A stored job record (jobstore.py) in the summary shape."""
    from chunkd.jobs import Job
    return job_summary(Job.from_record(rec))


def describe(summary: JobSummary) -> list[str]:
    """The closing lines people read: invoke result, each stream's end, each output (and
    the version of each committed one), the job's state."""
    lines = []
    inv = summary["invoke"]
    if inv is not None:
        lines.append(f"invoke: {'ok' if inv['ok'] else 'error'}: {inv['result']}")
    for s in summary["streams"]:
        lines.append(f"stream {s['correlation_id']} {s['container']}/{s['blob']}: {s['end']}, "
                     f"{s['chunks']} chunk(s), {format_size(s['bytes'])}")
    for o in summary.get("outputs") or []:
        version = f", version {o['version']}" if o["version"] else ""
        lines.append(f"output {o['container']}/{o['name']}: {o['state']}, {format_size(o['bytes'])}{version}")
    ended, started = summary["ended_at"], summary["started_at"]
    took = f" in {ended - started:.2f}s" if ended is not None and started is not None else ""
    lines.append(f"job {summary['job_id']}: {summary['state']}" + (f" ({summary['error']})" if summary["error"] else "")
                 + f", attempt {summary['attempts']}{took}")
    return lines
