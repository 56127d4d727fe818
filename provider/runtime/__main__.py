"""``python -m provider.runtime run --store URI --payload REF --manifest KEY [--python X.Y]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from provider.runtime.lifetime import (
    PRELOADED_ENV,
    START_ENV,
    end_with_parent,
    stop_group_on_sigterm,
)
from provider.runtime.run import PythonVersionMismatch, check_python, run_payload
from provider.store import Reference, open_store


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def _configure_logging() -> None:
    """Information to stdout, warnings and errors to stderr: the worker logs them apart."""
    form = logging.Formatter("%(name)s: %(message)s")
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(_BelowWarning())
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    for handler in (info, problems):
        handler.setFormatter(form)
    logging.basicConfig(level=logging.INFO, handlers=[info, problems])


def _common(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", required=True, help="artifact store root, e.g. file:///data")
    command.add_argument("--payload", default="", help="the payload's reference, as JSON")
    command.add_argument("--python", default="", help="the worker's Python major.minor")
    command.add_argument("--code", default="", help="a local copy of the code package (a zip)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the warm runtime: returns in each fork, with its arguments
        from provider.runtime.warm import serve

        forked = serve(argv[1:])
        if forked is None:
            return 0
        argv = forked
    parser = argparse.ArgumentParser(prog="python -m provider.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a stored payload and store its result")
    _common(run)
    run.add_argument("--manifest", required=True, help="store key of the result manifest")
    run.add_argument(
        "--channel",
        type=int,
        help="a socket to the worker: the payload comes from it, the manifest goes back",
    )
    foreach = sub.add_parser("foreach", help="run chunks of a foreach payload's items")
    _common(foreach)
    which = foreach.add_mutually_exclusive_group(required=True)
    which.add_argument("--chunk", type=int, help="run this chunk")
    which.add_argument(
        "--chunk-env",
        help="run the chunk at the index this variable holds (JOB_COMPLETION_INDEX, "
        "AWS_BATCH_JOB_ARRAY_INDEX) in --chunks",
    )
    which.add_argument("--serve-fd", type=int, help="read chunk numbers from stdin, reply here")
    foreach.add_argument("--chunks", default="", help="with --chunk-env: the chunks, '0-9,12'")
    args = parser.parse_args(argv)
    if args.code:  # after the installed packages, as Airflow puts the DAG folder on the path
        sys.path.append(args.code)
    stop_group_on_sigterm()
    end_with_parent()
    _configure_logging()

    try:
        check_python(args.python)
    except PythonVersionMismatch as exc:
        print(f"flowtask runtime: {exc}", file=sys.stderr)
        return 2
    start = os.environ.pop(START_ENV, "cold")
    preloaded = [name for name in os.environ.pop(PRELOADED_ENV, "").split(",") if name]
    if preloaded:  # a fork of a warm runtime that had imported these for its tasks
        logging.getLogger("provider.runtime").info(
            "started warm (a fork of the warm runtime %s) with %s preloaded",
            os.getppid(),
            ", ".join(preloaded),
        )
    store = open_store(args.store)  # on S3, the client is made on first use
    if args.command == "run" and getattr(args, "channel", None) is not None:
        import socket

        with socket.socket(fileno=args.channel) as channel:
            return run_payload(store, None, args.manifest, start, preloaded, channel=channel)
    if not args.payload:
        parser.error("--payload is required (without --channel)")
    payload = Reference.from_json(json.loads(args.payload))
    if args.command == "run":
        return run_payload(store, payload, args.manifest, start, preloaded)
    return _foreach(store, payload, args)


def _foreach(store: Any, payload_ref: Reference, args: argparse.Namespace) -> int:
    from provider.runtime.foreach import ChunkRunner, parse_chunks, serve_chunks

    payload = store.get(payload_ref)
    runner = ChunkRunner(store, payload, int(payload.identity.get("try_number", 1)))
    if args.serve_fd is not None:
        with os.fdopen(args.serve_fd, "w", buffering=1) as replies:
            return serve_chunks(runner, (line.strip() for line in sys.stdin), replies.write)
    if args.chunk is not None:
        chunk = args.chunk
    else:
        index = int(os.environ[args.chunk_env])
        chunks = parse_chunks(args.chunks) if args.chunks else range(runner.plan.chunks)
        chunk = chunks[index]
    runner.run(chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
