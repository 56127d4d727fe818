"""Pending pods explained: when to stop waiting for a pod, and why (provider.translate.pending)."""

from __future__ import annotations

from pods import pending_pod

from provider.translate.pending import StartWatch, placement_hint

NO_NODE = (
    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: "
    "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)


def test_a_missing_secret_fails_at_once_naming_it():
    pod = pending_pod(waiting=("CreateContainerConfigError", 'secret "db-creds" not found'))
    verdict = StartWatch(schedule_timeout=600).see(pod, now=0)
    assert verdict.failure == 'pod fit-abc cannot start: secret "db-creds" not found'


def test_an_image_the_registry_refuses_fails_at_once():
    for reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        pod = pending_pod(waiting=(reason, "docker.io/library/nope:1: not found"))
        verdict = StartWatch(schedule_timeout=600).see(pod, now=0)
        assert verdict.failure == (
            f'pod fit-abc cannot start: image "nope:1" cannot be pulled ({reason}): '
            "docker.io/library/nope:1: not found"
        )


def test_a_registry_that_is_busy_is_waited_for():
    pod = pending_pod(waiting=("ErrImagePull", "429 Too Many Requests: rate limit reached"))
    verdict = StartWatch(schedule_timeout=600).see(pod, now=0)
    assert verdict.failure is None and "ErrImagePull, retrying" in (verdict.note or "")


def test_an_unschedulable_pod_waits_for_an_autoscaler_then_fails_with_the_schedulers_message():
    watch = StartWatch(schedule_timeout=300)
    first = watch.see(pending_pod(unschedulable=NO_NODE), now=100)
    assert first.failure is None
    assert first.note and "Waiting up to 300s for a cluster autoscaler" in first.note
    assert NO_NODE in first.note
    assert watch.see(pending_pod(unschedulable=NO_NODE), now=200) == type(first)()  # said once
    last = watch.see(pending_pod(unschedulable=NO_NODE), now=400)
    assert last.failure == f"pod fit-abc cannot start: {NO_NODE} (waited 300s for a node)"


def test_with_no_schedule_timeout_an_unschedulable_pod_fails_at_once():
    verdict = StartWatch(schedule_timeout=0).see(pending_pod(unschedulable=NO_NODE), now=5)
    assert verdict.failure == f"pod fit-abc cannot start: {NO_NODE}"


def test_a_pod_that_got_scheduled_restarts_the_clock():
    watch = StartWatch(schedule_timeout=10)
    watch.see(pending_pod(unschedulable=NO_NODE), now=0)
    assert watch.see(pending_pod(), now=9).failure is None
    assert watch.see(pending_pod(unschedulable=NO_NODE), now=15).failure is None


def test_an_unschedulable_gpu_type_names_the_label_and_its_real_values():
    hint = placement_hint("A100", "nvidia.com/gpu.product")
    watch = StartWatch(schedule_timeout=0, placement_hint=hint)
    failure = watch.see(pending_pod(unschedulable=NO_NODE), now=0).failure or ""
    assert "gpu_type='A100' selects nodes labelled nvidia.com/gpu.product=A100" in failure
    assert "'NVIDIA-A100-SXM4-80GB'" in failure
    assert placement_hint(None, "nvidia.com/gpu.product") is None
