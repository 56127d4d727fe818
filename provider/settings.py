"""The ``[flow_task]`` settings, each declared once: key, default, meaning, example, how its text
reads and what it accepts.

``provider_info`` (what ``airflow config list`` shows) and every reader derive from these
declarations; the settings a task's options fall back to (``kubernetes_*``, ``batch_*``) come
from the fields of ``KubernetesOptions`` and ``BatchOptions`` (``provider.specs.settings_meta``).

No Airflow here. Values come from a *source*: by default ``AIRFLOW__FLOW_TASK__<KEY>``, then
``airflow.cfg`` (Airflow's own order, read with ``configparser``); where Airflow runs,
``provider.config`` makes Airflow's config the source (``use_source``), which also reads
``_cmd`` and ``_secret`` variants and secrets backends.
"""

from __future__ import annotations

import configparser
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from provider.specs import COMPUTE_TARGETS, BatchOptions, KubernetesOptions, SpecError
from provider.specs.foreach import MAX_PARALLEL
from provider.specs.settings_meta import SETTING, SettingDoc

SECTION = "flow_task"
Source = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Setting:
    """One ``[flow_task]`` setting. ``parse`` turns its text into its value, raising
    ``ValueError`` (or ``SpecError``) with the reason; an empty text means the default."""

    key: str
    default: str
    description: str
    example: str
    parse: Callable[[str], Any]
    accepted: str = ""
    kind: str = "string"  # the provider info's type

    def read(self, raw: str | None) -> Any:
        text = (raw or "").strip() or self.default
        try:
            return self.parse(text)
        except (ValueError, SpecError) as exc:
            reason = str(exc)
            why = f": {reason}" if reason else ""
            accepted = f". Accepted: {self.accepted}" if self.accepted else ""
            raise ValueError(f"[{SECTION}] {self.key}={text!r} is invalid{why}{accepted}") from None

    def provider_info(self) -> dict[str, Any]:
        return {
            "description": self.description + "\n",
            "version_added": "0.1.0",
            "type": self.kind,
            "example": self.example,
            "default": self.default,
        }


def _text(raw: str) -> str:
    return raw


def _number(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError("") from None
        if not low <= value <= high:
            raise ValueError("")
        return value

    return parse


def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("Accepted: true or false")
    return lowered in ("true", "1", "yes")


def comma_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


_FORMS: dict[str, Callable[[str], Any]] = {
    "text": _text,
    "json": json.loads,
    "list": comma_list,
    "float": float,
    "bool": boolean,
}


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError("")
        return raw

    return parse


def _option_field(cls: type, name: str, doc: SettingDoc) -> Callable[[str], Any]:
    """Read the text as the field's form, then let the options class check the value."""

    def parse(raw: str) -> Any:
        if not raw:
            return None
        value = _FORMS[doc.form](raw)
        return getattr(cls(**{name: value}), name)

    return parse


def _option_settings(cls: type, prefix: str) -> Iterator[tuple[str, Setting]]:
    """The settings an options class's fields declare, with the field each one fills."""
    for spec_field in fields(cls):
        doc = spec_field.metadata.get(SETTING)
        if doc is None:
            continue
        key = doc.key or f"{prefix}{spec_field.name}"
        kind = {"float": "float", "bool": "boolean"}.get(doc.form, "string")
        yield (
            spec_field.name,
            Setting(
                key,
                doc.default,
                doc.description,
                doc.example,
                _option_field(cls, spec_field.name, doc),
                kind=kind,
            ),
        )


def _platform(raw: str) -> str:
    from provider.specs.platforms import target_platform

    return target_platform(raw, "target_platform")


def _node_path(raw: str) -> str | None:
    if raw and not raw.startswith("/"):
        raise ValueError("")
    return raw.rstrip("/") or None


def _secrets(raw: str) -> tuple[str, ...]:
    from provider.specs import Environment

    return tuple(Environment(secrets=comma_list(raw)).secrets)


def _mebibytes(raw: str) -> int:
    from provider.specs import parse_mebibytes

    return parse_mebibytes(raw, "environment_cache_size") * 2**20


KUBERNETES_FIELDS = dict(_option_settings(KubernetesOptions, "kubernetes_"))
BATCH_FIELDS = dict(_option_settings(BatchOptions, "batch_"))

_DECLARED = (
    Setting(
        "artifact_store",
        "",
        "Root of the artifact store: file:///path or s3://bucket/prefix. Empty means "
        "file://$AIRFLOW_HOME/flow_artifacts.",
        "file:///data/flow_artifacts",
        _text,
    ),
    Setting(
        "aws_conn_id",
        "aws_default",
        "Airflow AWS connection whose credentials and endpoint the worker uses for an s3:// "
        "artifact store. Where the runtime runs (pods, Batch, local subprocesses) it uses the "
        "ordinary AWS credential chain; local subprocesses get this connection's credentials "
        "and endpoint.",
        "aws_artifacts",
        _text,
    ),
    Setting(
        "default_compute",
        "local",
        "Compute target of flow tasks that set none: local, kubernetes or batch. A run's "
        "flow_compute param overrides every task.",
        "kubernetes",
        _one_of(COMPUTE_TARGETS),
        accepted=f"one of {COMPUTE_TARGETS}",
    ),
    Setting(
        "default_image",
        "",
        "Image of flow tasks that set no Environment(image=...) when they run on Kubernetes or "
        "Batch. It needs the worker's Python major.minor. Empty means python:<worker "
        "major.minor>-slim.",
        "ghcr.io/acme/flow-base:3.11",
        _text,
    ),
    Setting(
        "kubernetes_conn_id",
        "kubernetes_default",
        "Airflow Kubernetes connection the pods are submitted through.",
        "kubernetes_ml",
        _text,
    ),
    Setting(
        "foreach_max_parallel",
        "100",
        "How many pods of a .foreach on Kubernetes run at once (its Indexed Job's "
        "parallelism) when its ForeachOptions(max_parallel=...) says nothing. Locally the "
        "default is the CPU count; Batch submits every chunk at once.",
        "500",
        _number(int, 1, MAX_PARALLEL),
        accepted=f"an int from 1 to {MAX_PARALLEL}",
        kind="integer",
    ),
    Setting(
        "foreach_checkpoint_seconds",
        "5",
        "How often (seconds) a running .foreach chunk stores the results of the items it has "
        "finished, so a killed try's retry runs only the items with no stored result. 0 stores "
        "after every item.",
        "30",
        _number(float, 0, 3600),
        accepted="seconds from 0 (after every item) to 3600",
        kind="float",
    ),
    Setting(
        "kubernetes_pod_url",
        "",
        "A link to a pod's page in your cluster's console, shown in a flow task's Flow tab and "
        "as its Pod link: {namespace} and {pod} are filled in. Empty: no link.",
        "https://console.example.com/k8s/ns/{namespace}/pods/{pod}",
        _text,
    ),
    *KUBERNETES_FIELDS.values(),
    Setting(
        "kubernetes_secrets",
        "",
        "Kubernetes Secrets every pod gets as environment variables (envFrom), "
        "comma-separated; e.g. the artifact store's AWS credentials.",
        "flow-aws-credentials",
        _secrets,
    ),
    Setting(
        "kubernetes_env_cache_path",
        "",
        "A node folder (hostPath) where pods unpack their environments, shared by the node's "
        "pods; empty: each pod unpacks into an emptyDir of its own.",
        "/var/cache/flowtask-env",
        _node_path,
        accepted="an absolute path on the nodes, such as /var/cache/flowtask-env, or empty "
        "for an emptyDir",
    ),
    *BATCH_FIELDS.values(),
    Setting(
        "aws_region",
        "",
        "AWS region of the Batch API; empty means the AWS connection's (aws_conn_id).",
        "eu-west-1",
        lambda raw: raw or None,
    ),
    Setting(
        "batch_poll_interval",
        "10",
        "Seconds between status checks of a running Batch job and fetches of its CloudWatch logs.",
        "30",
        _number(float, 1e-9, 600),
        accepted="seconds, more than 0 and at most 600",
        kind="float",
    ),
    Setting(
        "target_platform",
        "x86_64-manylinux_2_28",
        "The platform Environment(pip=[...]) is built for on Kubernetes and Batch, unless the "
        "task's KubernetesOptions/BatchOptions(target_platform=...) says: x86_64, aarch64, or "
        "a uv platform such as aarch64-manylinux_2_28.",
        "aarch64",
        _platform,
    ),
    Setting(
        "warm_runtime_idle",
        "120",
        "Seconds a warm runtime (a process that has imported the runtime and forks it for each "
        "local flow task) waits for the next task before it ends; 0 starts every local runtime "
        "as a new interpreter.",
        "0",
        _number(float, 0, float("inf") - 1),
        accepted="seconds, a non-negative number (0 turns warm runtimes off)",
        kind="float",
    ),
    Setting(
        "warm_runtime_preload",
        "auto",
        "What a warm runtime imports before it forks a task, so tasks find it loaded: auto "
        "(the top-level modules recent tasks of the same interpreter shape imported, learnt "
        "from the tasks), off, or module names separated by commas (numpy,pandas). Modules "
        "whose import starts threads (other than thread pools made anew in a fork, OpenBLAS's "
        "and jemalloc's), initialises devices or reads the whole environment are never "
        "preloaded.",
        "numpy,pandas",
        _text,  # read with provider.runtime.preload.parse_settings, which says what it accepts
    ),
    Setting(
        "warm_runtime_preload_mib",
        "512",
        "How much resident memory a warm runtime may grow by preloading (MiB); 0 preloads nothing.",
        "1024",
        _number(int, 0, float("inf")),
        accepted="a non-negative int of MiB (0 preloads nothing)",
        kind="integer",
    ),
    Setting(
        "environment_cache_size",
        "10Gi",
        "How much of built environments the worker keeps under "
        "$AIRFLOW_HOME/flowtask/environments (least recently used out).",
        "50Gi",
        _mebibytes,
    ),
    Setting(
        "xcom_inline_max_bytes",
        "1024",
        "With the flowtask XCom backend, JSON values up to this many bytes stay in the XCom "
        "row; larger or non-JSON values go to the artifact store. 0 stores every value.",
        "0",
        _number(int, 0, float("inf")),
        accepted="a non-negative int of bytes (0 stores every value in the artifact store)",
        kind="integer",
    ),
)

SETTINGS: dict[str, Setting] = {setting.key: setting for setting in _DECLARED}


def environment_source(key: str) -> str | None:
    """``AIRFLOW__FLOW_TASK__<KEY>``, then ``[flow_task] <key>`` in ``airflow.cfg``: the order
    Airflow reads them in, without Airflow."""
    value = os.environ.get(f"AIRFLOW__{SECTION.upper()}__{key.upper()}")
    if value is not None:
        return value
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(airflow_config(), encoding="utf-8")
        found = parser.get(SECTION, key, fallback=None)
    except configparser.Error:
        return None
    return os.path.expanduser(os.path.expandvars(found)) if found else found


_source: Source = environment_source


def use_source(source: Source) -> None:
    """Read settings from ``source`` (``provider.config`` installs Airflow's config)."""
    global _source
    _source = source


def value(key: str) -> Any:
    """A setting's value, read from the source now; a bad value raises ``ValueError`` naming
    the setting, the value and what is accepted."""
    return SETTINGS[key].read(_source(key))


def airflow_home() -> Path:
    """``$AIRFLOW_HOME``, else ``~/airflow`` (Airflow's own default)."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser().resolve()


def airflow_config() -> Path:
    return Path(
        os.path.expanduser(os.environ.get("AIRFLOW_CONFIG") or airflow_home() / "airflow.cfg")
    )


def artifact_store_uri() -> str:
    """``[flow_task] artifact_store``, or ``file://$AIRFLOW_HOME/flow_artifacts`` when unset."""
    return str(value("artifact_store")) or (airflow_home() / "flow_artifacts").as_uri()


def kubernetes_defaults() -> KubernetesOptions:
    """The ``[flow_task] kubernetes_*`` settings every flow task's pod starts from."""
    given = {name: value(setting.key) for name, setting in KUBERNETES_FIELDS.items()}
    return KubernetesOptions(**{name: v for name, v in given.items() if v is not None})


def batch_defaults() -> BatchOptions:
    """The ``[flow_task] batch_*`` settings every flow task's Batch job starts from."""
    given = {name: value(setting.key) for name, setting in BATCH_FIELDS.items()}
    return BatchOptions(**{name: v for name, v in given.items() if v is not None})


def environment_cache_root() -> Path:
    return airflow_home() / "flowtask" / "environments"


def provider_info_options() -> dict[str, dict[str, Any]]:
    """The ``config`` options of the provider info, from the declarations."""
    return {key: setting.provider_info() for key, setting in SETTINGS.items()}
