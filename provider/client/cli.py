"""The ``flowtask`` command."""

from __future__ import annotations

import argparse
import os
import sys

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
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (SpecError, StoreError) as exc:
        print(f"flowtask {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
