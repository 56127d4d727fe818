"""``python -m provider.runtime run --store URI --payload REF --manifest KEY [--python X.Y]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from provider.runtime.lifetime import end_with_parent, stop_group_on_sigterm
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provider.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a stored payload and store its result")
    run.add_argument("--store", required=True, help="artifact store root, e.g. file:///data")
    run.add_argument("--payload", required=True, help="the payload's reference, as JSON")
    run.add_argument("--manifest", required=True, help="store key of the result manifest")
    run.add_argument("--python", default="", help="the worker's Python major.minor")
    run.add_argument("--code", default="", help="a local copy of the code package (a zip)")
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
    store = open_store(args.store)
    payload = Reference.from_json(json.loads(args.payload))
    return run_payload(store, payload, args.manifest)


if __name__ == "__main__":
    sys.exit(main())
