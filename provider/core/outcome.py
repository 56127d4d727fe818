"""What a flow task try returns: its result reference, a caught ``Failure``, or an error."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from typing import Any

from provider.core.targets.base import Outcome, TaskRun


class FlowTaskFailed(RuntimeError):
    """The task's function raised, or the runtime died before reporting.

    ``error_types`` are the function's exception type and its bases (``module.QualName``),
    when the function raised: ``Retry(on=...)`` decides on them.
    """

    def __init__(self, message: str, error_types: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_types = error_types


def settle(
    run: TaskRun,
    outcome: Outcome,
    *,
    catching: bool,
    local: bool,
    instances: Callable[[], int | None],
    layout: str = "value",
) -> Any:
    """The result reference, a caught ``Failure`` (``catching``: ``catch=`` on the last try),
    or ``FlowTaskFailed`` with the reason.

    A try whose runtime wrote no manifest (it died, was killed, timed out, or never started)
    gets one written here, so every try is on record and whatever it stored stays reachable.
    ``instances`` says how many instances the task has in the run (for the run index).
    """
    from provider.runtime import Failure
    from provider.store import MissingArtifact

    store = run.store
    records = awaited_records(run)  # the launch records, written while the runtime ran
    code = outcome.exit_code
    if outcome.report is not None:  # the runtime's report came over its channel
        manifest = dict(outcome.report["manifest"])
        if records is not None and manifest.get("status") == "succeeded":
            manifest["status"] = "failed"  # on record as what it is: a try that failed
            manifest["error"] = {"type": "StoreError", "message": f"launch records: {records}"}
        elif code != 0 and manifest.get("status") == "succeeded":  # it died after reporting
            manifest["status"] = "failed"
            manifest["error"] = {"type": "RuntimeExit", "message": _exit_reason(code)}
        succeeded = manifest.get("status") == "succeeded" and code == 0
        _store_report(run, outcome, manifest, succeeded, instances)
        run.settled["manifest"] = manifest
        if records is not None:  # never a success that its records do not show
            raise FlowTaskFailed(
                f"flow task {run.task_id} failed: its launch records could not be stored "
                f"({type(records).__name__}: {records})"
            ) from records
        if succeeded:
            result = _succeeded(run, manifest, local)
            return outcome.report.get("value", result)  # inline: the value itself
    else:
        try:
            manifest = store.read_manifest(outcome.manifest_key)
        except MissingArtifact:
            manifest = {}
    if manifest and outcome.where:  # what the platform knows of where it ran, on record too
        manifest["where"] = {**(manifest.get("where") or {}), **outcome.where}
        store.write_manifest(outcome.manifest_key, manifest)
    run.settled["manifest"] = manifest
    if manifest.get("status") == "succeeded" and code == 0 and outcome.report is None:
        record_end(run, "success", instances())
        return _succeeded(run, manifest, local)
    error = manifest.get("error")
    if error:
        message = f"{error['type']}: {error['message']} (exit code {code})"
    else:
        message = (
            f"{outcome.failure or _exit_reason(code)}; it wrote no result manifest "
            f"{outcome.manifest_key} (see its output above)"
        )
    caught = None
    if catching:
        caught = manifest.get("failure") or _stored_failure(
            store, Failure(type=FlowTaskFailed.__qualname__, message=message, traceback="")
        )
    if not manifest:
        record_unreported(run, outcome, message, caught)
    if caught is None:
        types = (error or {}).get("types")
        raise FlowTaskFailed(f"flow task {run.task_id} failed: {message}", types)
    run.log.warning("flow task failed on its last try; caught as a Failure: %s", message)
    record_end(run, "success", instances())  # the task succeeded: downstream gets the Failure
    return Caught([caught] if layout == "items" else caught, caught)


def _succeeded(run: TaskRun, manifest: dict[str, Any], local: bool) -> Any:
    run.log.info(
        "flow task finished in %.3fs (function %.3fs), peak RSS %.1f MiB",
        manifest["seconds"],
        manifest["function_seconds"],
        manifest["peak_rss_mib"],
    )
    _log_result(run, manifest["result"])
    log_usage(run, manifest.get("usage"), local=local)
    return manifest["result"]


def awaited_records(run: TaskRun) -> BaseException | None:
    """Wait for the launch records written while the runtime ran; what failed, if any."""
    background = run.background
    if background is None:
        return None
    try:
        background.wait()
    except Exception as exc:
        run.log.warning("could not store the try's launch records: %s", exc)
        return exc
    finally:
        background.close()
    return None


def _store_report(
    run: TaskRun,
    outcome: Outcome,
    manifest: dict[str, Any],
    succeeded: bool,
    instances: Callable[[], int | None],
) -> None:
    """Store what the runtime reported over its channel, all at once: the manifest, the blobs
    it names and, with a success, the task's end in the run index (and a long index log
    folded). Raises when the manifest or a blob could not be stored: the try does not report
    what is not on record (a manifest stored beside a blob that failed is rewritten as failed).
    """
    from provider.core.records import at_once
    from provider.store.index import compact_if_long, should_check_length

    store, key = run.store, outcome.manifest_key
    blobs = list(outcome.report["blobs"]) if outcome.report else []
    writes: list[Callable[[], Any]] = [lambda: store.write_manifest(key, manifest)]
    writes += [_blob_write(store, blob) for blob in blobs]
    if succeeded:
        writes.append(lambda: record_end(run, "success", instances(), compact=False))
        if should_check_length():
            writes.append(lambda: compact_if_long(store, run.identity["dag_id"]))
    failed = at_once(*writes)[: 1 + len(blobs)]
    error = next((found for found in failed if found is not None), None)
    if error is None:
        return
    if failed[0] is None and manifest.get("status") == "succeeded":
        with contextlib.suppress(Exception):  # on record as what it is: a try that failed
            message = f"a blob it names could not be stored: {error}"
            store.write_manifest(
                key,
                {
                    **manifest,
                    "status": "failed",
                    "error": {"type": "StoreError", "message": message},
                },
            )
    raise FlowTaskFailed(
        f"flow task {run.task_id} failed: its result manifest {key} or a blob it names could "
        f"not be stored ({type(error).__name__}: {error})"
    ) from error


def _blob_write(store: Any, blob: Any) -> Callable[[], Any]:
    data, type_name, encoding = blob
    return lambda: store.put_bytes(data, type_name=type_name, encoding=encoding)


class Caught:
    """A caught failure: ``value`` is what the task returns, ``failure`` the stored
    ``Failure``'s reference (pushed under ``catch="name"`` too)."""

    def __init__(self, value: Any, failure: Any) -> None:
        self.value, self.failure = value, failure


def _stored_failure(store: Any, failure: Any) -> dict[str, Any]:
    """A Failure the worker stores (its runtime reported nothing), previewed like a result."""
    from provider.runtime.preview import preview

    return {**store.put(failure).to_json(), "preview": preview(failure)}


def record_end(run: TaskRun, state: str, instances: int | None, *, compact: bool = True) -> None:
    """This task instance's end in the run index, so its run's status is known without DAG
    callbacks; best effort (the task's own outcome never depends on it). ``compact=False``:
    the caller folds a long log itself."""
    from provider.store.index import record_task_end

    try:
        record_task_end(run.store, run.identity, state, instances=instances, compact=compact)
    except Exception as exc:
        run.log.warning("could not record the task's end in the run index: %s", exc)
    if run.identity.get("map_index", -1) >= 0 and (instances or 0) >= FANOUT_ROLLUP:
        refresh_rollup(run)


FANOUT_ROLLUP = 50  # a mapped task of this many instances keeps its run's rollup current


def refresh_rollup(run: TaskRun) -> None:
    """Bring the run's rollup (its try manifests in one object, for the UI's run tab) up to
    date: one HEAD, and at most once every 30 s a run, reading only what it lacks; best
    effort."""
    from provider.store import rollup
    from provider.store.keys import run_prefix

    try:
        rollup.refresh(run.store, run_prefix(run.identity["dag_id"], run.identity["run_id"]))
    except Exception as exc:
        run.log.warning("could not bring the run's rollup up to date: %s", exc)


def log_usage(run: TaskRun, used: dict[str, Any] | None, *, local: bool) -> None:
    """One line of what the try used against what it asked for, and a warning when the two
    are far apart (or, locally, when a cluster would have killed it)."""
    from provider.runtime.usage import human_mib, suggested_request

    if not used:
        return
    asked = run.spec.resources
    memory, peak = float(asked.memory), float(used["peak_rss_mib"])
    cpus = used["cpu_seconds"] / max(used["wall_seconds"], 1e-3)
    run.log.info(
        "used %s of %s memory, %.1f of %g CPUs (avg)%s",
        human_mib(peak),
        human_mib(memory),
        cpus,
        float(asked.cpu),
        f", {human_mib(used['gpu_memory_mib'])} of GPU memory" if "gpu_memory_mib" in used else "",
    )
    suggested = suggested_request(peak, used["cpu_seconds"], used["wall_seconds"])
    hint = f"Resources(memory={suggested['memory_mib']}) would fit"
    if peak > memory and local:
        run.log.warning(
            "peak memory %s is over the task's request (%s): on Kubernetes or Batch it would "
            "be killed for memory; %s",
            human_mib(peak),
            human_mib(memory),
            hint,
        )
    elif peak > 0.9 * memory:
        run.log.warning(
            "peak memory %s is over 90%% of the request (%s); %s",
            human_mib(peak),
            human_mib(memory),
            hint,
        )
    elif peak < 0.25 * memory and memory > MEMORY_WORTH_WARNING_MIB:
        run.log.warning(
            "peak memory %s is under a quarter of the request (%s); %s",
            human_mib(peak),
            human_mib(memory),
            hint,
        )


MEMORY_WORTH_WARNING_MIB = 1024  # asking for less than this is not worth a warning


def _log_result(run: TaskRun, result: Any) -> None:
    """What ``@task`` logs as "Returned value was", without loading anything."""
    if isinstance(result, dict) and "preview" in result:
        run.log.info("Returned %s (%d bytes stored)", result["preview"], result["size"])
    elif isinstance(result, dict):
        run.log.info("Returned %d values, stored by key: %s", len(result), ", ".join(result))
    elif isinstance(result, list):
        run.log.info("Returned %d items, stored one by one", len(result))


def record_unreported(
    run: TaskRun,
    outcome: Outcome,
    message: str,
    caught: dict[str, Any] | None = None,
    error_type: str = FlowTaskFailed.__qualname__,
) -> None:
    """Write the manifest of a try whose runtime reported nothing, unless it did after all.

    It names what the try left behind (a caught Failure), so ``flowtask gc`` keeps it.
    """
    from provider.core.launch import requested
    from provider.store import MissingArtifact

    try:
        run.store.read_manifest(outcome.manifest_key)
        return
    except MissingArtifact:
        pass
    run.store.write_manifest(
        outcome.manifest_key,
        {
            **run.identity,
            "status": "failed",
            "error": {"type": error_type, "message": message},
            "exit_code": outcome.exit_code,
            "failure_kind": outcome.kind,
            **({"where": dict(outcome.where)} if outcome.where else {}),
            "requested": requested(run.spec),
            "written_by": "worker",
            "finished_at": time.time(),
            **({"failure": caught} if caught else {}),
        },
    )


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "the runtime did not finish"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the runtime was killed by {name}"
    return f"the runtime exited with code {code}"


def record_failure(
    run: TaskRun | None,
    error: BaseException,
    *,
    final: bool,
    identity: Callable[[], dict[str, Any]],
    store: Callable[[], Any],
    instances: Callable[[Any], int | None],
    task: tuple[str, Any, Callable[..., Any], Any],
) -> None:
    """Put a try that ended in ``error`` on record, best effort: its manifest (unless its
    runtime or the worker wrote one) and, when it ends the task (``final``), the task's end.
    A try that failed before it launched (``run`` is None: ``identity`` and ``store`` make
    one; ``task`` is its id, spec, function and log) records its run in the index first, so
    the run is listed, and failed."""
    from provider.core.launch import record_run
    from provider.store import manifest_key

    task_id, spec, function, log = task
    try:
        if run is None:
            ident, opened = identity(), store()
            record_run(opened, ident)
            key = manifest_key(
                ident["dag_id"],
                ident["run_id"],
                ident["task_id"],
                ident["map_index"],
                ident["try_number"],
            )
            run = TaskRun(task_id, spec, function, opened, None, key, ident, log)  # type: ignore[arg-type]
        message = str(error).strip() or type(error).__name__
        outcome = Outcome(run.manifest_key, exit_code=None)
        record_unreported(run, outcome, message, error_type=type(error).__name__)
        if final:
            record_end(run, "failed", instances(run.identity))
    except Exception as exc:
        log.warning("could not record the failed try in the artifact store: %s", exc)
