"""The operator behind ``@flow_task``: store the payload, run it on the compute target, return
the result reference."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator

from provider.operators.links import BatchJobLink, PodLink
from provider.operators.outcome import FlowTaskFailed
from provider.operators.targets import ComputeUnavailable
from provider.runtime.payload import ResultLayout
from provider.specs import SpecError, TaskSpec, airflow_retry_kwargs
from provider.xcom.references import references_kept, references_loaded

__all__ = ["ComputeUnavailable", "FlowTaskFailed", "FlowTaskOperator", "retry_kwargs_given"]


def retry_kwargs_given(spec: TaskSpec, *, retry: bool, timeout: bool) -> dict[str, Any]:
    """Airflow's retry / timeout keyword arguments for the spec fields the user actually set."""
    mapped = airflow_retry_kwargs(spec)
    keep = set()
    if retry:
        keep |= {"retries", "retry_delay", "retry_exponential_backoff", "max_retry_delay"}
        if spec.retry.on:
            from provider.operators.retry_policy import FlowRetryPolicy

            mapped["retry_policy"] = FlowRetryPolicy(spec.retry.on)
            keep.add("retry_policy")
    if timeout:
        keep.add("execution_timeout")
    return {key: value for key, value in mapped.items() if key in keep}


class FlowTaskOperator(DecoratedOperator):
    """Run a Python function where its specs say: locally, on Kubernetes or on AWS Batch."""

    custom_operator_name = "@task.flow_task"
    operator_extra_links = (PodLink(), BatchJobLink())  # where each try ran (provider.ui)

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        flow_spec: TaskSpec | None = None,
        resources: Any = None,
        retry: Any = None,
        timeout: Any = None,
        catch: Any = None,
        environment: Any = None,
        compute: Any = None,
        kubernetes: Any = None,
        batch: Any = None,
        foreach_items: Any = None,
        foreach_argument: str | None = None,
        **kwargs: Any,
    ) -> None:
        spec = (flow_spec or TaskSpec()).with_overrides(
            resources=resources,
            retry=retry,
            timeout=timeout,
            catch=catch,
            environment=environment,
            compute=compute,
            kubernetes=kubernetes,
            batch=batch,
        )
        kwargs.update(
            retry_kwargs_given(spec, retry=retry is not None, timeout=timeout is not None)
        )
        if spec.catch and kwargs.get("multiple_outputs"):
            raise SpecError(
                "catch",
                spec.catch,
                "catch=None with multiple_outputs=True",
                "a caught failure is one value, not a dict of outputs",
            )
        self.flow_spec = spec
        if foreach_items is not None:  # the items arrive when the task runs: bind what is known
            kwargs["_airflow_mapped_validation_only"] = True
            kwargs["multiple_outputs"] = False  # a foreach returns the list of its results
            _check_foreach_argument(python_callable, op_kwargs or {}, foreach_argument)
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs
        )
        # Not a template field: a list of ten thousand strings is data, not Jinja.
        self.foreach_items = foreach_items
        self.foreach_argument = foreach_argument
        if foreach_items is not None:
            from airflow.sdk.definitions.xcom_arg import XComArg

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

        from provider.operators.outcome import record_failure

        self._run: Any = None  # the try, once prepared
        try:
            return self._execute(context)
        except TaskDeferred:
            raise
        except BaseException as exc:  # on record, so `flowtask show` never says running forever
            record_failure(self, context, exc, self._run)
            raise

    def _execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowTaskTimeout, TaskDeferred

        from provider.operators.launch import prepare_try
        from provider.operators.outcome import record_unreported, settle
        from provider.operators.targets import Outcome

        run, self._target = prepare_try(self, context)
        self._run = run
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
        return settle(self, run, outcome, context)

    def execute_complete(self, context: Any, event: Any = None, resume: Any = None) -> Any:
        """Where a try that its compute target deferred resumes, once the trigger fired."""
        from provider.operators.outcome import record_failure, settle
        from provider.operators.resume import resumed_try
        from provider.operators.targets import RESUME_KEY

        if resume is None and isinstance(event, dict):  # `airflow dags test` passes the event
            resume = event.get(RESUME_KEY)
        run, self._target = resumed_try(self, resume)
        try:
            try:
                outcome = self._target.resume(run, context, event, resume["target"])
            finally:
                _discard_payload(run)
            return settle(self, run, outcome, context)
        except BaseException as exc:
            record_failure(self, context, exc, run)
            raise

    def _run_foreach(self, run: Any, context: Any) -> Any:
        """Run the chunks without stored results (and, where processes died, their other items
        again), then gather every chunk into the result."""
        import time

        from provider.operators.foreach import gather, pending_chunks, run_to_the_end
        from provider.operators.targets import Outcome

        started = time.time()
        plan = run.foreach
        pending = pending_chunks(run.store, plan)
        self.log.info(
            "foreach: %d items in %d chunks of %d; %d chunks to run%s",
            plan.length,
            plan.chunks,
            plan.chunk_size,
            len(pending),
            f" ({plan.chunks - len(pending)} done by an earlier try)"
            if plan.chunks > len(pending)
            else "",
        )
        catching = self._catches_now(context)
        outcome = Outcome(run.manifest_key, exit_code=0)
        if pending:
            outcome = run_to_the_end(
                run.store,
                plan,
                run.identity["try_number"],
                lambda chunks: self._target.run_foreach(run, chunks, context),
                pending,
                self.log,
                catching=catching,
                stopped=lambda: self._target.killed,
            )
        gather(
            run.store,
            plan,
            run.manifest_key,
            run.identity,
            catching=catching,
            started=started,
            unreported=outcome.failure,
            log=self.log,
        )
        return Outcome(run.manifest_key, exit_code=0, failure=outcome.failure)

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


def _check_foreach_argument(
    function: Callable[..., Any], op_kwargs: Mapping[str, Any], argument: str | None
) -> None:
    """The function takes the argument each item is passed as."""
    import inspect

    if argument is None:
        return
    try:
        inspect.signature(function).bind_partial(**{**op_kwargs, argument: None})
    except TypeError as exc:
        raise TypeError(f".foreach({argument}=...): {function.__name__} {exc}") from None


def _discard_payload(run: Any) -> None:
    """The payload holds the rendered arguments (secrets included): it ends with the try."""
    try:
        run.store.discard(run.payload)
    except Exception as exc:  # never hide the task's own outcome behind a cleanup failure
        run.log.warning("could not delete the payload %s: %s", run.payload.uri, exc)
