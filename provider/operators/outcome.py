"""What a flow task try returns: its result reference, a caught ``Failure``, or an error."""

from __future__ import annotations

import signal
import time
from typing import Any

from provider.operators.targets import Outcome, TaskRun


class FlowTaskFailed(RuntimeError):
    """The task's function raised, or the runtime died before reporting.

    ``error_types`` are the function's exception type and its bases (``module.QualName``),
    when the function raised: ``Retry(on=...)`` decides on them.
    """

    def __init__(self, message: str, error_types: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_types = error_types


def settle(op: Any, run: TaskRun, outcome: Outcome, context: Any) -> Any:
    """The result reference, a caught ``Failure``, or ``FlowTaskFailed`` with the reason.

    A try whose runtime wrote no manifest (it died, was killed, timed out, or never started)
    gets one written here, so every try is on record and whatever it stored stays reachable.
    """
    from provider.runtime import Failure
    from provider.store import MissingArtifact

    store = run.store
    try:
        manifest = store.read_manifest(outcome.manifest_key)
    except MissingArtifact:
        manifest = {}
    code = outcome.exit_code
    if manifest.get("status") == "succeeded" and code == 0:
        run.log.info(
            "flow task finished in %.3fs (function %.3fs), peak RSS %.1f MiB",
            manifest["seconds"],
            manifest["function_seconds"],
            manifest["peak_rss_mib"],
        )
        _log_result(run, manifest["result"])
        target = getattr(op, "_target", None)
        log_usage(run, manifest.get("usage"), local=getattr(target, "name", "") == "local")
        record_end(run, context, "success")
        return manifest["result"]
    error = manifest.get("error")
    if error:
        message = f"{error['type']}: {error['message']} (exit code {code})"
    else:
        message = (
            f"{outcome.failure or _exit_reason(code)}; it wrote no result manifest "
            f"{outcome.manifest_key} (see its output above)"
        )
    caught = None
    if op._catches_now(context):
        caught = manifest.get("failure") or _stored_failure(
            store, Failure(type=FlowTaskFailed.__qualname__, message=message, traceback="")
        )
    if not manifest:
        record_unreported(run, outcome, message, caught)
    if caught is None:
        types = (error or {}).get("types")
        raise FlowTaskFailed(f"flow task {op.task_id} failed: {message}", types)
    run.log.warning("flow task failed on its last try; caught as a Failure: %s", message)
    if isinstance(op.flow_spec.catch, str):
        context["ti"].xcom_push(key=op.flow_spec.catch, value=caught)
    record_end(run, context, "success")  # the task succeeded: downstream gets the Failure
    return [caught] if op.result_layout(run.identity["map_index"]) == "items" else caught


def _stored_failure(store: Any, failure: Any) -> dict[str, Any]:
    """A Failure the worker stores (its runtime reported nothing), previewed like a result."""
    from provider.runtime.preview import preview

    return {**store.put(failure).to_json(), "preview": preview(failure)}


def record_end(run: TaskRun, context: Any, state: str) -> None:
    """This task instance's end in the run index, so its run's status is known without DAG
    callbacks; best effort (the task's own outcome never depends on it)."""
    from provider.store.index import record_task_end

    try:
        record_task_end(run.store, run.identity, state, instances=_instances(context, run))
    except Exception as exc:
        run.log.warning("could not record the task's end in the run index: %s", exc)


def _instances(context: Any, run: TaskRun) -> int | None:
    """How many instances the task has in this run: 1 unless mapped; None if unknown."""
    identity = run.identity
    if identity["map_index"] < 0:
        return 1
    try:
        count = context["ti"].get_ti_count(
            dag_id=identity["dag_id"], task_ids=[identity["task_id"]], run_ids=[identity["run_id"]]
        )
    except Exception as exc:  # an Execution API that does not answer: the status waits
        run.log.warning("could not count the instances of the mapped task: %s", exc)
        return None
    return int(count)


def is_final(op: Any, context: Any, error: BaseException) -> bool:
    """Whether this failure ends the task: no retry is left, or none can help (a try that
    cannot work, or an error that ``Retry(on=...)`` does not retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    if isinstance(error, AirflowFailException) or context["ti"].try_number > op.retries:
        return True
    on, types = op.flow_spec.retry.on, getattr(error, "error_types", None)
    return bool(on and types and not any(name in on for name in types))


def record_failure(op: Any, context: Any, error: BaseException, run: TaskRun | None) -> None:
    """Put a try that ended in ``error`` on record, best effort: its manifest (unless its
    runtime or the worker wrote one) and, when it fails the task, the task's end. A try that
    failed before it launched (``run`` is None) records its run in the index first, so the
    run is listed, and failed."""
    from provider import config
    from provider.operators.launch import record_run
    from provider.operators.run_context import run_identity
    from provider.store import manifest_key

    try:
        if run is None:
            identity = run_identity(context, lenient=True)
            store = config.open_artifact_store()
            record_run(store, identity, context)
            key = manifest_key(
                identity["dag_id"],
                identity["run_id"],
                identity["task_id"],
                identity["map_index"],
                identity["try_number"],
            )
            run = TaskRun(
                task_id=op.task_id,
                spec=op.flow_spec,
                function=op.python_callable,
                store=store,
                payload=None,  # type: ignore[arg-type]  # none was stored
                manifest_key=key,
                identity=identity,
                log=op.log,
            )
        message = str(error).strip() or type(error).__name__
        outcome = Outcome(run.manifest_key, exit_code=None)
        record_unreported(run, outcome, message, error_type=type(error).__name__)
        if is_final(op, context, error):
            record_end(run, context, "failed")
    except Exception as exc:
        op.log.warning("could not record the failed try in the artifact store: %s", exc)


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
    from provider.operators.launch import requested
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
