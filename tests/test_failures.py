"""Failure kinds, retry rules and usage: the pure parts (the DAG runs are in test_dags)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.definitions.retry_policy import RetryAction

from provider import Retry, SpecError
from provider.core.outcome import FlowTaskFailed
from provider.operators.retry_policy import FlowRetryPolicy
from provider.runtime.usage import GpuSampler, suggested_request
from provider.translate.batch_status import job_failure_kind
from provider.translate.kubernetes import pod_failure_kind


def test_retry_on_names_exception_types_as_the_runtime_records_them():
    retry = Retry(times=3, on=(ConnectionError, "TimeoutError", "requests.exceptions.Timeout"))
    assert retry.on == (
        "builtins.ConnectionError",
        "builtins.TimeoutError",
        "requests.exceptions.Timeout",
    )
    assert Retry(on=ValueError).on == ("builtins.ValueError",)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"infra": 10}, "retry.infra"),
        ({"infra": -1}, "retry.infra"),
        ({"on": [42]}, "retry.on"),
        ({"on": ["not a name"]}, "retry.on"),
        ({"on_oom": "double"}, "retry.on_oom"),
        ({"oom_factor": 1}, "retry.oom_factor"),
        ({"oom_factor": float("inf")}, "retry.oom_factor"),
        ({"max_memory": "64GB"}, "retry.max_memory"),
    ],
)
def test_bad_failure_rules_are_refused_at_parse_time(kwargs, field):
    with pytest.raises(SpecError) as caught:
        Retry(**kwargs)
    assert caught.value.field == field


def test_memory_grows_by_the_factor_up_to_the_cap():
    retry = Retry(on_oom="grow", oom_factor=1.5, max_memory="6Gi")
    assert retry.grown_memory(2048) == 3072
    assert retry.grown_memory(4096) == 6144
    assert retry.grown_memory(6144) == 6144


def test_the_retry_policy_retries_only_the_listed_types_and_their_subclasses():
    policy = FlowRetryPolicy(("builtins.ConnectionError",))
    refused = FlowTaskFailed("x", ["builtins.ConnectionRefusedError", "builtins.ConnectionError"])
    assert policy.evaluate(refused, 1, 3).action == RetryAction.DEFAULT  # retried as usual
    bug = FlowTaskFailed("x", ["builtins.KeyError", "builtins.LookupError"])
    decision = policy.evaluate(bug, 1, 3)
    assert decision.action == RetryAction.FAIL
    assert "builtins.KeyError is not one of retry.on" in (decision.reason or "")
    lost = FlowTaskFailed("pod x was OOMKilled")  # not the function's own exception
    assert policy.evaluate(lost, 1, 3).action == RetryAction.DEFAULT
    assert FlowRetryPolicy.deserialize(policy.serialize()) == policy


def _pod(reason=None, conditions=(), terminated=None):
    state = SimpleNamespace(terminated=SimpleNamespace(reason=terminated)) if terminated else None
    statuses = [SimpleNamespace(name="base", state=state)] if state else []
    return SimpleNamespace(
        status=SimpleNamespace(
            reason=reason,
            conditions=[SimpleNamespace(type=t, status="True") for t in conditions],
            container_statuses=statuses,
        )
    )


def test_a_pods_end_is_told_apart_infrastructure_from_memory_from_time():
    assert pod_failure_kind(_pod(reason="Evicted")) == "infrastructure"
    assert pod_failure_kind(_pod(reason="OutOfcpu")) == "infrastructure"  # kubelet admission
    assert pod_failure_kind(_pod(conditions=["DisruptionTarget"])) == "infrastructure"
    assert pod_failure_kind(_pod(terminated="OOMKilled")) == "oom"
    assert pod_failure_kind(_pod(reason="DeadlineExceeded")) == "timeout"
    assert pod_failure_kind(_pod(terminated="Error")) is None


def test_a_batch_jobs_end_is_told_apart_too():
    def job(reason="", status_reason=""):
        attempt = {"container": {"reason": reason}, "statusReason": status_reason}
        return {"status": "FAILED", "attempts": [attempt]}

    oom = "OutOfMemoryError: Container killed due to memory usage"
    assert job_failure_kind(job(reason=oom)) == "oom"
    assert job_failure_kind(job(status_reason="Host EC2 (instance i-1) terminated.")) == (
        "infrastructure"
    )
    assert job_failure_kind(job(status_reason="Job attempt duration exceeded timeout")) == (
        "timeout"
    )
    assert job_failure_kind({"status": "SUCCEEDED"}) is None


def test_a_suggested_request_fits_the_peak_with_room_and_the_average_cpus():
    assert suggested_request(300, cpu_seconds=5, wall_seconds=10) == {"memory_mib": 512, "cpu": 0.5}
    assert suggested_request(10, cpu_seconds=0, wall_seconds=10) == {"memory_mib": 256, "cpu": 0.1}
    assert suggested_request(3000, cpu_seconds=35, wall_seconds=10)["cpu"] == 3.5


def test_gpu_memory_is_sampled_where_nvidia_smi_exists(tmp_path: Path, monkeypatch):
    readings = tmp_path / "readings"
    readings.write_text("512\n2048\n1024\n")
    smi = tmp_path / "nvidia-smi"  # a stand-in that answers like the real one, one GPU a line
    smi.write_text(
        f"#!/bin/sh\nhead -n 1 {readings} && tail -n +2 {readings} > {readings}.next && "
        f"mv {readings}.next {readings}\n"
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with GpuSampler() as sampler:
        sampler._sample()
        sampler._sample()
    assert sampler.peak_mib == 2048
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with GpuSampler() as absent:
        pass
    assert absent.peak_mib is None
