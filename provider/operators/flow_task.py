"""The operator behind ``@flow_task``: store the payload, run it on the compute target, return
the result reference."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator

from provider.core.outcome import FlowTaskFailed
from provider.operators.links import BatchJobLink, BatchLogLink, PodLink
from provider.operators.targets import ComputeUnavailable
from provider.runtime.payload import ResultLayout
from provider.specs import SpecError, TaskSpec
from provider.xcom.references import references_kept, references_loaded

__all__ = ["ComputeUnavailable", "FlowTaskFailed", "FlowTaskOperator"]


class FlowTaskOperator(DecoratedOperator):
    """Run a Python function where its specs say: locally, on Kubernetes or on AWS Batch."""

    custom_operator_name = "@task.flow_task"
    operator_extra_links = (
        PodLink(),
        BatchJobLink(),
        BatchLogLink(),
    )  # where each try ran (provider.ui)

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        flow_spec: TaskSpec | None = None,
        foreach_items: Any = None,
        foreach_argument: str | None = None,
        **kwargs: Any,
    ) -> None:
        spec = flow_spec or TaskSpec()  # folded when the DAG file is parsed (``flow_task``)
        if spec.catch and kwargs.get("multiple_outputs"):
            raise SpecError(
                "catch",
                spec.catch,
                "catch=None with multiple_outputs=True",
                "a caught failure is one value, not a dict of outputs",
            )
        self.flow_spec = spec
        if foreach_items is not None:  # the items arrive when the task runs: bind what is known
            from provider.compat.airflow_sdk import MAPPED_VALIDATION_ONLY

            kwargs[MAPPED_VALIDATION_ONLY] = True
            kwargs["multiple_outputs"] = False  # a foreach returns the list of its results
            from provider.core.foreach import check_argument

            check_argument(python_callable, op_kwargs or {}, foreach_argument)
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs
        )
        # Not a template field: a list of ten thousand strings is data, not Jinja.
        self.foreach_items = foreach_items
        self.foreach_argument = foreach_argument
        if foreach_items is not None:
            from provider.compat.airflow_sdk import XComArg

            XComArg.apply_upstream_relationship(self, foreach_items)

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Upstream results arrive as references; the runtime loads them where the work runs.
        with references_kept():
            super().render_template_fields(context, jinja_env)
            if self.foreach_items is not None:
                from provider.xcom.mapping import foreach_items

                self.foreach_items = foreach_items(self.foreach_items, context)

    def _render(self, template: Any, context: Any, dag: Any = None) -> Any:
        # A Jinja template renders values, as for any task ("{{ ti.xcom_pull(...) }}").
        with references_loaded():
            return super()._render(template, context, dag)

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import TaskDeferred

        self._run: Any = None  # the try, once prepared
        try:
            return self._execute(context)
        except TaskDeferred:
            raise
        except BaseException as exc:  # on record, so `flowtask show` never says running forever
            self._record_failure(context, exc)
            raise

    def _execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowTaskTimeout, TaskDeferred

        from provider import config
        from provider.core.launch import prepare_try
        from provider.core.outcome import record_unreported
        from provider.operators.boundary import fail_at_once, task_try
        from provider.operators.targets import Outcome, compute_target

        with fail_at_once(self.task_id):
            task = task_try(self, context)
            self._target = compute_target(task.compute)
            self._run = run = prepare_try(task, self._target, config.open_artifact_store())
        deferred = False
        try:
            if run.foreach is not None:
                outcome = self._run_foreach(run, context)
            else:
                outcome = self._target.run(run, context)
        except TaskDeferred:
            deferred = True  # the payload stays until the try resumes and ends
            raise
        except AirflowTaskTimeout:
            self._target.kill()
            outcome = Outcome(
                run.manifest_key,
                exit_code=None,
                failure=f"the task ran longer than its timeout ({self.execution_timeout})",
                kind="timeout",
            )
            if not self._catches_now(context):
                record_unreported(run, outcome, outcome.failure or "")
                raise
        finally:
            if not deferred:
                _discard_payload(run)
        return self._settled(run, outcome, context)

    def execute_complete(self, context: Any, event: Any = None, resume: Any = None) -> Any:
        """Where a try that its compute target deferred resumes, once the trigger fired."""
        from provider import config
        from provider.core.resume import resumed_run
        from provider.operators.targets import RESUME_KEY, compute_target

        if resume is None and isinstance(event, dict):  # `airflow dags test` passes the event
            resume = event.get(RESUME_KEY)
        store = config.open_artifact_store()
        self._run = run = resumed_run(
            self.task_id, self.flow_spec, self.python_callable, store, resume, self.log
        )
        self._target = compute_target(resume["compute"])
        try:
            try:
                outcome = self._target.resume(run, context, event, resume["target"])
            finally:
                _discard_payload(run)
            return self._settled(run, outcome, context)
        except BaseException as exc:
            self._record_failure(context, exc)
            raise

    def _settled(self, run: Any, outcome: Any, context: Any) -> Any:
        """The try's result; a caught failure also under its ``catch="name"`` key."""
        from provider.core.outcome import Caught, settle
        from provider.operators.boundary import mapped_instances
        from provider.operators.links import SETTLED

        try:
            result = settle(
                run,
                outcome,
                catching=self._catches_now(context),
                local=self._target.is_local,
                instances=lambda: mapped_instances(context, run.identity, self.log),
                layout=self.result_layout(run.identity["map_index"]),
            )
        finally:
            manifest = run.settled.get("manifest")
            if manifest:  # the links read where it ran from here, not from the store again
                where = manifest.get("where")
                SETTLED[outcome.manifest_key] = where if isinstance(where, dict) else {}
        if not isinstance(result, Caught):
            return result
        if isinstance(self.flow_spec.catch, str):
            context["ti"].xcom_push(key=self.flow_spec.catch, value=result.failure)
        return result.value

    def _record_failure(self, context: Any, error: BaseException) -> None:
        """Put a try that ended in ``error`` on record (best effort; see ``record_failure``)."""
        from airflow.sdk.exceptions import AirflowFailException

        from provider import config
        from provider.core.outcome import record_failure
        from provider.operators.boundary import mapped_instances, run_identity

        on, types = self.flow_spec.retry.on, getattr(error, "error_types", None)
        final = (
            isinstance(error, AirflowFailException)
            or context["ti"].try_number > self.retries
            or bool(on and types and not any(name in on for name in types))
        )
        record_failure(
            self._run,
            error,
            final=final,
            identity=lambda: run_identity(context, lenient=True),
            store=config.open_artifact_store,
            instances=lambda identity: mapped_instances(context, identity, self.log),
            task=(self.task_id, self.flow_spec, self.python_callable, self.log),
        )

    def _run_foreach(self, run: Any, context: Any) -> Any:
        """Run the chunks without stored results (and, where processes died, their other items
        again), then gather every chunk into the result."""
        from provider.core.foreach import run_foreach

        return run_foreach(
            run,
            lambda chunks: self._target.run_foreach(run, chunks, context),
            catching=self._catches_now(context),
            stopped=lambda: self._target.killed,
        )

    def on_kill(self) -> None:
        target = getattr(self, "_target", None)
        if target is not None:
            target.killed = True
            target.kill()

    def _catches_now(self, context: Any) -> bool:
        """Whether a failure of this try is caught: ``catch=`` is set and no retry is left."""
        return bool(self.flow_spec.catch) and context["ti"].try_number > self.retries

    def result_layout(self, map_index: int) -> ResultLayout:
        """How the runtime stores the result: per key, per item, or whole.

        Downstream tasks mapped over an unmapped task's result get one of its items each; over
        a mapped task's results (``b.expand(x=a.expand(...))``), one whole result each.
        """
        if self.multiple_outputs:
            return "keys"
        if map_index < 0 and next(self.iter_mapped_dependants(), None) is not None:
            return "items"
        return "value"


def _discard_payload(run: Any) -> None:
    """The payload holds the rendered arguments (secrets included): it ends with the try."""
    if getattr(run, "payload_data", None) is not None:  # sent over a channel, never stored
        return
    try:
        run.store.discard(run.payload)
    except Exception as exc:  # never hide the task's own outcome behind a cleanup failure
        run.log.warning("could not delete the payload %s: %s", run.payload.uri, exc)
