"""The `chunkd` command line: main(argv) -> exit code (tests call it directly)."""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence, TextIO

import structlog
import uvloop

from chunkd.config import Config, load_config
from chunkd.errors import ChunkdError, ConfigError
from chunkd.host.component import CONSUMER_STREAMS
from chunkd.jobs import COMPLETED, Job
from chunkd.logging import configure_logging
from chunkd.summary import describe, job_summary

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkd", description="Host-paced chunked blob delivery into wasm components.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one job in-process and exit (no server needed)",
                         description="chunkd run -c CONFIG COMPONENT [ARGS...], or without a config: "
                                     "chunkd run --wasm GUEST.wasm --dir NAME=FOLDER [--out NAME=FOLDER] [ARGS...]")
    run.add_argument("-c", "--config", help="TOML config file (or --wasm)")
    run.add_argument("--wasm", help="run this guest with no config: the defaults, and the folders of --dir/--out")
    run.add_argument("--dir", action="append", default=[], metavar="NAME=FOLDER",
                     help="with --wasm: a read-only file container NAME on FOLDER (repeatable)")
    run.add_argument("--out", action="append", default=[], metavar="NAME=FOLDER",
                     help="with --wasm: a writable file container NAME on FOLDER, for outputs (repeatable)")
    run.add_argument("--json", action="store_true", help="print the job summary as JSON")
    run.add_argument("--log-format", choices=("json", "console"), help="override daemon.log_format (logs go to stderr)")
    run.add_argument("component", nargs="?", help="component name from [components.NAME] (with -c)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the component's invoke")

    wit = sub.add_parser("wit", help="print the WIT package guests build against (or write it into a folder)")
    wit.add_argument("--out", metavar="FOLDER", help="write FOLDER/streams.wit (e.g. a guest's wit/ folder)")

    new = sub.add_parser("new", help="create a guest project NAME/ that builds with ./build.sh",
                         description="chunkd new --lang LANG --world WORLD NAME: a line-counting guest in "
                                     "NAME/ (the WIT, a build script, sample data, a config, a README)")
    new.add_argument("--lang", required=True, help="python, rust, js or c")
    new.add_argument("--world", default="consumer-with-events",
                     help="consumer, consumer-with-events (default) or consumer-streams")
    new.add_argument("name", metavar="NAME", help="the folder (in the current directory) and the component's name")

    check = sub.add_parser("check", help="validate the config and every component's world")
    check.add_argument("-c", "--config", required=True, help="TOML config file")

    serve = sub.add_parser("serve", help="run the daemon: HTTP JSON API, durable jobs")
    serve.add_argument("-c", "--config", required=True, help="TOML config file")

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", help="read daemon.listen and daemon.auth_token from this config")
        sp.add_argument("--url", help="daemon address: http://HOST:PORT or unix:/path (default $CHUNKD_URL "
                                      "or http://127.0.0.1:7878)")
        sp.add_argument("--token", help="bearer token (default $CHUNKD_AUTH_TOKEN)")
        sp.add_argument("--cacert", help="https: verify the daemon with the CA certificates in this PEM file "
                                         "(default $CHUNKD_CACERT, else the config's daemon.tls_cert, else the system's)")

    submit = sub.add_parser("submit", help="submit a job to a running daemon")
    client_opts(submit)
    submit.add_argument("--wait", action="store_true", help="follow the job with a progress bar per stream")
    submit.add_argument("component")
    submit.add_argument("args", nargs=argparse.REMAINDER)

    status = sub.add_parser("status", help="one job, or the recent jobs")
    client_opts(status)
    status.add_argument("--json", action="store_true")
    status.add_argument("job", nargs="?")

    cancel = sub.add_parser("cancel", help="cancel a job")
    client_opts(cancel)
    cancel.add_argument("job")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("submit", "status", "cancel"):
        return _client(args)
    if args.command == "wit":
        return cmd_wit(args.out)
    if args.command == "new":
        from chunkd.scaffold import cmd_new
        return cmd_new(args.lang, args.world, args.name)
    if args.command == "run" and args.wasm:
        return _run_wasm(args)
    if args.command == "run" and (not args.config or not args.component):
        print("chunkd run: give -c CONFIG COMPONENT [ARGS...], or --wasm GUEST.wasm --dir NAME=FOLDER [ARGS...]",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"chunkd: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "serve":
        configure_logging(config.daemon.log_format, config.daemon.log_level, stream=sys.stdout)
        from chunkd.daemon import Daemon

        async def serve() -> int:
            return await Daemon(config).serve()
        return _run_async(serve())
    if args.command == "run":
        configure_logging(args.log_format or config.daemon.log_format, config.daemon.log_level, stream=sys.stderr)
        return _run_async(cmd_run(config, args.component, list(args.args), as_json=args.json))
    if args.command == "check":
        configure_logging("console", "warning", stream=sys.stderr)
        return cmd_check(config)
    return EXIT_USAGE


WIT_FILES = ("streams.wit",)


def wit_dir() -> Path:
    """The WIT package: beside the chunkd package (a checkout or an editable install), or
    installed from the wheel next to it (site-packages/wit)."""
    return Path(__file__).resolve().parent.parent / "wit"


def cmd_wit(out: str | None) -> int:
    src = wit_dir()
    missing = [n for n in WIT_FILES if not (src / n).is_file()]
    if missing:
        print(f"chunkd wit: the WIT package is not installed ({src / missing[0]} is missing)", file=sys.stderr)
        return EXIT_CONFIG
    if out is None:
        for n in WIT_FILES:
            sys.stdout.write((src / n).read_text())
        return EXIT_OK
    dest = Path(out)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for n in WIT_FILES:
            (dest / n).write_text((src / n).read_text())
    except OSError as e:
        print(f"chunkd wit: cannot write {dest}: {e.strerror or e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {', '.join(str(dest / n) for n in WIT_FILES)} (package chunkd:streams)")
    return EXIT_OK


def _run_wasm(args: argparse.Namespace) -> int:
    """`chunkd run --wasm GUEST --dir NAME=FOLDER ... [ARGS...]`: one job with the defaults and
    no config file. The compiled guest is cached in ~/.cache/chunkd/compile (bounded, as
    every compile cache), so a second run starts at once; nothing else is written."""
    from chunkd.config import config_from_mapping

    containers: dict[str, dict[str, Any]] = {}
    for flag, writable in (("dir", False), ("out", True)):
        for spec in getattr(args, flag):
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                print(f"chunkd run: --{flag} wants NAME=FOLDER, got {spec!r}", file=sys.stderr)
                return EXIT_USAGE
            if name in containers:
                print(f"chunkd run: container {name!r} given twice", file=sys.stderr)
                return EXIT_USAGE
            if not Path(folder).is_dir():
                print(f"chunkd run: --{flag} {name}={folder}: not a folder", file=sys.stderr)
                return EXIT_USAGE
            containers[name] = {"kind": "file", "root": str(Path(folder).resolve()), "writable": writable}
    wasm = Path(args.wasm)
    name = re.sub(r"[^A-Za-z0-9_-]", "_", wasm.stem) or "guest"
    cache = Path(os.environ.get("CHUNKD_CACHE", Path.home() / ".cache" / "chunkd"))
    state = Path(tempfile.mkdtemp(prefix="chunkd-run-"))
    try:
        config = config_from_mapping({
            "daemon": {"state_dir": str(state), "cache_dir": str(cache / "compile"), "log_format": "console",
                       "log_level": "warning"},
            "containers": containers,
            "components": {name: {"path": str(wasm.resolve())}},
        }, file="chunkd run --wasm")
        job_args = ([args.component] if args.component else []) + list(args.args)
        configure_logging(args.log_format or "console", "warning", stream=sys.stderr)
        return _run_async(cmd_run(config, name, job_args, as_json=args.json))
    except ConfigError as e:
        print(f"chunkd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        shutil.rmtree(state, ignore_errors=True)


def entry() -> None:
    """The `chunkd` console script and `python -m chunkd`: once main() has closed and
    flushed everything, leave without interpreter teardown, where wasmtime objects that
    are finalized late can abort the process after the work is done."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _client(args: argparse.Namespace) -> int:
    from chunkd import client

    listen = token = tls_cert = None
    if args.config:
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"chunkd: config error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        listen, token = cfg.daemon.listen, cfg.daemon.auth_token
        tls_cert = str(cfg.daemon.tls_cert) if cfg.daemon.tls_cert is not None else None
    ep = client.endpoint_from(args.url, args.token, listen, token, args.cacert, tls_cert)
    if args.command == "submit":
        # the contract (docs/cli-and-api.md): `chunkd submit COMPONENT [ARGS...] [--wait]`: --wait may follow the args;
        # everything after a literal `--` goes to the component untouched.
        argv = list(args.args)
        cut = argv.index("--") if "--" in argv else len(argv)
        head, tail = argv[:cut], argv[cut + 1:]
        wait = args.wait or "--wait" in head
        argv = [a for a in head if a != "--wait"] + tail
        return _run_async(client.submit(ep, args.component, argv, wait=wait))
    if args.command == "status":
        return _run_async(client.status(ep, args.job, as_json=args.json))
    return _run_async(client.cancel(ep, args.job))


def _run_async(coro: Any) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(coro))


async def cmd_run(config: Config, component: str, args: list[str], *, as_json: bool = False,
                  out: TextIO | None = None) -> int:
    from chunkd.runtime import Runtime

    out = out or sys.stdout
    log = structlog.get_logger("chunkd.cli")
    if component not in config.components:
        print(f"chunkd: no component named {component!r} (configured: {', '.join(sorted(config.components)) or 'none'})",
              file=sys.stderr)
        return EXIT_JOB_FAILED
    runtime = Runtime(config, only={component})

    def echo(job: Any, comp: str, fd: str, line: str) -> None:
        if fd == "stdout":
            print(line, file=out, flush=True)

    if not as_json:  # with --json the guest's lines are in the summary's "output": stdout stays pure JSON
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
        gc.collect()  # finalize stores and instances now, while everything they call is alive
    summary = job_summary(job)
    if as_json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        for line in describe(summary):
            print(line, file=out)
    return EXIT_OK if job.state == COMPLETED else EXIT_JOB_FAILED


def cmd_check(config: Config) -> int:
    from chunkd.host.component import load_component
    from chunkd.host.engine import make_engine

    problems = 0
    for name, c in config.containers.items():
        if c.kind == "file" and c.root is not None and not Path(c.root).is_dir():
            print(f"container {name}: root {c.root} is not a directory")
            problems += 1
        elif c.kind in ("s3", "gcs") and not c.options.get("bucket"):
            print(f"container {name}: {c.kind} container has no bucket: every open will fail")
            problems += 1
        elif c.kind == "azure" and not c.options.get("container_name"):
            print(f"container {name}: azure container has no container_name: every open will fail")
            problems += 1
        elif c.kind == "http" and not c.options.get("base_url"):
            print(f"container {name}: http container has no base_url: every open will fail")
            problems += 1
        elif c.kind in ("gcs", "azure"):  # its credentials must load (a file, a key's encoding)
            from chunkd.sources import build_container
            try:
                build_container(c)
            except ChunkdError as e:
                print(f"container {name}: {e}")
                problems += 1
    engine = make_engine(config.daemon.cache_dir or config.daemon.state_dir / "cache")
    for name, comp in config.components.items():
        try:
            loaded = load_component(engine, name, comp.path)
        except ChunkdError as e:
            print(f"component {name}: FAIL: {e}")
            problems += 1
            continue
        path = ("core-module path: handle-chunk calls" if loaded.kind == "core" else
                "component path: writes into one stream<u8> per read" if loaded.info.world == CONSUMER_STREAMS
                else "component path: handle-chunk calls")
        print(f"component {name}: ok: exports {loaded.info.world} ({path}, native host core)")
    print(f"{config.file}: {'ok' if not problems else f'{problems} problem(s)'}")
    return EXIT_OK if not problems else EXIT_CONFIG
