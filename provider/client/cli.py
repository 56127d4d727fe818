"""The ``flowtask`` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from provider.specs import SpecError, parse_duration
from provider.store import StoreError, open_store
from provider.store.gc import collect_garbage

STORE_ENV = "AIRFLOW__FLOW_TASK__ARTIFACT_STORE"


def _gc(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    grace = parse_duration(args.grace, "--grace")
    report = collect_garbage(store, grace=grace, delete=args.delete)
    verb = "deleted" if args.delete else "would delete (dry run; pass --delete)"
    for key, size in report.unreferenced:
        print(f"{'deleted' if args.delete else 'unreferenced'} {store.root_uri}/{key} {size} B")
    print(
        f"{report.blobs} blobs: {report.referenced} referenced, {report.within_grace} "
        f"unreferenced but younger than {grace}; {verb} {len(report.unreferenced)} "
        f"({report.unreferenced_bytes / 2**20:.1f} MiB)"
    )
    return 0


def _render(args: argparse.Namespace) -> int:
    import json
    from contextlib import redirect_stdout

    from provider.operators.render import RenderError, render_pod

    try:
        with redirect_stdout(sys.stderr):  # Airflow logs to stdout; stdout is for the JSON
            pod = render_pod(
                args.dag_id, args.task_id, compute=args.compute, dags_folder=args.dags_folder
            )
    except RenderError as exc:
        print(f"flowtask render: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(pod, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowtask", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gc = sub.add_parser("gc", help="delete blobs that no run manifest references")
    gc.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        required=STORE_ENV not in os.environ,
        help=f"artifact store root (default: ${STORE_ENV})",
    )
    gc.add_argument("--grace", default="7d", help="keep unreferenced blobs younger than this")
    gc.add_argument("--delete", action="store_true", help="delete (default: only report)")
    gc.set_defaults(handler=_gc)
    render = sub.add_parser(
        "render",
        help="print what a flow task would submit, as JSON: its pod, or its Batch requests "
        "(no cluster or credentials needed)",
    )
    render.add_argument("dag_id")
    render.add_argument("task_id")
    render.add_argument("--compute", choices=("kubernetes", "batch"), help="override compute=")
    render.add_argument(
        "--dags-folder", type=Path, help="where the DAG file is (default: [core] dags_folder)"
    )
    render.set_defaults(handler=_render)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (SpecError, StoreError) as exc:
        print(f"flowtask {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
