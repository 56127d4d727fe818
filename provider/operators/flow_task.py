"""The operator behind ``@flow_task``: store the payload, run it on the compute target, return
the result reference."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

from airflow.sdk.bases.decorator import DecoratedOperator

from provider.runtime.payload import ResultLayout
from provider.specs import SpecError, TaskSpec, airflow_retry_kwargs, check_secrets_for
from provider.xcom.references import references_kept


class FlowTaskFailed(RuntimeError):
    """The task's function raised, or the runtime died before reporting."""


class ComputeUnavailable(RuntimeError):
    """The compute target the task resolved to cannot run in this version."""


def retry_kwargs_given(spec: TaskSpec, *, retry: bool, timeout: bool) -> dict[str, Any]:
    """Airflow's retry / timeout keyword arguments for the spec fields the user actually set."""
    mapped = airflow_retry_kwargs(spec)
    keep = set()
    if retry:
        keep |= {"retries", "retry_delay", "retry_exponential_backoff", "max_retry_delay"}
    if timeout:
        keep.add("execution_timeout")
    return {key: value for key, value in mapped.items() if key in keep}


class FlowTaskOperator(DecoratedOperator):
    """Run a Python function where its specs say: locally, on Kubernetes or on AWS Batch."""

    custom_operator_name = "@task.flow_task"

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
        super().__init__(
            python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs
        )

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        # Upstream results arrive as references; the runtime loads them where the work runs.
        with references_kept():
            super().render_template_fields(context, jinja_env)

    def execute(self, context: Any) -> Any:
        from provider import config
        from provider.compute import run_local, runtime_command
        from provider.operators.by_value import pickled_by_value
        from provider.operators.run_context import resolve_compute, run_identity
        from provider.runtime import Payload
        from provider.store import manifest_key, run_manifest_key

        identity = run_identity(context)
        compute = resolve_compute(
            self.flow_spec.compute, context.get("params") or {}, config.default_compute()
        )
        if compute == "batch":
            raise ComputeUnavailable(
                f"compute={compute!r} is not available in this flowtask version; run the DAG "
                'locally with -c \'{"flow_compute": "local"}\''
            )
        if compute == "kubernetes":
            check_secrets_for(compute, self.flow_spec.environment.secrets)
        store = config.open_artifact_store()
        store.write_manifest(
            run_manifest_key(identity["dag_id"], identity["run_id"]),
            {k: identity[k] for k in ("dag_id", "run_id", "namespace", "tags")},
        )
        with references_kept():
            args = tuple(_materialize(arg) for arg in self.op_args)
            kwargs = {name: _materialize(arg) for name, arg in self.op_kwargs.items()}
        payload = Payload(
            function=self.python_callable,
            args=args,
            kwargs=kwargs,
            layout=self._result_layout(),
            identity=identity,
        )
        with pickled_by_value(self.python_callable):
            payload_ref = store.put(payload, by_value=True)
        key = manifest_key(
            identity["dag_id"],
            identity["run_id"],
            identity["task_id"],
            identity["map_index"],
            identity["try_number"],
        )
        self.log.info(
            "flow task %s: compute=%s, specs=%r, payload=%s",
            self.task_id,
            compute,
            self.flow_spec,
            payload_ref.uri,
        )
        if compute == "kubernetes":
            return self._run_pod(context, store, payload_ref, key, identity)
        self._warn_unmet_requirements()
        argv = runtime_command(store.root_uri, payload_ref.to_json(), key, python=sys.executable)
        code = run_local(
            argv, env=self._child_env(), log_line=lambda line: self.log.info("%s", line)
        )
        return self._outcome(store, key, code, context)

    def _run_pod(
        self, context: Any, store: Any, payload: Any, key: str, identity: dict[str, Any]
    ) -> Any:
        from provider.operators.kubernetes import (
            code_package,
            pod_operator,
            run_pod,
            store_code_package,
        )

        if store.root_uri.startswith("file://"):
            self.log.warning(
                "the artifact store %s is a local folder: pods can only use it where they "
                "mount the same path; set [flow_task] artifact_store to an s3:// URI",
                store.root_uri,
            )
        code = store_code_package(store, code_package(self.python_callable))
        self.log.info("code package: %s (%d bytes)", code.uri, code.size)
        self._pod_operator = pod_operator(
            self.task_id,
            self.flow_spec,
            store_uri=store.root_uri,
            code=code,
            payload=payload.to_json(),
            manifest_key=key,
            identity=identity,
        )
        result = run_pod(self._pod_operator, context, key)
        return self._outcome(
            store, result.manifest_key, result.exit_code, context, failure=result.failure
        )

    def on_kill(self) -> None:
        pod_op = getattr(self, "_pod_operator", None)
        if pod_op is not None:
            pod_op.on_kill()

    def _result_layout(self) -> ResultLayout:
        if self.multiple_outputs:
            return "keys"
        if next(self.iter_mapped_dependants(), None) is not None:
            return "items"
        return "value"

    def _child_env(self) -> dict[str, str]:
        from provider import config

        env = {
            **os.environ,
            **config.runtime_aws_env(),
            **self.flow_spec.environment.env_dict,
            "PYTHONUNBUFFERED": "1",
        }
        if self.flow_spec.environment.secrets:
            self.log.info(
                "secrets %s: local compute reads secret values from the local environment",
                list(self.flow_spec.environment.secrets),
            )
        return env

    def _warn_unmet_requirements(self) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        for line in self.flow_spec.environment.pip:
            requirement = Requirement(line)
            try:
                installed = version(requirement.name)
            except PackageNotFoundError:
                installed = None
            if installed is None or not requirement.specifier.contains(installed, prereleases=True):
                self.log.warning(
                    "local compute runs in the worker's environment: %r is not satisfied "
                    "(installed: %s)",
                    line,
                    installed or "none",
                )

    def _outcome(
        self, store: Any, key: str, code: int | None, context: Any, failure: str | None = None
    ) -> Any:
        """The result reference, a caught ``Failure``, or ``FlowTaskFailed`` with the reason.

        ``failure`` is the compute target's own account (an OOMKilled or evicted pod).
        """
        from provider.runtime import Failure
        from provider.store import MissingArtifact

        try:
            manifest = store.read_manifest(key)
        except MissingArtifact:
            manifest = {}
        if manifest.get("status") == "succeeded" and code == 0:
            self.log.info(
                "flow task finished in %.3fs (function %.3fs), peak RSS %.1f MiB",
                manifest["seconds"],
                manifest["function_seconds"],
                manifest["peak_rss_mib"],
            )
            return manifest["result"]
        error = manifest.get("error")
        if error:
            message = f"{error['type']}: {error['message']} (exit code {code})"
        else:
            reason = failure or f"the runtime exited with code {code}"
            message = f"{reason}; it wrote no result manifest {key} (see its output above)"
        catch = self.flow_spec.catch
        if not catch or context["ti"].try_number <= self.retries:
            raise FlowTaskFailed(f"flow task {self.task_id} failed: {message}")
        self.log.warning("flow task failed on its last try; caught as a Failure: %s", message)
        caught = (
            manifest.get("failure")
            or store.put(
                Failure(type=FlowTaskFailed.__qualname__, message=message, traceback="")
            ).to_json()
        )
        if isinstance(catch, str):
            context["ti"].xcom_push(key=catch, value=caught)
        return [caught] if self._result_layout() == "items" else caught


def _materialize(value: Any) -> Any:
    """Turn lazily pulled XCom sequences (a mapped upstream's results) into lists."""
    from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence

    if isinstance(value, LazyXComSequence):
        return list(value)
    return value
