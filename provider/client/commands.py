"""``flowtask runs / show / get / tag``: a table for people, ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from provider.client.errors import NoResult, NotFound, UnknownRun
from provider.client.flow import STORE_ENV, Flow
from provider.client.namespaces import checked_namespace, get_namespace
from provider.client.run import Run
from provider.client.task import Task, Try, describe


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return "-"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment).astimezone()
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "tags": list(run.tags),
        "system_tags": list(run.system_tags),
        "user_tags": list(run.user_tags),
        "created_at": run.created_at.isoformat(),
        "status": run.status,
        "finished": run.finished,
        "successful": run.successful,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _flow(args: argparse.Namespace) -> Flow:
    return Flow(args.dag_id, store=args.store)


def cmd_runs(args: argparse.Namespace) -> int:
    flow = _flow(args)
    if args.all_namespaces:
        name = None
    elif args.namespace is not None:
        name = checked_namespace(args.namespace, "--namespace")
    else:
        name = get_namespace()
    runs = list(flow.runs(tags=args.tag or (), namespace=name))
    hint = None if runs else _no_runs_hint(flow, args.tag or [], name)
    if args.json:
        listing = {"namespace": name, "runs": [run_json(run) for run in runs], "hint": hint}
        print(json.dumps(listing, indent=2))
    elif runs:
        rows = [
            (run.run_id, run.namespace, ", ".join(run.tags), _when(run.created_at), run.status)
            for run in runs
        ]
        print(table(("RUN ID", "NAMESPACE", "TAGS", "STARTED", "STATUS"), rows))
    else:
        print(hint, file=sys.stderr)
    return 0


def _no_runs_hint(flow: Flow, tags: list[str], name: str | None) -> str:
    """Why nothing is listed, and where the runs are (the same words for the table and JSON)."""
    where = "in any namespace" if name is None else f"in namespace {name!r}"
    tagged = f" tagged {', '.join(tags)}" if tags else ""
    hint = f"no runs of {flow.dag_id}{tagged} {where}"
    if name is not None:
        others = sorted({r.namespace for r in flow.runs(tags=tags, namespace=None)})
        if others:
            hint += (
                f"\nruns{tagged} are in: {', '.join(others)} (--namespace NS or --all-namespaces)"
            )
    return hint


def _try_row(task: Task, attempt: Try) -> tuple[str, ...]:
    index = "-" if attempt.map_index < 0 else str(attempt.map_index)
    if attempt.result is not None:
        what, size = describe(attempt.result)
        result, stored = what, _size(size)
    elif attempt.error:
        result, stored = f"{attempt.error['type']}: {attempt.error['message']}", "-"
    else:
        result, stored = "-", "-"
    usage = attempt.usage
    seconds = f"{usage['seconds']:.2f}" if "seconds" in usage else "-"
    rss = f"{usage['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in usage else "-"
    line = result if len(result) <= 70 else result[:67] + "..."
    return (task.task_id, index, str(attempt.number), attempt.status, seconds, rss, stored, line)


def cmd_show(args: argparse.Namespace) -> int:
    run = _flow(args)[args.run_id]
    tasks = [run[args.task_id]] if args.task_id else list(run)
    print(f"run        {run.run_id}  (DAG {run.dag_id})")
    print(f"namespace  {run.namespace}")
    added = f"  (added later: {', '.join(run.user_tags)})" if run.user_tags else ""
    print(f"tags       {', '.join(run.system_tags) or '-'}{added}")
    print(f"started    {_when(run.created_at)}")
    ended = f" at {_when(run.finished_at)}" if run.finished_at else ""
    print(f"status     {run.status}{ended}")
    rows = [_try_row(task, attempt) for task in tasks for attempt in task.tries]
    print()
    if rows:
        header = ("TASK", "MAP", "TRY", "STATUS", "SECONDS", "PEAK RSS", "SIZE", "RESULT")
        print(table(header, rows))
    else:
        print("no task tries recorded")
    if args.task_id:  # the whole error of each failed try
        for attempt in tasks[0].tries:
            if attempt.error:
                index = f"[{attempt.map_index}]" if attempt.map_index >= 0 else ""
                error = f"{attempt.error['type']}: {attempt.error['message']}"
                print(f"\n{attempt.task_id}{index} try {attempt.number}: {error}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    task = _flow(args)[args.run_id][args.task_id]
    if args.map_index is not None:
        task = task[args.map_index]
    elif task.mapped:
        raise NoResult(
            f"task {task.task_id!r} is mapped ({len(task)} instances): pass --map-index I"
        )
    value = task.data
    if args.output:
        _write_pickle(value, args.output)
        print(f"wrote {type(value).__qualname__} to {args.output}", file=sys.stderr)
        return 0
    head = getattr(value, "head", None)
    if callable(head) and hasattr(value, "shape"):  # a DataFrame or a Series
        print(f"{type(value).__qualname__} {value.shape}")
        print(head())
    else:
        print(repr(value))
    return 0


def _write_pickle(value: Any, path: str) -> None:
    import pickle

    try:
        data = pickle.dumps(value, protocol=5)
    except Exception:  # a value only cloudpickle can pickle (a lambda inside, ...)
        import cloudpickle

        data = cloudpickle.dumps(value, protocol=5)
    with open(path, "wb") as out:
        out.write(data)


def cmd_tag(args: argparse.Namespace) -> int:
    run = _flow(args)[args.run_id]
    if args.action == "add":
        run.add_tags(*args.tags)
    else:
        run.remove_tags(*args.tags)
    print(f"{run.run_id}: {', '.join(run.tags) or 'no tags'}")
    return 0


USED = ("peak_rss_mib", "cpu_seconds", "wall_seconds", "gpu_memory_mib")


def usage_rows(run: Run) -> list[dict[str, Any]]:
    """Requested against used, and a suggested request, per task try that recorded usage."""
    from provider.runtime.usage import suggested_request

    rows = []
    for task in run:
        for attempt in task.tries:
            used = attempt.usage
            if not {"peak_rss_mib", "cpu_seconds", "wall_seconds"} <= set(used):
                continue
            asked = attempt.requested
            rows.append(
                {
                    "task_id": attempt.task_id,
                    "map_index": attempt.map_index,
                    "try_number": attempt.number,
                    "requested": {
                        "cpu": asked.get("cpu"),
                        "memory_mib": asked.get("memory_mib"),
                        "gpu": asked.get("gpu"),
                    },
                    "used": {name: used[name] for name in USED if name in used},
                    "suggested": suggested_request(
                        used["peak_rss_mib"], used["cpu_seconds"], used["wall_seconds"]
                    ),
                }
            )
    return rows


def cmd_usage(args: argparse.Namespace) -> int:
    flow = _flow(args)
    run = flow[args.run_id] if args.run_id else next(flow.runs(namespace=None), None)
    if run is None:
        raise UnknownRun(f"DAG {args.dag_id!r} has no runs in the store")
    rows = usage_rows(run)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"run {run.run_id} of {run.dag_id}: requested vs used, and a request that would fit")
    lines = [
        (
            row["task_id"],
            "-" if row["map_index"] < 0 else str(row["map_index"]),
            str(row["try_number"]),
            _amount(row["requested"]["cpu"]),
            f"{row['used']['cpu_seconds'] / max(row['used']['wall_seconds'], 1e-3):.2f}",
            _mib(row["requested"]["memory_mib"]),
            _mib(row["used"]["peak_rss_mib"]),
            f"cpu={row['suggested']['cpu']:g}, memory={row['suggested']['memory_mib']}",
        )
        for row in rows
    ]
    header = ("TASK", "MAP", "TRY", "CPU", "CPU USED", "MEMORY", "PEAK", "SUGGESTED")
    print(table(header, lines) if lines else "no task try recorded its usage")
    return 0


def _amount(value: Any) -> str:
    return "-" if value is None else f"{value:g}"


def _mib(value: Any) -> str:
    from provider.runtime.usage import human_mib

    return "-" if value is None else human_mib(float(value))


STORE_HELP = (
    "artifact store root: s3://bucket/prefix, file:///path or a path (default: the provider's, "
    f"${STORE_ENV}, else [flow_task] artifact_store in airflow.cfg, else "
    "$AIRFLOW_HOME/flow_artifacts)"
)


def store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", help=STORE_HELP)


def add_commands(sub: Any) -> None:
    """Register ``runs``, ``show``, ``get`` and ``tag`` on the ``flowtask`` parser."""
    runs = sub.add_parser("runs", help="list a DAG's runs, newest first")
    runs.add_argument("dag_id")
    runs.add_argument("--tag", action="append", help="only runs with this tag (repeatable)")
    group = runs.add_mutually_exclusive_group()
    group.add_argument("--namespace", help="runs of this namespace (default: user:<you>)")
    group.add_argument("--all-namespaces", action="store_true", help="runs of every namespace")
    runs.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    store_option(runs)
    runs.set_defaults(handler=cmd_runs)

    show = sub.add_parser("show", help="a run's tasks and tries, with result types and sizes")
    show.add_argument("dag_id")
    show.add_argument("run_id")
    show.add_argument("task_id", nargs="?")
    store_option(show)
    show.set_defaults(handler=cmd_show)

    get = sub.add_parser("get", help="print a task's result, or write it as a pickle")
    get.add_argument("dag_id")
    get.add_argument("run_id")
    get.add_argument("task_id")
    get.add_argument("--map-index", type=int, help="the instance of a mapped task")
    get.add_argument("-o", "--output", metavar="FILE", help="write the value as a pickle")
    store_option(get)
    get.set_defaults(handler=cmd_get)

    tag = sub.add_parser("tag", help="add or remove tags of a run after the fact")
    tag.add_argument("action", choices=("add", "remove"))
    tag.add_argument("dag_id")
    tag.add_argument("run_id")
    tag.add_argument("tags", nargs="+", metavar="TAG")
    store_option(tag)
    tag.set_defaults(handler=cmd_tag)

    usage = sub.add_parser(
        "usage", help="requested vs used resources per task, with a suggested request"
    )
    usage.add_argument("dag_id")
    usage.add_argument("run_id", nargs="?", help="default: the DAG's latest run")
    usage.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    store_option(usage)
    usage.set_defaults(handler=cmd_usage)


HANDLED = (NotFound, ValueError)  # what a command reports as a one-line error, exit code 2
