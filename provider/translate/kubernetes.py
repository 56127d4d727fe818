"""Translate a flow task's specs into ``KubernetesPodOperator`` keyword arguments (pure)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from provider.specs import KubernetesOptions, Resources, SpecError, TaskSpec, check_secrets_for
from provider.specs.kubernetes import GPU_RESOURCES
from provider.translate.labels import label_key_name, label_value

LABEL_PREFIX = "flowtask.io"
TAG_LABEL_PREFIX = f"tag.{LABEL_PREFIX}/"
MANIFEST_ANNOTATION = f"{LABEL_PREFIX}/manifest"
SHM_VOLUME = "flowtask-dshm"
TMPFS_VOLUME = "flowtask-tmpfs"
PVC_VOLUME = "flowtask-pvc-{}"
DEFAULT_GPU_VENDOR = "nvidia"
DEFAULT_GPU_TYPE_LABEL = "nvidia.com/gpu.product"


POD_NAME_STEM = 63 - 9  # KPO appends "-" and 8 random characters, and cuts to 63 from the front


def pod_name(task_id: str) -> str:
    """A valid pod name stem for a task id (the operator appends a random suffix).

    It keeps the end of the task id: a task in a long-named TaskGroup keeps its own name.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")
    return name[-POD_NAME_STEM:].lstrip("-") or "flow-task"


def cpu_quantity(millicores: int) -> str:
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def resource_requirements(resources: Resources, options: KubernetesOptions) -> Any:
    """Requests and limits: memory limit = request; CPU limit = request with
    ``qos="Guaranteed"``, else only with ``cpu_limit_ratio``."""
    from kubernetes.client import models as k8s

    requests = {"cpu": cpu_quantity(resources.cpu_millicores), "memory": resources.memory_quantity}
    limits = {"memory": resources.memory_quantity}
    if options.qos == "Guaranteed":
        limits["cpu"] = requests["cpu"]
    elif options.cpu_limit_ratio is not None:
        limits["cpu"] = cpu_quantity(math.ceil(resources.cpu_millicores * options.cpu_limit_ratio))
    if resources.disk_quantity is not None:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = resources.disk_quantity
    gpu = GPU_RESOURCES[options.gpu_vendor or DEFAULT_GPU_VENDOR]
    if resources.gpu:
        limits[gpu] = str(resources.gpu)
    for name, count in options.extended_resources:
        if resources.gpu and name == gpu:
            raise SpecError(
                f"kubernetes.extended_resources[{name!r}]",
                count,
                f"either resources.gpu or extended_resources[{name!r}]",
                f"resources.gpu={resources.gpu} already asks for {name}",
            )
        # Kubernetes requires request = limit for extended resources; a limit alone implies it.
        requests[name] = limits[name] = str(count)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def run_labels(identity: Mapping[str, Any], options: KubernetesOptions) -> dict[str, str]:
    """The options' labels plus dag, task, run, namespace and one ``tag.flowtask.io/*`` per tag."""
    labels = dict(options.labels)
    for name in ("dag", "task", "run"):
        labels[f"{LABEL_PREFIX}/{name}"] = label_value(str(identity[f"{name}_id"]))
    labels[f"{LABEL_PREFIX}/namespace"] = label_value(str(identity["namespace"]))
    for tag in identity["tags"]:
        labels[TAG_LABEL_PREFIX + label_key_name(tag)] = "true"
    return labels


def run_annotations(
    identity: Mapping[str, Any], options: KubernetesOptions, manifest_key: str
) -> dict[str, str]:
    """The full, unsanitized identity, and where the result manifest will be."""
    annotations = dict(options.annotations)
    for name in ("dag_id", "task_id", "run_id", "namespace", "map_index", "try_number"):
        annotations[f"{LABEL_PREFIX}/{name.replace('_', '-')}"] = str(identity[name])
    annotations[f"{LABEL_PREFIX}/tags"] = json.dumps(list(identity["tags"]), ensure_ascii=False)
    annotations[MANIFEST_ANNOTATION] = manifest_key
    return annotations


def pod_operator_kwargs(
    spec: TaskSpec,
    *,
    identity: Mapping[str, Any],
    command: Sequence[str],
    image: str,
    manifest_key: str,
    options: KubernetesOptions,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    conn_id: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``KubernetesPodOperator`` that run ``command`` as the spec says.

    ``options`` are the task's Kubernetes options already laid over the configured defaults;
    ``env`` and ``secrets`` are what every pod gets (the store's endpoint, its credentials'
    Secret) before the task's own. Secrets are referenced, never copied into the pod spec.
    """
    from kubernetes.client import models as k8s

    all_secrets = tuple(dict.fromkeys([*secrets, *spec.environment.secrets]))
    check_secrets_for("kubernetes", all_secrets)
    resources = spec.resources
    tmpdir = {"TMPDIR": options.tmpfs[1]} if options.tmpfs else {}
    variables = {**(env or {}), **tmpdir, **spec.environment.env_dict, "PYTHONUNBUFFERED": "1"}
    node_selector = dict(options.node_selector)
    if resources.gpu_type is not None:
        node_selector[options.gpu_type_label or DEFAULT_GPU_TYPE_LABEL] = resources.gpu_type
    kwargs: dict[str, Any] = {
        "kubernetes_conn_id": conn_id,
        "namespace": options.namespace,
        "name": pod_name(str(identity["task_id"])),
        "image": image,
        "cmds": list(command),
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(variables.items())],
        "env_from": [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in all_secrets
        ],
        "container_resources": resource_requirements(resources, options),
        "node_selector": node_selector,
        "tolerations": [k8s.V1Toleration(**toleration) for toleration in options.toleration_dicts],
        "image_pull_secrets": [
            k8s.V1LocalObjectReference(name=n) for n in options.image_pull_secrets
        ],
        "service_account_name": options.service_account,
        "labels": run_labels(identity, options),
        "annotations": run_annotations(identity, options, manifest_key),
        "get_logs": True,
        "do_xcom_push": False,
        "log_events_on_failure": True,
        # Check every second whether the pod started (the operator's default is 5 s).
        "startup_check_interval_seconds": 1,
    }
    if spec.timeout is not None:
        kwargs["active_deadline_seconds"] = math.ceil(spec.timeout.total_seconds())
    kwargs |= volume_kwargs(resources, options)
    kwargs |= container_kwargs(options)
    return kwargs


def volume_kwargs(resources: Resources, options: KubernetesOptions) -> dict[str, Any]:
    """Shared memory on /dev/shm, the tmpfs folder, and the volume claims, with their mounts.

    Memory-backed folders count against the memory limit, so together they fit in it.
    """
    from kubernetes.client import models as k8s

    in_memory = int(resources.shared_memory or 0) + (options.tmpfs[0] if options.tmpfs else 0)
    if in_memory > int(resources.memory):
        raise SpecError(
            "kubernetes.tmpfs",
            f"{options.tmpfs[0] if options.tmpfs else 0}Mi",
            f"tmpfs and shared_memory together at most memory ({resources.memory} MiB)",
            "memory-backed folders count against the memory limit",
        )
    volumes, mounts = [], []
    memory_folders: list[tuple[str, Any, str]] = [(SHM_VOLUME, resources.shared_memory, "/dev/shm")]
    if options.tmpfs:
        memory_folders.append((TMPFS_VOLUME, *options.tmpfs))
    for name, size, path in memory_folders:
        if size is not None:
            source = k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{size}Mi")
            volumes.append(k8s.V1Volume(name=name, empty_dir=source))
            mounts.append(k8s.V1VolumeMount(name=name, mount_path=path))
    for i, (claim, path) in enumerate(options.persistent_volume_claims):
        name = PVC_VOLUME.format(i)
        source = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=claim)
        volumes.append(k8s.V1Volume(name=name, persistent_volume_claim=source))
        mounts.append(k8s.V1VolumeMount(name=name, mount_path=path))
    return {"volumes": volumes, "volume_mounts": mounts} if volumes else {}


def container_kwargs(options: KubernetesOptions) -> dict[str, Any]:
    """Pull policy, port, security context, termination message policy and the pod template."""
    from kubernetes.client import models as k8s

    kwargs: dict[str, Any] = {}
    if options.image_pull_policy:
        kwargs["image_pull_policy"] = options.image_pull_policy
    if options.port is not None:
        kwargs["ports"] = [k8s.V1ContainerPort(container_port=options.port, protocol="TCP")]
    if options.security_context is not None:
        kwargs["container_security_context"] = options.security_context_dict
    if options.termination_message_policy:
        kwargs["termination_message_policy"] = options.termination_message_policy
    if options.pod_template_file:
        kwargs["pod_template_file"] = options.pod_template_file
    if options.full_pod_spec is not None:
        kwargs["full_pod_spec"] = pod_from_dict(options.full_pod_spec_dict or {})
    return kwargs


def pod_from_dict(manifest: Mapping[str, Any]) -> Any:
    """A ``V1Pod`` from a manifest in Kubernetes' JSON names (as ``kubectl`` reads it)."""
    from kubernetes.client import ApiClient

    class _Response:
        data = json.dumps({"apiVersion": "v1", "kind": "Pod", **manifest})

    return ApiClient().deserialize(_Response(), "V1Pod")


# Pod status reasons of a pod the cluster lost or turned away (never the user's code): evicted,
# preempted, gone with its node or the node's shutdown, or refused by the kubelet's admission
# when it was scheduled onto a node that turned out full (a transient scheduling failure).
INFRASTRUCTURE_REASONS = (
    "Evicted",
    "Preempting",
    "NodeLost",
    "Terminated",
    "Shutdown",
    "NodeShutdown",
    "UnexpectedAdmissionError",
    "OutOfcpu",
    "OutOfmemory",
    "OutOfpods",
)


def pod_failure_kind(pod: Any, container: str = "base") -> str | None:
    """``oom``, ``infrastructure`` (evicted, preempted, lost with its node), ``timeout``, or
    None: what ended a pod, as its last reported status says."""
    status = getattr(pod, "status", None)
    if status is None:
        return None
    if status.reason in INFRASTRUCTURE_REASONS:
        return "infrastructure"
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return "infrastructure"  # preempted, evicted or deleted by the node's lifecycle
    if status.reason == "DeadlineExceeded":
        return "timeout"
    for state in status.container_statuses or []:
        terminated = state.state.terminated if state.state else None
        if state.name == container and terminated is not None and terminated.reason == "OOMKilled":
            return "oom"
    return None


def describe_pod_failure(pod: Any, container: str = "base") -> str | None:
    """Why a finished pod failed, in words: evicted, deadline exceeded, OOMKilled, exit code.

    ``pod`` is a ``V1Pod`` as the API last reported it; None when it says nothing useful.
    """
    status = getattr(pod, "status", None)
    if status is None:
        return None
    name = pod.metadata.name
    if status.reason == "Evicted":
        return f"pod {name} was evicted: {status.message or 'no message'}"
    if status.reason == "DeadlineExceeded":
        deadline = pod.spec.active_deadline_seconds if pod.spec else None
        return (
            f"pod {name} ran longer than its deadline (activeDeadlineSeconds={deadline}, "
            "from timeout=) and was stopped"
        )
    for state in status.container_statuses or []:
        terminated = state.state.terminated if state.state else None
        if state.name != container or terminated is None:
            continue
        if terminated.reason == "OOMKilled":
            limit = _memory_limit(pod, container)
            return (
                f"pod {name} was OOMKilled: the container went over its memory limit ({limit}); "
                "give the task more with resources=Resources(memory=...)"
            )
        if terminated.exit_code:
            return (
                f"pod {name}: container exited with code {terminated.exit_code} "
                f"({terminated.reason or 'no reason given'})"
            )
    if status.phase == "Failed":
        return f"pod {name} failed: {status.reason or ''} {status.message or ''}".rstrip()
    return None


def _memory_limit(pod: Any, container: str) -> str:
    for spec in pod.spec.containers if pod.spec else []:
        if spec.name == container and spec.resources and spec.resources.limits:
            return str(spec.resources.limits.get("memory", "none"))
    return "unknown"


def pod_exit_code(pod: Any) -> int | None:
    """The exit code of the pod's task container, once it terminated."""
    statuses = (pod.status.container_statuses if pod and pod.status else None) or []
    for state in statuses:
        if state.name == "base" and state.state and state.state.terminated:
            return int(state.state.terminated.exit_code)
    return None


def bootstrap_environments(environments: Any) -> dict[str, Any]:
    """The bootstrap's environment arguments: archives, their machine, the cache folder."""
    if environments is None or not environments.archives:
        return {}
    from provider.translate.environment import POD_ENV_CACHE

    return {"environments": environments.archives, "arch": environments.arch,
            "env_cache": POD_ENV_CACHE}  # fmt: skip


def pod_platform(spec: TaskSpec) -> str:
    """What a pod's environments are built for: the task's ``target_platform``, else the
    ``[flow_task]`` one."""
    from provider import settings

    options = spec.kubernetes.over(settings.kubernetes_defaults())
    return options.target_platform or settings.value("target_platform")
