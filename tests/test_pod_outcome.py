"""How the operator reads a finished pod: which manifest, which failure, which exception."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout
from kubernetes.client import models as k8s
from pods import finished_pod

from provider.operators.targets.kubernetes import run_pod
from provider.translate.kubernetes import MANIFEST_ANNOTATION

OWN_KEY = "runs/d/r/t/-1/2/result.json"


class FinishedPodOperator:
    """Stands in for KubernetesPodOperator after ``execute_sync`` returned or raised."""

    def __init__(self, pod: k8s.V1Pod, error: BaseException | None = None) -> None:
        self.pod = self.remote_pod = pod
        self.error = error

    def execute_sync(self, context: Any) -> None:
        if self.error is not None:
            raise self.error


def test_a_reattached_pod_is_read_from_the_manifest_of_its_own_try():
    earlier = "runs/d/r/t/-1/1/result.json"
    result = run_pod(
        FinishedPodOperator(finished_pod(annotations={MANIFEST_ANNOTATION: earlier})), {}, OWN_KEY
    )
    assert result.manifest_key == earlier and result.failure is None


def test_a_failed_pod_is_described_not_raised():
    error = AirflowException("Pod fit-abc returned a failure.")
    result = run_pod(
        FinishedPodOperator(finished_pod(container_reason="OOMKilled", exit_code=137), error),
        {},
        OWN_KEY,
    )
    assert result.manifest_key == OWN_KEY and result.exit_code == 137
    assert result.failure is not None and "was OOMKilled" in result.failure


def test_a_pod_that_could_not_start_is_described_by_why():
    from pods import pending_pod

    error = AirflowException("Pod fit-abc returned a failure.")
    operator = FinishedPodOperator(pending_pod(), error)
    operator.start_failure = 'pod fit-abc cannot start: secret "db-creds" not found'  # type: ignore[attr-defined]
    result = run_pod(operator, {}, OWN_KEY)
    assert result.failure == operator.start_failure and result.exit_code is None


def test_a_timeout_stays_a_timeout_when_the_pod_cleanup_raises_over_it():
    try:
        try:
            raise AirflowTaskTimeout("Timeout, PID: 1")
        finally:
            raise AirflowException("Pod fit-abc returned a failure.")
    except AirflowException as masked:
        error = masked
    with pytest.raises(AirflowTaskTimeout, match="Timeout, PID: 1"):
        run_pod(FinishedPodOperator(finished_pod(), error), {}, OWN_KEY)
