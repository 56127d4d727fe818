"""Specs -> KubernetesPodOperator -> the real V1Pod (``build_pod_request_obj(dry_run=True)``).

Golden files live in tests/golden/pods/; regenerate them with ``FLOWTASK_UPDATE_GOLDEN=1``
after a deliberate change, and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient
from kubernetes.client import models as k8s
from pods import finished_pod

from provider import Environment, KubernetesOptions, Resources, SpecError, TaskSpec
from provider.translate import describe_pod_failure, pod_operator_kwargs
from provider.translate.kubernetes import cpu_quantity, pod_name
from provider.translate.labels import label_value

GOLDEN = Path(__file__).parent / "golden" / "pods"
IDENTITY = {
    "dag_id": "train_models",
    "run_id": "manual__2026-11-28T00:00:00+00:00",
    "task_id": "fit",
    "map_index": -1,
    "try_number": 1,
    "namespace": "user:alice",
    "tags": ["nightly"],
}
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

MATRIX: dict[str, dict[str, Any]] = {
    "cpu_only": {"resources": Resources(cpu=2)},
    "memory_units": {"resources": Resources(cpu="250m", memory="1.5Gi")},
    "memory_decimal": {"resources": Resources(cpu=0.5, memory="16G")},
    "gpu_with_type": {"resources": Resources(cpu=8, memory="64Gi", gpu=2, gpu_type="A100")},
    "gpu_amd_gke_label": {
        "resources": Resources(gpu=1, gpu_type="mi300x"),
        "kubernetes": KubernetesOptions(gpu_vendor="amd", gpu_type_label="example.com/gpu-model"),
    },
    "gpu_intel": {
        "resources": Resources(gpu=1),
        "kubernetes": KubernetesOptions(gpu_vendor="intel"),
    },
    "extended_resources": {
        "kubernetes": KubernetesOptions(
            extended_resources={"gpu.intel.com/xe": 1, "example.com/fpga": 2}
        )
    },
    "qos_guaranteed": {
        "resources": Resources(cpu=2, memory="8Gi"),
        "kubernetes": KubernetesOptions(qos="Guaranteed"),
    },
    "container_options": {
        "kubernetes": KubernetesOptions(
            image_pull_policy="Always",
            port=8080,
            termination_message_policy="FallbackToLogsOnError",
            security_context={
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        )
    },
    "volumes": {
        "resources": Resources(memory="4Gi", shared_memory="1Gi"),
        "kubernetes": KubernetesOptions(
            persistent_volume_claims={"datasets": "/data", "team.checkpoints": "/ckpt"},
            tmpfs={"size": "2Gi", "path": "/scratch"},
        ),
    },
    "full_pod_spec": {
        "kubernetes": KubernetesOptions(
            node_selector={"pool": "ours"},
            full_pod_spec={
                "metadata": {"labels": {"team": "vision"}, "annotations": {"a": "template"}},
                "spec": {
                    "priorityClassName": "batch-high",
                    "nodeSelector": {"pool": "template", "zone": "a"},
                    "containers": [
                        {
                            "name": "base",
                            "image": "template:1",
                            "env": [{"name": "FROM_TEMPLATE", "value": "1"}],
                            "workingDir": "/work",
                        }
                    ],
                },
            },
        )
    },
    "disk": {"resources": Resources(disk="100Gi")},
    "shared_memory": {"resources": Resources(memory="8Gi", shared_memory="2Gi")},
    "secrets_and_env": {
        "environment": Environment(env={"MODE": "fast", "N": 3}, secrets=["db-creds", "api-token"])
    },
    "tolerations": {
        "kubernetes": KubernetesOptions(
            tolerations=[
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "value": "true", "effect": "NoExecute", "toleration_seconds": 60},
            ]
        )
    },
    "placement_and_metadata": {
        "kubernetes": KubernetesOptions(
            namespace="ml-jobs",
            service_account="flow-runner",
            node_selector={"pool": "highmem"},
            image_pull_secrets=["regcred"],
            labels={"team": "ml"},
            annotations={"owner": "ml-team@example.com"},
            cpu_limit_ratio=1.5,
        )
    },
    "timeout": {"timeout": "1h30m"},
    "tags_kubernetes_rejects": {
        "identity": {
            "namespace": "production:train_models",
            "run_id": "scheduled__2026-11-28T00:00:00+00:00",
            "tags": ["exp 42/β", "ok-tag", "-lead-and-trail-", "x" * 80],
        }
    },
}


def render(
    spec: TaskSpec,
    identity: dict[str, Any] = IDENTITY,
    expect_name: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The pod the real operator builds from the translated kwargs, as Kubernetes JSON."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    kwargs = pod_operator_kwargs(
        spec,
        identity=identity,
        command=["python", "-c", "<bootstrap>", "--", "run"],
        image=spec.environment.image or "python:3.11-slim",
        manifest_key="runs/train_models/manual/fit/-1/1/result.json",
        options=spec.kubernetes,
        conn_id="kubernetes_default",
        **extra,
    )
    pod = KubernetesPodOperator(task_id=identity["task_id"], **kwargs).build_pod_request_obj(
        dry_run=True
    )
    data = ApiClient().sanitize_for_serialization(pod)
    prefix, _, suffix = data["metadata"]["name"].rpartition("-")
    assert prefix == (expect_name or identity["task_id"]) and len(suffix) == 8  # random suffix
    data["metadata"]["name"] = f"{prefix}-<suffix>"
    data["metadata"]["labels"].pop("airflow_version")
    return data


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_rendered_pod_matches_golden(case: str):
    given = dict(MATRIX[case])
    identity = {**IDENTITY, **given.pop("identity", {})}
    pod = render(TaskSpec.build(**given), identity)
    golden = GOLDEN / f"{case}.json"
    text = json.dumps(pod, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("FLOWTASK_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs; see the module docstring"
    for key, value in pod["metadata"]["labels"].items():
        assert LABEL_VALUE.fullmatch(value) and len(value) <= 63, (key, value)
        assert len(key.rpartition("/")[2]) <= 63, key


def test_memory_limit_equals_request_and_cpu_is_unlimited_by_default():
    resources = render(TaskSpec.build(resources=Resources(cpu=3, memory="12Gi")))["spec"][
        "containers"
    ][0]["resources"]
    assert resources == {
        "requests": {"cpu": "3", "memory": "12288Mi"},
        "limits": {"memory": "12288Mi"},
    }


def test_secrets_are_references_never_values():
    pod = render(TaskSpec.build(environment=Environment(secrets=["db-creds"])))
    container = pod["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "db-creds"}}]
    assert all("valueFrom" not in var for var in container["env"])


def test_store_env_and_cluster_wide_secrets_come_before_the_tasks_own():
    spec = TaskSpec.build(environment=Environment(env={"REGION": "task"}, secrets=["task-s"]))
    pod = render(spec, env={"REGION": "store", "AWS_ENDPOINT_URL_S3": "http://s3"}, secrets=["aws"])
    container = pod["spec"]["containers"][0]
    env = {var["name"]: var["value"] for var in container["env"]}
    assert env == {"REGION": "task", "AWS_ENDPOINT_URL_S3": "http://s3", "PYTHONUNBUFFERED": "1"}
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == ["aws", "task-s"]


def test_an_aws_arn_secret_cannot_go_to_kubernetes():
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db"
    with pytest.raises(SpecError, match=r"environment\.secrets.*compute='batch' only"):
        TaskSpec.build(compute="kubernetes", environment=Environment(secrets=[arn]))
    with pytest.raises(SpecError, match="compute='batch' only"):
        render(TaskSpec.build(environment=Environment(secrets=[arn])))


def test_identity_is_in_annotations_in_full():
    identity = {**IDENTITY, "namespace": "user:alice@example.com", "tags": ["a b", "ß"]}
    annotations = render(TaskSpec(), identity)["metadata"]["annotations"]
    assert annotations["flowtask.io/namespace"] == "user:alice@example.com"
    assert json.loads(annotations["flowtask.io/tags"]) == ["a b", "ß"]
    assert annotations["flowtask.io/run-id"] == IDENTITY["run_id"]
    assert annotations["flowtask.io/manifest"].endswith("result.json")


@pytest.mark.parametrize(
    "text",
    ["nightly", "user:alice", "", "-", "a" * 63, "a" * 64, "exp 42/β", "..x..", "日本", "A_b.C-d"],
)
def test_label_values_are_valid_and_keep_valid_text(text: str):
    value = label_value(text)
    assert LABEL_VALUE.fullmatch(value) and len(value) <= 63
    if LABEL_VALUE.fullmatch(text) and len(text) <= 63:
        assert value == text
    else:
        assert value != text and re.search(r"[0-9a-f]{8}$", value)


def test_different_names_get_different_labels():
    names = ["user:alice", "user-alice", "user alice", "a" * 64, "a" * 65, "x/y", "x:y"]
    assert len({label_value(name) for name in names}) == len(names)


@pytest.mark.parametrize(
    ("task_id", "name"),
    [
        ("fit", "fit"),
        ("make_batches", "make-batches"),
        ("Group.Fit_Model", "group-fit-model"),
        ("__x__", "x"),
        ("___", "flow-task"),
        (
            "preprocessing_of_the_nightly_feature_tables.per_region_models.train_the_model",
            "ghtly-feature-tables-per-region-models-train-the-model",
        ),
        ("x" * 60 + ".__fit", "x" * 50 + "-fit"),
        ("a" * 49 + "-.-.-.-" + "b" * 50, "b" * 50),
    ],
)
def test_pod_names_are_what_kubernetes_accepts(task_id: str, name: str):
    """KPO cuts a name to 63 with its 9-character suffix, from the front: a long TaskGroup
    name would push the task's own name out, so the name keeps the end of the task id."""
    assert pod_name(task_id) == name
    identity = {**IDENTITY, "task_id": task_id}
    assert render(TaskSpec(), identity, expect_name=name)["metadata"]["name"] == f"{name}-<suffix>"


@pytest.mark.parametrize(
    ("millicores", "quantity"), [(1000, "1"), (500, "500m"), (2500, "2500m"), (16000, "16")]
)
def test_cpu_quantity(millicores: int, quantity: str):
    assert cpu_quantity(millicores) == quantity


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (
            finished_pod(container_reason="OOMKilled", exit_code=137),
            "pod fit-abc was OOMKilled: the container went over its memory limit (64Mi)",
        ),
        (
            finished_pod(reason="Evicted"),
            "pod fit-abc was evicted: The node was low on resource: memory.",
        ),
        (
            finished_pod(reason="DeadlineExceeded", exit_code=137, container_reason="Error"),
            "pod fit-abc ran longer than its deadline (activeDeadlineSeconds=60",
        ),
        (
            finished_pod(container_reason="Error", exit_code=3),
            "pod fit-abc: container exited with code 3 (Error)",
        ),
    ],
)
def test_pod_failures_are_described_by_their_reason(pod: k8s.V1Pod, expected: str):
    assert (describe_pod_failure(pod) or "").startswith(expected)


def test_a_pod_without_status_has_no_description():
    assert describe_pod_failure(None) is None
    assert describe_pod_failure(k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="p"))) is None


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"namespace": "ML_jobs"}, "kubernetes.namespace"),
        ({"namespace": "a" * 64}, "kubernetes.namespace"),
        ({"service_account": "Flow Runner"}, "kubernetes.service_account"),
        ({"node_selector": ["pool"]}, "kubernetes.node_selector"),
        ({"node_selector": {"pool": "high mem"}}, "kubernetes.node_selector['pool']"),
        ({"labels": {"bad key!": "x"}}, "kubernetes.labels['bad key!']"),
        ({"labels": {"team": 3}}, "kubernetes.labels['team']"),
        ({"tolerations": {"key": "spot"}}, "kubernetes.tolerations"),
        (
            {"tolerations": [{"key": "spot", "operator": "In"}]},
            "kubernetes.tolerations[0].operator",
        ),
        (
            {"tolerations": [{"key": "s", "operator": "Exists", "value": "v"}]},
            "kubernetes.tolerations[0].value",
        ),
        ({"tolerations": [{"effect": "Never"}]}, "kubernetes.tolerations[0].effect"),
        ({"tolerations": [{"colour": "red"}]}, "kubernetes.tolerations[0]"),
        (
            {"tolerations": [{"toleration_seconds": "60"}]},
            "kubernetes.tolerations[0].toleration_seconds",
        ),
        ({"image_pull_secrets": "regcred"}, "kubernetes.image_pull_secrets"),
        ({"image_pull_secrets": ["regcred", None]}, "kubernetes.image_pull_secrets"),
        ({"image_pull_secrets": ["Reg_Cred"]}, "kubernetes.image_pull_secrets"),
        ({"cpu_limit_ratio": 0.5}, "kubernetes.cpu_limit_ratio"),
        ({"cpu_limit_ratio": "2"}, "kubernetes.cpu_limit_ratio"),
        ({"gpu_vendor": "nvidea"}, "kubernetes.gpu_vendor"),
        ({"gpu_type_label": "has space"}, "kubernetes.gpu_type_label"),
        ({"extended_resources": ["example.com/fpga"]}, "kubernetes.extended_resources"),
        ({"qos": "BestEffort"}, "kubernetes.qos"),
        ({"qos": "Guaranteed", "cpu_limit_ratio": 2}, "kubernetes.cpu_limit_ratio"),
        ({"image_pull_policy": "always"}, "kubernetes.image_pull_policy"),
        ({"port": 0}, "kubernetes.port"),
        ({"port": "8080"}, "kubernetes.port"),
        ({"termination_message_policy": "Logs"}, "kubernetes.termination_message_policy"),
        ({"persistent_volume_claims": ["data"]}, "kubernetes.persistent_volume_claims"),
        (
            {"persistent_volume_claims": {"Data": "/data"}},
            "kubernetes.persistent_volume_claims['Data']",
        ),
        (
            {"persistent_volume_claims": {"data": "data"}},
            "kubernetes.persistent_volume_claims['data']",
        ),
        (
            {"persistent_volume_claims": {"a": "/x", "b": "/x"}},
            "kubernetes.persistent_volume_claims",
        ),
        ({"tmpfs": "lots"}, "kubernetes.tmpfs.size"),
        ({"tmpfs": {"size": "1Gi", "path": "/dev/shm"}}, "kubernetes.tmpfs.path"),
        ({"tmpfs": {"size": "1Gi", "mode": "0700"}}, "kubernetes.tmpfs"),
        (
            {"tmpfs": {"size": "1Gi", "path": "/data"}, "persistent_volume_claims": {"d": "/data"}},
            "kubernetes.tmpfs.path",
        ),
        ({"security_context": {"run_as_user": 1000}}, "kubernetes.security_context['run_as_user']"),
        ({"security_context": {"runAsUser": -1}}, "kubernetes.security_context['runAsUser']"),
        ({"security_context": {"privileged": "yes"}}, "kubernetes.security_context['privileged']"),
        ({"security_context": "{not json"}, "kubernetes.security_context"),
        ({"full_pod_spec": {"kind": "Job"}}, "kubernetes.full_pod_spec"),
        ({"full_pod_spec": {"spec": []}}, "kubernetes.full_pod_spec.spec"),
        ({"full_pod_spec": {"status": {}}}, "kubernetes.full_pod_spec"),
        ({"pod_template_file": ""}, "kubernetes.pod_template_file"),
        ({"schedule_timeout": "soon"}, "kubernetes.schedule_timeout"),
        ({"deferrable": "yes"}, "kubernetes.deferrable"),
        ({"extended_resources": {"cpu": 1}}, "kubernetes.extended_resources['cpu']"),
        (
            {"extended_resources": {"kubernetes.io/batteries": 1}},
            "kubernetes.extended_resources['kubernetes.io/batteries']",
        ),
        (
            {"extended_resources": {"example.com/fpga": 0}},
            "kubernetes.extended_resources['example.com/fpga']",
        ),
        (
            {"extended_resources": {"example.com/fpga": 0.5}},
            "kubernetes.extended_resources['example.com/fpga']",
        ),
    ],
)
def test_bad_kubernetes_options_name_the_field(given: dict[str, Any], field: str):
    with pytest.raises(SpecError) as caught:
        KubernetesOptions(**given)
    assert caught.value.field == field
    assert "Accepted:" in str(caught.value)


def test_bad_kubernetes_options_fail_at_decoration_time():
    from provider import flow_task

    with pytest.raises(SpecError, match=r"kubernetes.namespace='Bad_NS'"):

        @flow_task(kubernetes={"namespace": "Bad_NS"})
        def f():
            return 1


def test_task_options_lie_over_the_configured_defaults():
    defaults = KubernetesOptions(
        namespace="ml",
        labels={"team": "ml", "env": "prod"},
        tolerations=[{"key": "spot", "operator": "Exists"}],
        image_pull_secrets=["regcred"],
        cpu_limit_ratio=2,
    )
    task = KubernetesOptions(
        labels={"env": "dev"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        image_pull_secrets=["regcred", "other"],
    )
    merged = task.over(defaults)
    assert merged.namespace == "ml" and merged.cpu_limit_ratio == 2
    assert dict(merged.labels) == {"team": "ml", "env": "dev"}
    assert [dict(t)["key"] for t in merged.tolerations] == ["spot", "gpu"]
    assert merged.image_pull_secrets == ("regcred", "other")
    assert KubernetesOptions(namespace="x").over(defaults).namespace == "x"


def test_configured_defaults_are_read_and_checked(monkeypatch: pytest.MonkeyPatch):
    from provider import settings

    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_NAMESPACE", "ml-jobs")
    monkeypatch.setenv(
        "AIRFLOW__FLOW_TASK__KUBERNETES_TOLERATIONS", '[{"key": "spot", "operator": "Exists"}]'
    )
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_IMAGE_PULL_SECRETS", "a, b")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_CPU_LIMIT_RATIO", "1")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_SECRETS", "flow-aws")
    defaults = settings.kubernetes_defaults()
    assert defaults.namespace == "ml-jobs" and defaults.image_pull_secrets == ("a", "b")
    assert defaults.toleration_dicts == [{"key": "spot", "operator": "Exists"}]
    assert defaults.cpu_limit_ratio == 1.0
    assert settings.value("kubernetes_secrets") == ("flow-aws",)

    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_LABELS", "{not json")
    with pytest.raises(ValueError, match=r"\[flow_task\] kubernetes_labels='\{not json'"):
        settings.kubernetes_defaults()
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_LABELS", '{"team": "a b"}')
    with pytest.raises(ValueError, match=r"kubernetes_labels=.*not a valid label value"):
        settings.kubernetes_defaults()


def test_default_image_matches_the_worker_python(monkeypatch: pytest.MonkeyPatch):
    import sys

    from provider import config

    monkeypatch.delenv("AIRFLOW__FLOW_TASK__DEFAULT_IMAGE", raising=False)
    major, minor = sys.version_info[:2]
    assert config.default_image() == f"python:{major}.{minor}-slim"
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__DEFAULT_IMAGE", "ghcr.io/acme/base:1")
    assert config.default_image() == "ghcr.io/acme/base:1"


@pytest.mark.parametrize("golden", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_every_golden_pod_passes_the_api_servers_checks(golden: Path):
    from k8s_admission import admit_pod

    pod = json.loads(golden.read_text())
    pod["metadata"]["name"] = pod["metadata"]["name"].replace("<suffix>", "abcd1234")
    admit_pod(pod)


# The resource each vendor's device plugin advertises on a node (NVIDIA's k8s-device-plugin,
# AMD's k8s-device-plugin, Intel's intel-device-plugins-for-kubernetes GPU plugin).
DEVICE_PLUGIN_RESOURCES = {
    "nvidia": "nvidia.com/gpu",
    "amd": "amd.com/gpu",
    "intel": "gpu.intel.com/i915",
}


@pytest.mark.parametrize("vendor", sorted(DEVICE_PLUGIN_RESOURCES))
def test_gpu_pods_ask_for_what_the_vendors_device_plugin_advertises(vendor: str):
    from k8s_node import Node, unschedulable

    node = Node(allocatable={"cpu": "8", "memory": "32Gi", "pods": "110"})
    node.allocatable[DEVICE_PLUGIN_RESOURCES[vendor]] = "2"
    spec = TaskSpec.build(
        resources=Resources(gpu=2), kubernetes=KubernetesOptions(gpu_vendor=vendor)
    )
    assert unschedulable(render(spec), node, []) is None


def test_extended_resources_are_requested_and_limited_alike():
    spec = TaskSpec.build(kubernetes=KubernetesOptions(extended_resources={"example.com/fpga": 2}))
    resources = render(spec)["spec"]["containers"][0]["resources"]
    assert resources["requests"]["example.com/fpga"] == resources["limits"]["example.com/fpga"]
    assert resources["limits"]["example.com/fpga"] == "2"


def test_a_gpu_asked_for_twice_is_refused():
    spec = TaskSpec.build(
        resources=Resources(gpu=1),
        kubernetes=KubernetesOptions(extended_resources={"nvidia.com/gpu": 1}),
    )
    with pytest.raises(SpecError, match=r"extended_resources\['nvidia.com/gpu'\]"):
        render(spec)


def test_qos_sets_the_cpu_limit_and_never_lets_memory_burst():
    for qos, cpu_limit in ((None, None), ("Burstable", None), ("Guaranteed", "1500m")):
        spec = TaskSpec.build(
            resources=Resources(cpu=1.5, memory="2Gi"), kubernetes=KubernetesOptions(qos=qos)
        )
        resources = render(spec)["spec"]["containers"][0]["resources"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == "2048Mi"
        assert resources["limits"].get("cpu") == cpu_limit


def test_tmpfs_is_a_memory_folder_that_tmpdir_points_at_unless_the_task_says_otherwise():
    spec = TaskSpec.build(kubernetes=KubernetesOptions(tmpfs="512Mi"))
    pod = render(spec)
    container = pod["spec"]["containers"][0]
    assert {"name": "TMPDIR", "value": "/flowtask-tmp"} in container["env"]
    assert {"mountPath": "/flowtask-tmp", "name": "flowtask-tmpfs"} in container["volumeMounts"]
    assert {
        "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"},
        "name": "flowtask-tmpfs",
    } in pod["spec"]["volumes"]
    own = TaskSpec.build(
        environment=Environment(env={"TMPDIR": "/elsewhere"}),
        kubernetes=KubernetesOptions(tmpfs="512Mi"),
    )
    env = render(own)["spec"]["containers"][0]["env"]
    assert [v["value"] for v in env if v["name"] == "TMPDIR"] == ["/elsewhere"]


def test_memory_folders_fit_in_the_memory_limit():
    spec = TaskSpec.build(
        resources=Resources(memory="2Gi", shared_memory="1Gi"),
        kubernetes=KubernetesOptions(tmpfs="1536Mi"),
    )
    with pytest.raises(SpecError, match="tmpfs and shared_memory together at most memory"):
        render(spec)


def test_a_pod_template_file_lies_under_the_translation(tmp_path: Path):
    template = tmp_path / "pod.yaml"
    template.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {team: vision}\n"
        "spec:\n  priorityClassName: batch-high\n  nodeSelector: {pool: template}\n"
        "  containers:\n  - name: base\n    image: template:1\n"
        "    env: [{name: FROM_TEMPLATE, value: '1'}]\n"
    )
    options = KubernetesOptions(pod_template_file=str(template), node_selector={"pool": "ours"})
    pod = render(TaskSpec.build(kubernetes=options))
    assert pod["spec"]["priorityClassName"] == "batch-high"  # only the template sets it
    assert pod["spec"]["nodeSelector"] == {"pool": "ours"}  # ours win
    assert pod["metadata"]["labels"]["team"] == "vision"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "python:3.11-slim"
    assert {"name": "FROM_TEMPLATE", "value": "1"} in container["env"]  # lists are joined


def test_configured_pod_defaults_are_read_and_checked(monkeypatch: pytest.MonkeyPatch):
    from provider import config, settings

    given = {
        "QOS": "Guaranteed",
        "IMAGE_PULL_POLICY": "IfNotPresent",
        "PERSISTENT_VOLUME_CLAIMS": '{"flow-artifacts": "/artifacts"}',
        "SECURITY_CONTEXT": '{"runAsNonRoot": true}',
        "TERMINATION_MESSAGE_POLICY": "FallbackToLogsOnError",
        "POD_TEMPLATE_FILE": "/etc/flowtask/pod.yaml",
        "DEFERRABLE": "true",
        "SCHEDULE_TIMEOUT": "90s",
    }
    for key, value in given.items():
        monkeypatch.setenv(f"AIRFLOW__FLOW_TASK__KUBERNETES_{key}", value)
    defaults = settings.kubernetes_defaults()
    assert defaults.qos == "Guaranteed" and defaults.image_pull_policy == "IfNotPresent"
    assert dict(defaults.persistent_volume_claims) == {"flow-artifacts": "/artifacts"}
    assert defaults.security_context_dict == {"runAsNonRoot": True}
    assert defaults.termination_message_policy == "FallbackToLogsOnError"
    assert defaults.pod_template_file == "/etc/flowtask/pod.yaml"
    assert defaults.deferrable is True
    assert config.kubernetes_schedule_timeout(defaults) == 90
    task = KubernetesOptions(security_context={"runAsUser": 1000}, deferrable=False)
    merged = task.over(defaults)
    assert merged.security_context_dict == {"runAsNonRoot": True, "runAsUser": 1000}
    assert merged.deferrable is False
    assert config.kubernetes_schedule_timeout(KubernetesOptions()) == 600
    assert config.kubernetes_schedule_timeout(KubernetesOptions(schedule_timeout=0)) == 0

    monkeypatch.setenv("AIRFLOW__FLOW_TASK__KUBERNETES_DEFERRABLE", "maybe")
    with pytest.raises(ValueError, match=r"kubernetes_deferrable='maybe' is invalid"):
        settings.kubernetes_defaults()
