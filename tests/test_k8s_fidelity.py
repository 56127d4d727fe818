"""The test cluster refuses, schedules, pulls and stops pods as a real one does (no Airflow)."""

from __future__ import annotations

import copy
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kmock")
from k8s_cluster import LocalCluster
from k8s_images import local_python
from k8s_node import Node
from kubernetes.client.exceptions import ApiException

GPU_NODE = Node(
    labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", "pool": "gpu"},
    taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
    allocatable={"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "2"},
)
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture
def gpu_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, node=copy.deepcopy(GPU_NODE), missing_images={"nope:1"}) as c:
        yield c


def pod(name: str, code: str = "pass", **spec: Any) -> dict[str, Any]:
    """A pod as a client submits it; ``container`` in ``spec`` is merged into its container."""
    container = {"name": "base", "image": "python:3.11-slim", "command": ["python3", "-c", code]}
    container |= spec.pop("container", {})
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}
    return body | {"spec": {"containers": [container], "restartPolicy": "Never"} | spec}


def wait(api: Any, name: str, ready: Callable[[Any], object], seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while not ready(pod_ := api.read_namespaced_pod(name, "default")):
        assert time.monotonic() < deadline, pod_.status
        time.sleep(0.02)
    return pod_


def waiting(pod_: Any) -> tuple[str, str] | None:
    statuses = pod_.status.container_statuses or []
    state = statuses[0].state.waiting if statuses else None
    if state is None or state.reason == "ContainerCreating":
        return None
    return state.reason, state.message


def events(api: Any, name: str) -> list[tuple[str, str, str, str]]:
    listed = api.list_namespaced_event("default").items
    return [
        (e.type, e.reason, e.message, e.source.component)
        for e in listed
        if e.involved_object.name == name
    ]


REFUSED = {
    "unknown_field": (
        {"container": {"colour": "red"}},
        "spec.containers.0: Additional properties are not allowed ('colour' was unexpected)",
    ),
    "toleration_empty_key_equal": (
        {"tolerations": [{"operator": "Equal", "value": "x"}]},
        'spec.tolerations[0].operator: Invalid value: "Equal": operator must be Exists when '
        "`key` is empty",
    ),
    "toleration_seconds_without_noexecute": (
        {"tolerations": [{"key": "spot", "operator": "Exists", "tolerationSeconds": 60}]},
        "spec.tolerations[0].effect: Invalid value: \"\": effect must be 'NoExecute' when "
        "`tolerationSeconds` is set",
    ),
    "toleration_value_not_label": (
        {"tolerations": [{"key": "spot", "value": "a b"}]},
        'spec.tolerations[0].value: Invalid value: "a b": a valid label must be',
    ),
    "request_over_limit": (
        {"container": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}},
        'spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal '
        "to cpu limit of 1",
    ),
    "memory_request_over_limit": (
        {
            "container": {
                "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1000Mi"}}
            }
        },
        "must be less than or equal to memory limit of 1000Mi",
    ),
    "extended_request_not_limit": (
        {
            "container": {
                "resources": {"requests": {"x.io/fpga": "1"}, "limits": {"x.io/fpga": "2"}}
            }
        },
        'resources.requests[x.io/fpga]: Invalid value: "1": must be equal to x.io/fpga limit of 2',
    ),
    "extended_request_without_limit": (
        {"container": {"resources": {"requests": {"nvidia.com/gpu": "1"}}}},
        "resources.limits: Required value: Limit must be set for non overcommitable resources",
    ),
    "extended_fraction": (
        {"container": {"resources": {"limits": {"nvidia.com/gpu": "500m"}}}},
        'resources.limits[nvidia.com/gpu]: Invalid value: "500m": must be an integer',
    ),
    "unknown_resource_name": (
        {"container": {"resources": {"limits": {"gpu": "1"}}}},
        'resources.limits[gpu]: Invalid value: "gpu": must be a standard resource type',
    ),
    "mount_without_volume": (
        {"container": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}},
        'spec.containers[0].volumeMounts[0].name: Not found: "data"',
    ),
    "duplicate_mount_path": (
        {
            "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}],
            "container": {
                "volumeMounts": [{"name": "a", "mountPath": "/x"}, {"name": "b", "mountPath": "/x"}]
            },
        },
        'volumeMounts[1].mountPath: Invalid value: "/x": must be unique',
    ),
    "env_name": (
        {"container": {"env": [{"name": "1X", "value": "v"}]}},
        'spec.containers[0].env[0].name: Invalid value: "1X": a valid environment variable name',
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_api_server_refuses_invalid_pods_with_its_message(cluster: LocalCluster, case: str):
    spec, message = REFUSED[case]
    api = cluster.core_v1()
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_pod("default", pod("bad", **copy.deepcopy(spec)))
    assert refused.value.status == 422, refused.value.body
    said = json.loads(refused.value.body)["message"]
    assert said.startswith('Pod "bad" is invalid: ') and message in said, said
    assert cluster.pods() == []


@pytest.mark.parametrize(
    "spec",
    [
        {"containers": [{"name": "base", "image": "i"}, {"name": "side", "image": "i"}]},
        {"initContainers": [{"name": "init", "image": "i"}]},
    ],
)
def test_what_the_kubelet_does_not_model_is_refused(cluster: LocalCluster, spec: dict):
    body = pod("extra")
    body["spec"] |= copy.deepcopy(spec)
    with pytest.raises(ApiException) as refused:
        cluster.core_v1().create_namespaced_pod("default", body)
    assert refused.value.status == 501 and "exactly one container" in refused.value.body


def test_a_valid_pod_with_volumes_and_extended_resources_is_admitted(cluster: LocalCluster):
    body = pod(
        "fine",
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
        container={
            "resources": {
                "requests": {"cpu": "500m", "memory": "64Mi", "x.io/fpga": "1"},
                "limits": {"memory": "64Mi", "x.io/fpga": "1"},
            },
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            "env": [{"name": "my.env-name", "value": "1"}],
        },
    )
    api = cluster.core_v1()
    cluster.node.allocatable["x.io/fpga"] = "1"
    api.create_namespaced_pod("default", body)
    assert wait(api, "fine", lambda p: p.status.phase == "Succeeded").status.phase == "Succeeded"


def unschedulable(pod_: Any) -> str | None:
    for cond in pod_.status.conditions or []:
        if cond.type == "PodScheduled" and cond.status == "False":
            assert cond.reason == "Unschedulable"
            return cond.message
    return None


def test_pods_the_node_cannot_host_stay_pending_with_the_schedulers_message(
    gpu_cluster: LocalCluster,
):
    api = gpu_cluster.core_v1()
    preempt_no = "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    cases = {
        "untolerated": (
            {},
            "0/1 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}. "
            + preempt_no,
        ),
        "selector": (
            {"tolerations": [GPU_TOLERATION], "nodeSelector": {"nvidia.com/gpu.product": "A100"}},
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
            + preempt_no,
        ),
        "intel": (
            {
                "tolerations": [GPU_TOLERATION],
                "container": {"resources": {"limits": {"intel.com/gpu": "1", "cpu": "9"}}},
            },
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient intel.com/gpu. "
            "preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
        ),
        "affinity": (
            {
                "tolerations": [GPU_TOLERATION],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "pool", "operator": "NotIn", "values": ["gpu"]}
                                    ]
                                }
                            ]
                        }
                    }
                },
            },
            "1 node(s) didn't match Pod's node affinity/selector",
        ),
    }
    for name, (spec, _) in cases.items():
        api.create_namespaced_pod("default", pod(name, **spec))
    for name, (_, message) in cases.items():
        pending = wait(api, name, unschedulable)
        assert pending.status.phase == "Pending"
        assert message in unschedulable(pending)
        assert (
            "Warning",
            "FailedScheduling",
            unschedulable(pending),
            "default-scheduler",
        ) in events(api, name)
        assert gpu_cluster.started_at(name) is None


def test_a_pod_whose_volume_claim_is_missing_is_unschedulable(cluster: LocalCluster):
    from kubernetes.client import models as k8s

    api = cluster.core_v1()
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}}]
    mounts = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    api.create_namespaced_pod("default", pod("claims", volumes=volumes, container=mounts))
    message = unschedulable(wait(api, "claims", unschedulable))
    assert message.startswith(
        '0/1 nodes are available: persistentvolumeclaim "datasets" not found.'
    )
    claim = k8s.V1PersistentVolumeClaim(
        metadata=k8s.V1ObjectMeta(name="datasets"),
        spec=k8s.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=k8s.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
        ),
    )
    api.create_namespaced_persistent_volume_claim("default", claim)
    api.create_namespaced_pod("default", pod("claimed", volumes=volumes, container=mounts))
    assert wait(api, "claimed", lambda p: p.status.phase == "Succeeded")


def test_a_pod_waits_for_capacity_and_runs_when_it_frees(gpu_cluster: LocalCluster, tmp_path):
    api = gpu_cluster.core_v1()
    gpus = {"container": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}}
    gate = tmp_path / "gate"
    code = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)"
    api.create_namespaced_pod("default", pod("first", code, tolerations=[GPU_TOLERATION], **gpus))
    wait(api, "first", lambda p: p.status.phase == "Running")
    api.create_namespaced_pod(
        "default", pod("second", tolerations=[GPU_TOLERATION], **copy.deepcopy(gpus))
    )
    assert "1 Insufficient nvidia.com/gpu" in unschedulable(wait(api, "second", unschedulable))
    gate.touch()
    done = wait(api, "second", lambda p: p.status.phase == "Succeeded")
    assert done.spec.node_name == "local-node"


def test_an_image_the_registry_lacks_fails_to_pull_then_backs_off(gpu_cluster: LocalCluster):
    api = gpu_cluster.core_v1()
    api.create_namespaced_pod(
        "default", pod("bad-image", tolerations=[GPU_TOLERATION], container={"image": "nope:1"})
    )
    first = waiting(wait(api, "bad-image", waiting))
    assert first == (
        "ErrImagePull",
        'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/library/'
        'nope:1": failed to resolve reference "docker.io/library/nope:1": docker.io/library/'
        "nope:1: not found",
    )
    backoff = wait(api, "bad-image", lambda p: (waiting(p) or ("",))[0] == "ImagePullBackOff")
    assert backoff.status.phase == "Pending"
    assert waiting(backoff)[1].startswith('Back-off pulling image "nope:1": ErrImagePull: rpc')
    assert ("Warning", "Failed", "Error: ErrImagePull", "kubelet") in events(api, "bad-image")
    api.delete_namespaced_pod("bad-image", "default")
    assert gpu_cluster.pods() == [] and gpu_cluster.started_at("bad-image") is None


def test_deletion_is_graceful_sigterm_then_sigkill_after_the_grace_period(
    cluster: LocalCluster, tmp_path
):
    api = cluster.core_v1()
    marker = tmp_path / "terminated"
    polite = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    open({str(marker)!r}, 'w').write('SIGTERM'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    deaf = f"import signal, time\nsignal.signal({signal.SIGTERM.value}, signal.SIG_IGN)\n"
    deaf += "print('ready', flush=True)\ntime.sleep(60)\n"
    api.create_namespaced_pod("default", pod("polite", polite))
    api.create_namespaced_pod("default", pod("deaf", deaf, terminationGracePeriodSeconds=1))
    for name in ("polite", "deaf"):
        wait(api, name, lambda p, n=name: "ready" in cluster.logs(n))

    api.delete_namespaced_pod("polite", "default", grace_period_seconds=20)
    started = time.monotonic()
    api.delete_namespaced_pod("deaf", "default")  # the pod's own grace period: 1 s
    terminating = api.read_namespaced_pod("deaf", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 1
    deadline = time.monotonic() + 10
    while cluster.pods():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert marker.read_text() == "SIGTERM"
    assert 1 <= time.monotonic() - started < 5  # killed after its grace period, not before


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.10", "3.12"])
def test_a_python_image_runs_with_that_python_when_installed(cluster: LocalCluster, version: str):
    if local_python(version) is None:
        pytest.skip(f"no Python {version} on this machine")
    api = cluster.core_v1()
    code = "import sys; print('%d.%d' % sys.version_info[:2])"
    api.create_namespaced_pod(
        "default", pod("py", code, container={"image": f"python:{version}-slim"})
    )
    wait(api, "py", lambda p: p.status.phase == "Succeeded")
    assert cluster.logs("py").strip() == version


def test_a_python_image_without_a_local_python_cannot_be_pulled(cluster: LocalCluster):
    version = next(v for v in ("3.7", "3.8", "3.9", "3.10") if local_python(v) is None)
    api = cluster.core_v1()
    api.create_namespaced_pod("default", pod("nopy", container={"image": f"python:{version}-slim"}))
    reason, message = waiting(wait(api, "nopy", waiting))
    assert reason == "ErrImagePull" and f"no Python {version} on this machine" in message
