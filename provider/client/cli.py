"""The ``flowtask`` command."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

from provider.client import commands
from provider.client.flow import open_client_store
from provider.specs import SpecError, parse_duration
from provider.store import StoreError
from provider.store.gc import GcReport, collect_garbage
from provider.store.store import RENEW_AFTER

STORE_ENV = commands.STORE_ENV
EXIT_BROKEN_PIPE = 128 + 13  # a shell's code for a command that SIGPIPE ended (`| head`)


def _gc(args: argparse.Namespace) -> int:
    store = open_client_store(args.store)
    grace = parse_duration(args.grace, "--grace")
    if grace < RENEW_AFTER:
        print(
            f"flowtask gc: warning: --grace {grace} is below {RENEW_AFTER}, the age at which a "
            "put renews the blob it finds: blobs that concurrent writers are storing may be "
            "deleted. Use a grace this short only while nothing writes to the store.",
            file=sys.stderr,
        )
    report = collect_garbage(store, grace=grace, delete=args.delete)
    _print_gc(store.root_uri, grace, args.delete, report)
    return 0


def _print_gc(root: str, grace: timedelta, delete: bool, report: GcReport) -> None:
    renewed = set(report.renewed)
    for key, size in report.unreferenced:
        state = "kept (renewed since the scan)" if key in renewed else "deleted"
        print(f"{state if delete else 'unreferenced'} {root}/{key} {size} B")
    for write in report.interrupted:
        state = "removed" if delete else "interrupted write"
        print(f"{state} {root}/{write.describe()} {write.size} B")
    for key, size in report.payloads:
        print(f"{'removed' if delete else 'left-over payload'} {root}/{key} {size} B")
    if delete:
        verb, count, size = "deleted", report.deleted, report.deleted_bytes
    else:
        verb = "would delete (dry run; pass --delete)"
        count, size = len(report.unreferenced), report.unreferenced_bytes
    print(
        f"{report.blobs} blobs: {report.referenced} referenced, {report.within_grace} "
        f"unreferenced but younger than {grace}; {verb} {count} ({size / 2**20:.1f} MiB)"
    )
    if report.renewed:
        print(f"{len(report.renewed)} kept: a writer renewed them since the scan")
    verb = "removed" if delete else "would remove (dry run)"
    print(
        f"{len(report.interrupted)} interrupted writes older than {grace} "
        f"({report.interrupted_bytes / 2**20:.1f} MiB): {verb}"
    )
    if report.payloads:
        print(f"{len(report.payloads)} payloads of finished tries left by dead workers: {verb}")


def _render(args: argparse.Namespace) -> int:
    import json
    from contextlib import redirect_stdout

    from provider.client.render import RenderError, render_pod

    try:
        with redirect_stdout(sys.stderr):  # Airflow logs to stdout; stdout is for the JSON
            pod = render_pod(
                args.dag_id,
                args.task_id,
                compute=args.compute,
                dags_folder=args.dags_folder,
                items=args.items,
            )
    except RenderError as exc:
        print(f"flowtask render: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(pod, indent=2, sort_keys=True))
    return 0


def _env(args: argparse.Namespace) -> int:
    from contextlib import redirect_stdout

    from provider.client.render import RenderError, resolve_lock
    from provider.translate.environment import EnvironmentFailure

    try:
        with redirect_stdout(sys.stderr):  # Airflow logs to stdout; stdout is for the lock
            lock = resolve_lock(
                args.dag_id, args.task_id, compute=args.compute, dags_folder=args.dags_folder
            )
    except (RenderError, EnvironmentFailure) as exc:
        print(f"flowtask env: {exc}", file=sys.stderr)
        return 2
    print(lock, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowtask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gc = sub.add_parser("gc", help="delete blobs that no run manifest references")
    commands.store_option(gc)
    gc.add_argument("--grace", default="7d", help="keep unreferenced blobs younger than this")
    gc.add_argument("--delete", action="store_true", help="delete (default: only report)")
    gc.set_defaults(handler=_gc)
    render = sub.add_parser(
        "render",
        help="print what a flow task would submit, as JSON: its pod (the Indexed Job of a "
        ".foreach), or its Batch requests (no cluster or credentials needed)",
    )
    render.add_argument("dag_id")
    render.add_argument("task_id")
    render.add_argument("--compute", choices=("kubernetes", "batch"), help="override compute=")
    render.add_argument(
        "--dags-folder", type=Path, help="where the DAG file is (default: [core] dags_folder)"
    )
    render.add_argument(
        "--items", type=int, help="for a .foreach: how many items (default: its literal list's)"
    )
    render.set_defaults(handler=_render)
    env = sub.add_parser(
        "env",
        help="print the lock a flow task's Environment(pip=[...]) resolves to on its target "
        "(resolution only: nothing is built or run)",
    )
    env.add_argument("dag_id")
    env.add_argument("task_id")
    env.add_argument(
        "--compute", choices=("local", "kubernetes", "batch"), help="override compute="
    )
    env.add_argument(
        "--dags-folder", type=Path, help="where the DAG file is (default: [core] dags_folder)"
    )
    env.set_defaults(handler=_env)
    commands.add_commands(sub)
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a reader that left (`| head`) is found here, not at exit
        return code
    except BrokenPipeError:
        _stdout_gone()
        return EXIT_BROKEN_PIPE
    except (SpecError, StoreError, *commands.HANDLED) as exc:
        print(f"flowtask {args.command}: {exc}", file=sys.stderr)
        return 2


def _stdout_gone() -> None:
    """The reader of stdout is gone: what is still buffered goes nowhere, so the interpreter's
    flush at exit cannot fail again with a traceback (the recipe in Python's ``signal`` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
