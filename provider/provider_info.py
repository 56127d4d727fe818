"""Provider metadata, found by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def _option(description: str, default: str, example: str, kind: str = "string") -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": kind,
        "example": example,
        "default": default,
    }


def _kubernetes_options() -> dict[str, dict[str, Any]]:
    """Defaults under every task's KubernetesOptions (task values win, dicts merge, lists join)."""
    described = {
        "namespace": ("Namespace of the pods; empty means the connection's.", "ml-jobs"),
        "service_account": ("Service account the pods run as.", "flow-runner"),
        "node_selector": ("Node selector, a JSON object.", '{"pool": "batch"}'),
        "tolerations": (
            "Tolerations, a JSON list of {key, operator, value, effect, toleration_seconds}.",
            '[{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]',
        ),
        "image_pull_secrets": ("Image pull secrets, comma-separated names.", "regcred"),
        "labels": ("Extra pod labels, a JSON object.", '{"team": "ml"}'),
        "annotations": ("Extra pod annotations, a JSON object.", '{"owner": "ml-team"}'),
        "secrets": (
            "Kubernetes Secrets every pod gets as environment variables (envFrom), "
            "comma-separated; e.g. the artifact store's AWS credentials.",
            "flow-aws-credentials",
        ),
        "cpu_limit_ratio": (
            "CPU limit as a multiple of the request; empty means no CPU limit.",
            "2",
        ),
        "gpu_vendor": (
            "GPU vendor, for the resource its device plugin advertises: nvidia "
            "(nvidia.com/gpu), amd (amd.com/gpu) or intel (gpu.intel.com/i915).",
            "amd",
        ),
        "gpu_type_label": (
            "Node label that Resources(gpu_type=...) selects on; empty means "
            "nvidia.com/gpu.product.",
            "cloud.google.com/gke-accelerator",
        ),
        "qos": (
            "Burstable or Guaranteed; empty means Burstable. Both set the memory limit to the "
            "request; Guaranteed also sets the CPU limit to the request.",
            "Guaranteed",
        ),
        "image_pull_policy": (
            "Always, IfNotPresent or Never; empty means Kubernetes' default for the tag.",
            "IfNotPresent",
        ),
        "persistent_volume_claims": (
            "PersistentVolumeClaims every pod mounts, a JSON object of claim name to path.",
            '{"shared-datasets": "/data"}',
        ),
        "security_context": (
            "The container securityContext of every pod, a JSON object in Kubernetes' names.",
            '{"runAsNonRoot": true, "allowPrivilegeEscalation": false}',
        ),
        "termination_message_policy": (
            "File or FallbackToLogsOnError; empty means File.",
            "FallbackToLogsOnError",
        ),
        "pod_template_file": (
            "A pod template YAML file every pod is laid over (flowtask's fields win).",
            "/etc/flowtask/pod-template.yaml",
        ),
    }
    options = {
        f"kubernetes_{name}": _option(description + "\n", "", example)
        for name, (description, example) in described.items()
    }
    options["kubernetes_schedule_timeout"] = _option(
        "How long an unschedulable pod waits for a node (a cluster autoscaler's, or capacity "
        "that frees up) before its task fails with the scheduler's reason: a duration such as "
        "'10m', '90s' or seconds. A missing Secret or image fails at once.\n",
        "10m",
        "0",
    )
    options["kubernetes_deferrable"] = _option(
        "Whether flow task pods run deferred: the worker slot is released while the pod runs "
        "and the triggerer watches it (KubernetesOptions(deferrable=...) per task).\n",
        "False",
        "True",
        kind="boolean",
    )
    return options


def _batch_options() -> dict[str, dict[str, Any]]:
    """Defaults under every task's BatchOptions (task values win), and how jobs are watched."""
    described = {
        "batch_job_queue": (
            "AWS Batch job queue (name or ARN) of flow tasks whose BatchOptions set none. A "
            "Batch task with no queue anywhere fails at once.",
            "",
            "flow-spot",
        ),
        "batch_job_role_arn": (
            "IAM role the job's container runs as (its AWS credentials, e.g. for an s3:// "
            "artifact store).",
            "",
            "arn:aws:iam::123456789012:role/flow-job",
        ),
        "batch_execution_role_arn": (
            "IAM role Batch and ECS use to start the job: pull the image, write logs, read "
            "Environment(secrets=[...]). Needed on Fargate and for secrets.",
            "",
            "arn:aws:iam::123456789012:role/flow-execution",
        ),
        "batch_platform": ("EC2 or FARGATE; empty means EC2.", "", "FARGATE"),
        "aws_region": (
            "AWS region of the Batch API; empty means the AWS connection's (aws_conn_id).",
            "",
            "eu-west-1",
        ),
        "batch_poll_interval": (
            "Seconds between status checks of a running Batch job and fetches of its "
            "CloudWatch logs.",
            "10",
            "30",
        ),
        "target_platform": (
            "The platform Environment(pip=[...]) is built for on Kubernetes and Batch, unless "
            "the task's KubernetesOptions/BatchOptions(target_platform=...) says: x86_64, "
            "aarch64, or a uv platform such as aarch64-manylinux_2_28.",
            "x86_64-manylinux_2_28",
            "aarch64",
        ),
        "kubernetes_env_cache_path": (
            "A node folder (hostPath) where pods unpack their environments, shared by the "
            "node's pods; empty: each pod unpacks into an emptyDir of its own.",
            "",
            "/var/cache/flowtask-env",
        ),
        "warm_runtime_idle": (
            "Seconds a warm runtime (a process that has imported the runtime and forks it for "
            "each local flow task) waits for the next task before it ends; 0 starts every "
            "local runtime as a new interpreter.",
            "120",
            "0",
        ),
        "warm_runtime_preload": (
            "What a warm runtime imports before it forks a task, so tasks find it loaded: "
            "auto (the top-level modules recent tasks of the same interpreter shape imported, "
            "learnt from the tasks), off, or module names separated by commas "
            "(numpy,pandas). Modules whose import starts threads (other than thread pools "
            "made anew in a fork, OpenBLAS's and jemalloc's), initialises devices or reads "
            "the whole environment are never preloaded.",
            "auto",
            "numpy,pandas",
        ),
        "warm_runtime_preload_mib": (
            "How much resident memory a warm runtime may grow by preloading (MiB); 0 "
            "preloads nothing.",
            "512",
            "1024",
        ),
        "environment_cache_size": (
            "How much of built environments the worker keeps under "
            "$AIRFLOW_HOME/flowtask/environments (least recently used out).",
            "10Gi",
            "50Gi",
        ),
    }
    return {
        name: _option(
            description + "\n",
            default,
            example,
            kind="float" if name in ("batch_poll_interval", "warm_runtime_idle") else "string",
        )
        for name, (description, default, example) in described.items()
    }


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-flowtask",
        "name": "flowtask",
        "description": (
            "Declare what a task needs (CPUs, memory, GPUs, retries, timeout, image) and run it "
            "locally, on Kubernetes or on AWS Batch; results are content-addressed artifacts."
        ),
        "versions": ["0.1.0"],
        "task-decorators": [{"name": "flow_task", "class-name": "provider.decorators.flow_task"}],
        # The Flow tabs (provider.ui). Airflow loads providers' plugins only with
        # [core] lazy_discover_providers = False.
        "plugins": [{"name": "flowtask", "plugin-class": "provider.ui.plugin.FlowtaskPlugin"}],
        "config": {
            "flow_task": {
                "description": "flowtask: where artifacts live and where flow tasks run.",
                "options": {
                    "artifact_store": _option(
                        "Root of the artifact store: file:///path or s3://bucket/prefix. Empty "
                        "means file://$AIRFLOW_HOME/flow_artifacts.\n",
                        "",
                        "file:///data/flow_artifacts",
                    ),
                    "aws_conn_id": _option(
                        "Airflow AWS connection whose credentials and endpoint the worker uses "
                        "for an s3:// artifact store. Where the runtime runs (pods, Batch, "
                        "local subprocesses) it uses the ordinary AWS credential chain; local "
                        "subprocesses get this connection's credentials and endpoint.\n",
                        "aws_default",
                        "aws_artifacts",
                    ),
                    "default_compute": _option(
                        "Compute target of flow tasks that set none: local, kubernetes or batch. "
                        "A run's flow_compute param overrides every task.\n",
                        "local",
                        "kubernetes",
                    ),
                    "default_image": _option(
                        "Image of flow tasks that set no Environment(image=...) when they run "
                        "on Kubernetes or Batch. It needs the worker's Python major.minor (and "
                        "boto3 for an s3:// store, else the pod installs it). Empty means "
                        "python:<worker major.minor>-slim.\n",
                        "",
                        "ghcr.io/acme/flow-base:3.11",
                    ),
                    "kubernetes_conn_id": _option(
                        "Airflow Kubernetes connection the pods are submitted through.\n",
                        "kubernetes_default",
                        "kubernetes_ml",
                    ),
                    "foreach_max_parallel": _option(
                        "How many pods of a .foreach on Kubernetes run at once (its Indexed "
                        "Job's parallelism) when its ForeachOptions(max_parallel=...) says "
                        "nothing. Locally the default is the CPU count; Batch submits every "
                        "chunk at once.\n",
                        "100",
                        "500",
                        kind="integer",
                    ),
                    "foreach_checkpoint_seconds": _option(
                        "How often (seconds) a running .foreach chunk stores the results of the "
                        "items it has finished, so a killed try's retry runs only the items "
                        "with no stored result. 0 stores after every item.\n",
                        "5",
                        "30",
                        kind="float",
                    ),
                    "kubernetes_pod_url": _option(
                        "A link to a pod's page in your cluster's console, shown in a flow "
                        "task's Flow tab and as its Pod link: {namespace} and {pod} are filled "
                        "in. Empty: no link.\n",
                        "",
                        "https://console.example.com/k8s/ns/{namespace}/pods/{pod}",
                    ),
                    **_kubernetes_options(),
                    **_batch_options(),
                    "xcom_inline_max_bytes": _option(
                        "With the flowtask XCom backend, JSON values up to this many bytes stay "
                        "in the XCom row; larger or non-JSON values go to the artifact store. "
                        "0 stores every value.\n",
                        "1024",
                        "0",
                        kind="integer",
                    ),
                },
            }
        },
    }
