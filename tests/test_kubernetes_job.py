"""``.foreach`` on Kubernetes: specs -> KubernetesJobOperator -> the real V1Job, and what a
Job's status and pods say (no cluster).

Golden files live in tests/golden/jobs/; regenerate them with ``FLOWTASK_UPDATE_GOLDEN=1``
after a deliberate change, and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from k8s_jobs import admit_job
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from pods import finished_pod, pending_pod

from provider import KubernetesOptions, Resources, Retry, TaskSpec
from provider.operators.targets.job_operator import FlowJobOperator
from provider.translate import pod_operator_kwargs
from provider.translate.kubernetes_job import (
    INDEX_ANNOTATION,
    JobStartWatch,
    JobState,
    describe_job_failure,
    foreach_mode,
    indexed_job_kwargs,
    job_name,
    job_state,
    supports_backoff_limit_per_index,
)

GOLDEN = Path(__file__).parent / "golden" / "jobs"
IDENTITY = {
    "dag_id": "score_all",
    "run_id": "manual__2026-11-28T00:00:00+00:00",
    "task_id": "score",
    "map_index": -1,
    "try_number": 2,
    "namespace": "user:alice",
    "tags": ["nightly"],
}
PENDING = [0, 1, 2, 5, 7]  # a retry's chunks: those without a stored result
SPEC = TaskSpec.build(
    resources=Resources(cpu=2, memory="4Gi"),
    retry=Retry(times=1, infra=2),
    timeout="1h",
    kubernetes=KubernetesOptions(
        tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        labels={"team": "ml"},
    ),
    foreach={"max_parallel": 3},
)
CASES = {"foreach_indexed": True, "foreach_before_1_29": False}
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def render(
    spec: TaskSpec = SPEC, chunks: list[int] = PENDING, per_index: bool = True, **identity: Any
) -> dict[str, Any]:
    """The Job the real operator builds from the translated kwargs, as Kubernetes JSON."""
    identity = {**IDENTITY, **identity}
    kwargs = pod_operator_kwargs(
        spec,
        identity=identity,
        command=["python3", "-c", "<bootstrap>", "--", "foreach", *foreach_mode(chunks)],
        image="python:3.11-slim",
        manifest_key="runs/score_all/manual/score/-1/2/result.json",
        options=spec.kubernetes,
        conn_id="kubernetes_default",
    )
    kwargs |= indexed_job_kwargs(
        identity["task_id"],
        chunks,
        max_parallel=spec.foreach.max_parallel or 100,
        retries=spec.retry.infra,
        per_index=per_index,
    )
    op = FlowJobOperator(task_id=identity["task_id"], schedule_timeout=600, **kwargs)
    return dict(ApiClient().sanitize_for_serialization(op.render_job()))


def stable(job: dict[str, Any]) -> dict[str, Any]:
    """Without the random name suffixes and the Airflow version."""
    job["metadata"]["name"] = re.sub(r"-[a-z0-9]{8}$", "-<suffix>", job["metadata"]["name"])
    template = job["spec"]["template"]["metadata"]
    template["name"] = re.sub(r"-[a-z0-9]{8}$", "-<suffix>", template["name"])
    template["labels"].pop("airflow_version")
    return job


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_job_matches_golden(case: str):
    job = stable(render(per_index=CASES[case]))
    golden = GOLDEN / f"{case}.json"
    text = json.dumps(job, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("FLOWTASK_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; see the module docstring"


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_every_golden_job_passes_the_api_servers_checks(golden: Path):
    job = json.loads(golden.read_text())
    job["metadata"]["name"] = job["metadata"]["name"].replace("<suffix>", "abcd1234")
    admit_job(job)  # raises Invalid with the API server's message


def test_the_job_runs_the_pending_chunks_with_the_pod_translation_and_per_index_retries():
    job = render()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 5, 3)
    assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
    assert spec["activeDeadlineSeconds"] == pod["activeDeadlineSeconds"] == 3600
    container = pod["containers"][0]
    assert container["command"][-4:] == [
        "--chunk-env",
        "JOB_COMPLETION_INDEX",
        "--chunks",
        "0-2,5,7",
    ]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4096Mi"}
    assert pod["restartPolicy"] == "Never" and pod["tolerations"][0]["key"] == "spot"
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"]["flowtask.io/task"] == "score" and meta["labels"]["team"] == "ml"
    old = render(per_index=False)["spec"]
    assert old["backoffLimit"] == 2 * 5 and "backoffLimitPerIndex" not in old


@pytest.mark.parametrize("task_id", ["score", "group." + "very_long_task_name_" * 4])
@pytest.mark.parametrize("completions", [1, 10, 1000, 100_000])
def test_the_last_pods_hostname_is_a_dns_label(task_id: str, completions: int):
    stem = job_name(task_id, completions)
    hostname = f"job-{stem}-abcd1234-{completions - 1}"  # what the API server checks
    assert len(hostname) <= 63 and DNS_LABEL.fullmatch(hostname), hostname
    assert stem.endswith("task-name") or stem == "score"


def test_the_operators_own_name_keeps_the_room_for_the_index():
    job = render(chunks=list(range(1000)), task_id="group." + "very_long_task_name_" * 4)
    assert len(f"{job['metadata']['name']}-999") <= 63
    admit_job(job)


@pytest.mark.parametrize(
    ("major", "minor", "supported"),
    [
        ("1", "28", False),
        ("1", "29", True),
        ("1", "29+", True),
        ("1", "33", True),
        ("2", "0", True),
    ],
)
def test_backoff_limit_per_index_needs_1_29(major: str, minor: str, supported: bool):
    assert supports_backoff_limit_per_index(major, minor) is supported


def _job(status: k8s.V1JobStatus | None) -> k8s.V1Job:
    return k8s.V1Job(metadata=k8s.V1ObjectMeta(name="job-score-x"), status=status)


def test_job_state_reads_counts_indexes_and_the_terminal_condition():
    status = k8s.V1JobStatus(
        active=1,
        ready=1,
        succeeded=3,
        failed=2,
        completed_indexes="0-1,4",
        failed_indexes="3",
        conditions=[
            k8s.V1JobCondition(type="FailureTarget", status="True", reason="FailedIndexes"),
            k8s.V1JobCondition(
                type="Failed",
                status="True",
                reason="FailedIndexes",
                message="Job has failed indexes",
            ),
        ],
    )
    state = job_state(_job(status))
    assert (state.completed, state.failed_indexes) == ((0, 1, 4), (3,))
    assert (state.finished, state.reason, state.message) == (
        "Failed",
        "FailedIndexes",
        "Job has failed indexes",
    )
    assert state.started
    # FailureTarget alone: pods are still being stopped, the Job has not finished.
    status.conditions = status.conditions[:1]
    assert job_state(_job(status)).finished is None
    assert job_state(_job(None)) == JobState("job-score-x")


def _indexed(pod: k8s.V1Pod, index: int, name: str | None = None) -> k8s.V1Pod:
    pod.metadata.annotations = {INDEX_ANNOTATION: str(index)}
    pod.metadata.name = name or f"job-score-x-{index}-abcde"
    pod.metadata.creation_timestamp = datetime(2026, 11, 28, 0, index, tzinfo=timezone.utc)
    return pod


def test_a_job_whose_pods_cannot_start_fails_at_once_with_the_reason():
    watch = JobStartWatch(schedule_timeout=600)
    missing = pending_pod(waiting=("CreateContainerConfigError", 'secret "db-creds" not found'))
    verdict = watch.see([_indexed(missing, 0)], now=0)
    assert verdict.failure == 'pod job-score-x-0-abcde cannot start: secret "db-creds" not found'


def test_unschedulable_pods_wait_for_a_node_until_one_of_the_job_runs():
    message = "0/3 nodes are available: 3 Insufficient cpu."
    watch = JobStartWatch(schedule_timeout=60)
    first = watch.see([_indexed(pending_pod(unschedulable=message), 0)], now=0)
    assert first.failure is None and "Waiting up to 60s" in (first.note or "")
    assert watch.see([_indexed(pending_pod(unschedulable=message), 0)], now=61).failure
    # Once a pod of the Job ran, the others queue for capacity: no failure, however long.
    running = _indexed(pending_pod(), 1)
    running.status.phase = "Running"
    watch = JobStartWatch(schedule_timeout=60)
    for now in (0, 1000):
        verdict = watch.see([running, _indexed(pending_pod(unschedulable=message), 0)], now)
        assert verdict == type(verdict)()
    # ... but a pod that cannot start for another reason still fails the Job.
    image = pending_pod(waiting=("ErrImagePull", "manifest unknown"))
    assert watch.see([running, _indexed(image, 2)], now=1001).failure


def test_a_failed_job_names_each_index_without_a_result_and_its_pods_reasons():
    chunks = [3, 4, 9]
    state = JobState(
        "job-score-x",
        succeeded=1,
        failed=3,
        completed=(0,),
        failed_indexes=(1,),
        finished="Failed",
        reason="FailedIndexes",
        message="Job has failed indexes",
    )
    pods = [
        _indexed(finished_pod(container_reason="OOMKilled", exit_code=137), 1, "job-x-1-aaaaa"),
        _indexed(finished_pod(container_reason="OOMKilled", exit_code=137), 1, "job-x-1-bbbbb"),
        _indexed(finished_pod(reason="Evicted", exit_code=137), 2, "job-x-2-ccccc"),
    ]
    text = describe_job_failure(state, pods, chunks)
    assert text == (
        "job job-score-x Failed: FailedIndexes: Job has failed indexes; 2 of 3 indexes did not "
        "succeed: index 1 (chunk 4) (2 pods): pod job-x-1-bbbbb was OOMKilled: the container "
        "went over its memory limit (64Mi); give the task more with "
        "resources=Resources(memory=...); index 2 (chunk 9): pod job-x-2-ccccc was evicted: "
        "The node was low on resource: memory."
    )
    done = JobState("job-score-x", succeeded=3, completed=(0, 1, 2), finished="Complete")
    assert describe_job_failure(done, pods, chunks) is None


def test_foreach_max_parallel_is_a_setting(monkeypatch: pytest.MonkeyPatch):
    from provider.operators.targets import compute_target

    target, spec = compute_target("kubernetes"), TaskSpec.build()
    assert target.chunking(spec, 5000) == (5, 100)  # at most a thousand pods, 100 at once
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__FOREACH_MAX_PARALLEL", "7")
    assert target.chunking(spec, 10) == (1, 7)
    assert target.chunking(TaskSpec.build(foreach={"max_parallel": 2}), 10) == (1, 2)
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__FOREACH_MAX_PARALLEL", "0")
    with pytest.raises(ValueError, match=r"foreach_max_parallel='0' is invalid.*1 to 10000"):
        target.chunking(spec, 10)
