"""The `chunkd` command line: main(argv) -> exit code (tests call it directly)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

import structlog
import uvloop

from chunkd.config import Config, load_config
from chunkd.errors import ChunkdError, ConfigError
from chunkd.jobs import COMPLETED, Job
from chunkd.logging import configure_logging
from chunkd.units import format_size

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd", description="Host-paced chunked blob delivery into wasm components.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one job in-process and exit (no server needed)")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.add_argument("--json", action="store_true", help="print the job summary as JSON")
    run.add_argument("--log-format", choices=("json", "console"), help="override daemon.log_format (logs go to stderr)")
    run.add_argument("component", help="component name from [components.NAME]")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the component's invoke")

    check = sub.add_parser("check", help="validate the config and every component's world")
    check.add_argument("-c", "--config", required=True, help="TOML config file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"chunkd: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "run":
        configure_logging(args.log_format or config.daemon.log_format, config.daemon.log_level, stream=sys.stderr)
        return _run_async(cmd_run(config, args.component, list(args.args), as_json=args.json))
    if args.command == "check":
        configure_logging("console", "warning", stream=sys.stderr)
        return cmd_check(config)
    return EXIT_USAGE


def _run_async(coro: Any) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(coro))


async def cmd_run(config: Config, component: str, args: list[str], *, as_json: bool = False,
                  out: TextIO | None = None) -> int:
    from chunkd.runtime import Runtime

    out = out or sys.stdout
    log = structlog.get_logger("chunkd.cli")
    runtime = Runtime(config)

    def echo(job: Job | None, comp: str, fd: str, line: str) -> None:
        if fd == "stdout":
            print(line, file=out, flush=True)

    runtime.output_listeners.append(echo)
    try:
        await runtime.start()
        job = await runtime.run(component, args)
    except ChunkdError as e:
        log.error("run_failed", error=str(e))
        print(f"chunkd: {e}", file=sys.stderr)
        return EXIT_JOB_FAILED if not isinstance(e, ConfigError) else EXIT_CONFIG
    finally:
        await runtime.close()
    summary = job.summary()
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        inv = summary["invoke"]
        if inv is not None:
            print(f"invoke: {'ok' if inv['ok'] else 'error'}: {inv['result']}", file=out)
        for s in summary["streams"]:
            print(f"stream {s['correlation_id']} {s['container']}/{s['blob']}: {s['end']}, "
                  f"{s['chunks']} chunk(s), {format_size(s['bytes'])}", file=out)
        dur = (job.ended_at or 0) - (job.started_at or job.ended_at or 0)
        print(f"job {job.id}: {job.state}" + (f" ({job.error})" if job.error else "") + f" in {dur:.2f}s", file=out)
    return EXIT_OK if job.state == COMPLETED else EXIT_JOB_FAILED


def cmd_check(config: Config) -> int:
    from chunkd.host.component import load_component
    from chunkd.host.engine import make_engine

    problems = 0
    for name, c in config.containers.items():
        if c.kind == "file" and c.root is not None and not Path(c.root).is_dir():
            print(f"container {name}: root {c.root} is not a directory")
            problems += 1
        elif c.kind != "file":
            print(f"container {name}: kind {c.kind!r} is accepted but not supported by this build yet")
    engine = make_engine(config.daemon.state_dir / "cache")
    for name, comp in config.components.items():
        try:
            loaded = load_component(engine, name, comp.path)
        except ChunkdError as e:
            print(f"component {name}: FAIL: {e}")
            problems += 1
            continue
        print(f"component {name}: ok: exports {loaded.info.world} (component path)")
    print(f"{config.file}: {'ok' if not problems else f'{problems} problem(s)'}")
    return EXIT_OK if not problems else EXIT_CONFIG
