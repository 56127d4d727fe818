"""Run a stored flow task payload as an AWS Batch job, through the official ``BatchOperator``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.core.errors import CannotRun
from provider.core.targets.base import ComputeTarget, Launch, Outcome, TaskRun
from provider.specs import SpecError, TaskSpec
from provider.store import Reference
from provider.translate.batch import batch_options, ignored_by_batch
from provider.translate.batch_array import ChunkJob, chunk_jobs, chunk_label

STOP_REASON = "flowtask: stopped by Airflow (the task timed out or was killed)"


class BatchTarget(ComputeTarget):
    """``compute="batch"``: a job through the official ``BatchOperator``."""

    name = "batch"

    def platform(self, spec: TaskSpec) -> str:
        from provider import settings

        return batch_options(spec).target_platform or settings.value("target_platform")

    def __init__(self) -> None:
        self._operator: Any = None
        self._definition: dict[str, Any] = {}
        self._request: dict[str, Any] = {}
        self._launch: Launch | None = None
        self._watch: Any = None
        self._arns: set[str] = set()  # job definitions this try has logged

    def check(self, spec: TaskSpec) -> None:
        from provider import settings
        from provider.translate.batch import check_batch

        check_batch(spec, batch_options(spec), settings.artifact_store_uri())

    def prepare(self, run: TaskRun) -> dict[str, Reference]:
        from provider.core.code import stored_code_package
        from provider.core.environments.tasks import container_environments

        for ignored in ignored_by_batch(run.spec):
            run.log.warning("%s", ignored)
        code = stored_code_package(run)
        envs = container_environments(run, self.platform(run.spec))
        self._launch = Launch.of(run, code, envs)
        plan = run.foreach
        # A foreach's first array job stands for the others (they differ in a few digits).
        jobs = [] if plan is None else chunk_jobs(plan.prefix, range(plan.chunks))
        try:
            self._definition, self._request = batch_requests(
                run.spec, self._launch, foreach=jobs[0] if jobs else None
            )
        except SpecError as exc:  # too many tags for one job: no retry can fix that
            raise CannotRun(str(exc)) from None
        return {"code_package": code, **envs.records()}

    def run(self, run: TaskRun, context: Any) -> Outcome:
        from provider.core.targets.batch_jobs import (
            discard_payload,
            job_definition_arn,
            running_job,
        )

        self._operator = op = batch_operator(run.task_id, self._request)
        client = op.hook.client
        manifest_key = run.manifest_key
        earlier = running_job(client, op.job_queue, op.job_name, run.store)
        if earlier is not None:
            run.log.warning(
                "reattaching to Batch job %s (%s), left running by an earlier try of this task "
                "instance; its result manifest: %s",
                earlier.job_id,
                earlier.status,
                earlier.manifest_key,
            )
            op.job_id, manifest_key = earlier.job_id, earlier.manifest_key
        else:
            arn, registered = job_definition_arn(client, self._definition)
            run.log.info("job definition %s (%s)", arn, "registered" if registered else "found")
            op.submit_job(context)
        outcome = watch_job(op, context, manifest_key, int(run.spec.resources.memory))
        if earlier is not None:
            discard_payload(run.store, earlier.payload)
        return outcome

    def run_foreach(self, run: TaskRun, chunks: list[int], context: Any) -> Outcome:
        """Array jobs of the same job definition and retry strategy as a single job: one per
        10,000 chunks at once, or rolling under ``ForeachOptions(max_parallel=...)``."""
        from provider import settings
        from provider.core.targets.batch_foreach import ArrayWatch
        from provider.core.targets.batch_jobs import discard_payload, running_jobs
        from provider.translate.batch_array import describe_lost_chunks

        plan = run.foreach
        self._operator = op = batch_operator(run.task_id, self._request)
        client = op.hook.client
        earlier = [
            job
            for job in running_jobs(client, op.job_queue, op.job_name, run.store)
            if job.foreach == plan.prefix and job.chunks
        ]
        self._watch = watch = ArrayWatch(
            client,
            run.store,
            plan,
            chunks,
            submit=lambda job: self._submit(run, job, context),
            log=run.log,
            poll_seconds=settings.value("batch_poll_interval"),
            max_parallel=run.spec.foreach.max_parallel,
            follow=lambda child: _follow_log(op, child),
        )
        for job in earlier:
            run.log.warning(
                "reattaching to Batch job %s (%s) of %d chunks, left running by an earlier try",
                job.job_id,
                job.status,
                len(job.chunks),
            )
            watch.adopt(job.job_id, job.chunks)
        watch.run()
        lost = watch.lost()
        _log_tails(op, lost[:3], run.log)
        labelled = [(chunk_label(plan, chunk), job) for chunk, job in lost]
        failure = describe_lost_chunks(labelled, int(run.spec.resources.memory))
        if failure:
            run.log.warning("%s", failure)
        for job in earlier:
            discard_payload(run.store, job.payload)
        ended = all(job.status == "SUCCEEDED" for job in watch.jobs)
        return Outcome(run.manifest_key, exit_code=0 if ended else 1, failure=failure)

    def _submit(self, run: TaskRun, job: Any, context: Any) -> str:
        """Submit one job of chunks through ``BatchOperator``, its job definition registered
        first if need be (an array's command differs from a job of one chunk's); its id."""
        from provider.compat.amazon import share_hook
        from provider.core.targets.batch_jobs import job_definition_arn

        assert self._launch is not None, "prepare() stores the code package first"
        definition, request = batch_requests(run.spec, self._launch, foreach=job)
        arn, registered = job_definition_arn(self._operator.hook.client, definition)
        if arn not in self._arns:
            self._arns.add(arn)
            run.log.info("job definition %s (%s)", arn, "registered" if registered else "found")
        op = batch_operator(run.task_id, request)
        share_hook(op, self._operator.hook)  # one client for every submission
        op.log_overrides = not self._watch.jobs  # the first submission logs its command
        op.submit_job(context)
        return str(op.job_id)

    def kill(self) -> None:
        from provider.core.targets.batch_jobs import mark_stopped

        op = self._operator
        if self._watch is not None:
            ids = self._watch.stop()
        else:
            ids = [op.job_id] if op is not None and op.job_id else []
        for job_id in ids:
            untagged = mark_stopped(op.hook.client, job_id, STOP_REASON)
            op.log.info("Batch job %s terminated: %s", job_id, STOP_REASON)
            if untagged:
                op.log.warning("could not tag Batch job %s as stopped: %s", job_id, untagged)


def batch_requests(
    spec: TaskSpec, launch: Launch, foreach: ChunkJob | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``register_job_definition`` and ``submit_job`` requests of one task try (with
    ``foreach``, of the job that runs those chunks)."""
    from provider import config
    from provider.translate import bootstrap_command
    from provider.translate.batch import batch_job, check_batch
    from provider.translate.command import bootstrap_launcher

    options, environments = batch_options(spec), launch.environments
    check_batch(spec, options, launch.store_uri)
    argv = bootstrap_command(
        launch.store_uri,
        launch.code,
        launch.payload,
        launch.manifest_key,
        foreach=() if foreach is None else foreach.runtime_mode,
        environments=environments.archives if environments is not None else (),
        arch=environments.arch if environments is not None else None,
        program=bootstrap_launcher(),
    )
    return batch_job(
        spec,
        argv=argv,
        image=spec.environment.image or config.default_image(),
        options=options,
        identity=launch.identity,
        store_uri=launch.store_uri,
        manifest_key=launch.manifest_key,
        env=config.pod_store_env(),
        foreach=foreach,
    )


def batch_operator(task_id: str, request: Mapping[str, Any]) -> Any:
    """A ``BatchOperator`` (not attached to any DAG) that submits exactly ``request``."""
    from provider import settings
    from provider.operators.targets.batch_operator import FlowBatchOperator
    from provider.translate.batch import operator_kwargs

    return FlowBatchOperator(
        task_id=task_id,
        aws_conn_id=settings.value("aws_conn_id"),
        region_name=settings.value("aws_region"),
        poll_seconds=settings.value("batch_poll_interval"),
        **operator_kwargs(request),
    )


def watch_job(op: Any, context: Any, manifest_key: str, memory_mib: int) -> Outcome:
    """Wait for the job to end; a failed job is described, not raised: the manifest decides."""
    from airflow.sdk.exceptions import AirflowException

    from provider.translate.batch_status import (
        describe_job_failure,
        job_exit_code,
        job_failure_kind,
        log_location,
    )

    error = None
    try:
        op.monitor_job(context)
    except AirflowException as exc:  # the job failed (or could not be watched)
        error = str(exc).splitlines()[0][:500]
    job = op.hook.get_job_description(op.job_id)
    failure = describe_job_failure(job, memory_mib)
    if failure is None and job.get("status") != "SUCCEEDED":
        failure = f"Batch job {op.job_id} ended {job.get('status')}: {error}"
    where = {"platform": "batch", "batch_job_id": op.job_id}
    region = getattr(op.hook, "conn_region_name", None)
    location = log_location(job)
    where |= {"region": region} if region else {}
    where |= {"log_group": location[0], "log_stream": location[1]} if location else {}
    return Outcome(
        manifest_key=manifest_key,
        exit_code=job_exit_code(job),
        failure=failure,
        kind=job_failure_kind(job),
        where=where,
    )


def _follow_log(op: Any, child_id: str) -> Any:
    """Stream one child's CloudWatch log (every attempt) into the task log; what stops it."""
    from provider.compat.amazon import batch_log_fetcher

    fetcher = batch_log_fetcher(op, child_id)
    if fetcher is None:
        return None
    op.log.info("the log of Batch child %s follows (the others' are in CloudWatch)", child_id)
    fetcher.start()

    def stop() -> None:
        fetcher.stop()
        fetcher.join()

    return stop


def _log_tails(op: Any, lost: Any, log: Any) -> None:
    """The last lines of the log of a few children that wrote no result."""
    from provider.operators.targets.batch_operator import log_tail

    for chunk, job in lost:
        lines = log_tail(op, job)
        if lines:
            log.warning(
                "the end of the log of Batch child %s (chunk %d):\n%s",
                job["jobId"],
                chunk,
                "\n".join(lines),
            )
