"""Specs: every accepted form normalizes as documented; every bad form fails with a clear error."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from provider.specs import (
    Environment,
    KubernetesOptions,
    Resources,
    Retry,
    SpecError,
    TaskSpec,
    airflow_retry_kwargs,
    parse_cpu,
    parse_duration,
    parse_mebibytes,
)

# (label, builder, field, bad value as repr'd in the message)
BAD = [
    # cpu
    ("cpu negative", lambda: Resources(cpu=-1), "resources.cpu", -1),
    ("cpu zero", lambda: Resources(cpu=0), "resources.cpu", 0),
    ("cpu zero string", lambda: Resources(cpu="0"), "resources.cpu", "0"),
    ("cpu words", lambda: Resources(cpu="two"), "resources.cpu", "two"),
    ("cpu with unit text", lambda: Resources(cpu="2 cores"), "resources.cpu", "2 cores"),
    ("cpu memory unit", lambda: Resources(cpu="1Gi"), "resources.cpu", "1Gi"),
    ("cpu empty", lambda: Resources(cpu=""), "resources.cpu", ""),
    ("cpu below a millicore", lambda: Resources(cpu="0.0001"), "resources.cpu", "0.0001"),
    ("cpu fractional millicore", lambda: Resources(cpu="0.5m"), "resources.cpu", "0.5m"),
    ("cpu nan", lambda: Resources(cpu=math.nan), "resources.cpu", math.nan),
    ("cpu inf", lambda: Resources(cpu=math.inf), "resources.cpu", math.inf),
    ("cpu bool", lambda: Resources(cpu=True), "resources.cpu", True),
    ("cpu list", lambda: Resources(cpu=[2]), "resources.cpu", [2]),
    # memory, disk, shared memory
    ("memory negative", lambda: Resources(memory=-512), "resources.memory", -512),
    ("memory zero", lambda: Resources(memory=0), "resources.memory", 0),
    ("memory GB", lambda: Resources(memory="16GB"), "resources.memory", "16GB"),
    ("memory lowercase gi", lambda: Resources(memory="16gi"), "resources.memory", "16gi"),
    ("memory unknown unit", lambda: Resources(memory="16Qi"), "resources.memory", "16Qi"),
    ("memory inner space", lambda: Resources(memory="16 Gi"), "resources.memory", "16 Gi"),
    ("memory words", lambda: Resources(memory="lots"), "resources.memory", "lots"),
    ("memory float", lambda: Resources(memory=1.5), "resources.memory", 1.5),
    ("memory bool", lambda: Resources(memory=True), "resources.memory", True),
    ("memory None", lambda: Resources(memory=None), "resources.memory", None),  # type: ignore[arg-type]
    ("memory negative string", lambda: Resources(memory="-1Gi"), "resources.memory", "-1Gi"),
    ("disk unknown unit", lambda: Resources(disk="10XB"), "resources.disk", "10XB"),
    ("disk zero", lambda: Resources(disk=0), "resources.disk", 0),
    (
        "shm over memory",
        lambda: Resources(memory=1024, shared_memory="2Gi"),
        "resources.shared_memory",
        "2Gi",
    ),
    ("shm words", lambda: Resources(shared_memory="half"), "resources.shared_memory", "half"),
    ("memory no unit", lambda: Resources(memory="4096"), "resources.memory", "4096"),
    (
        "memory bytes no unit",
        lambda: Resources(memory="1073741824"),
        "resources.memory",
        "1073741824",
    ),
    ("memory decimal no unit", lambda: Resources(memory="1.5"), "resources.memory", "1.5"),
    ("disk no unit", lambda: Resources(disk="100"), "resources.disk", "100"),
    ("shm no unit", lambda: Resources(shared_memory=" 64 "), "resources.shared_memory", " 64 "),
    # gpu
    ("gpu fractional", lambda: Resources(gpu=0.5), "resources.gpu", 0.5),  # type: ignore[arg-type]
    ("gpu negative", lambda: Resources(gpu=-1), "resources.gpu", -1),
    ("gpu string", lambda: Resources(gpu="1"), "resources.gpu", "1"),  # type: ignore[arg-type]
    ("gpu bool", lambda: Resources(gpu=True), "resources.gpu", True),
    (
        "gpu_type without gpu",
        lambda: Resources(gpu_type="nvidia-tesla-t4"),
        "resources.gpu_type",
        "nvidia-tesla-t4",
    ),
    (
        "gpu_type with space",
        lambda: Resources(gpu=1, gpu_type="tesla t4"),
        "resources.gpu_type",
        "tesla t4",
    ),
    ("gpu_type empty", lambda: Resources(gpu=1, gpu_type=""), "resources.gpu_type", ""),
    # retry and durations
    ("retry negative", lambda: Retry(times=-1), "retry.times", -1),
    ("retry float", lambda: Retry(times=1.5), "retry.times", 1.5),  # type: ignore[arg-type]
    ("retry bool", lambda: Retry(times=True), "retry.times", True),
    ("retry too many", lambda: Retry(times=1000), "retry.times", 1000),
    ("delay unknown unit", lambda: Retry(delay="10x"), "retry.delay", "10x"),
    ("delay unit first", lambda: Retry(delay="m5"), "retry.delay", "m5"),
    ("delay two dots", lambda: Retry(delay="1.5.2h"), "retry.delay", "1.5.2h"),
    ("delay negative", lambda: Retry(delay="-5m"), "retry.delay", "-5m"),
    ("delay zero", lambda: Retry(delay="0s"), "retry.delay", "0s"),
    ("delay wrong order", lambda: Retry(delay="5m1h"), "retry.delay", "5m1h"),
    ("delay empty", lambda: Retry(delay=""), "retry.delay", ""),
    (
        "delay negative timedelta",
        lambda: Retry(delay=timedelta(seconds=-1)),
        "retry.delay",
        timedelta(seconds=-1),
    ),
    ("delay list", lambda: Retry(delay=[60]), "retry.delay", [60]),  # type: ignore[arg-type]
    ("backoff unknown", lambda: Retry(backoff="linear"), "retry.backoff", "linear"),
    (
        "max_delay below delay",
        lambda: Retry(delay="10m", backoff="exponential", max_delay="1m"),
        "retry.max_delay",
        "1m",
    ),
    ("max_delay with constant", lambda: Retry(max_delay="1h"), "retry.max_delay", "1h"),
    ("timeout zero", lambda: TaskSpec.build(timeout=0), "timeout", 0),
    ("timeout words", lambda: TaskSpec.build(timeout="an hour"), "timeout", "an hour"),
    ("timeout nan", lambda: TaskSpec.build(timeout=math.nan), "timeout", math.nan),
    ("delay past timedelta", lambda: Retry(delay=10**15), "retry.delay", 10**15),
    ("delay float past timedelta", lambda: Retry(delay=1e300), "retry.delay", 1e300),
    ("delay days past timedelta", lambda: Retry(delay="9999999999d"), "retry.delay", "9999999999d"),
    (
        "max_delay past timedelta",
        lambda: Retry(backoff="exponential", max_delay="9999999999d"),
        "retry.max_delay",
        "9999999999d",
    ),
    ("timeout past timedelta", lambda: TaskSpec.build(timeout=10**15), "timeout", 10**15),
    ("timeout past float", lambda: TaskSpec.build(timeout=10**400), "timeout", 10**400),
    ("delay non-ascii digit", lambda: Retry(delay="²"), "retry.delay", "²"),
    ("constant delay past 9999", lambda: Retry(delay=10**12), "retry.delay", 10**12),
    ("constant delay days past 9999", lambda: Retry(delay="99999999d"), "retry.delay", "99999999d"),
    ("timeout past deadline seconds", lambda: TaskSpec.build(timeout=10**12), "timeout", 10**12),
    ("timeout over int32", lambda: TaskSpec.build(timeout="24856d"), "timeout", "24856d"),
    # environment
    (
        "env name starts with digit",
        lambda: Environment(env={"1A": "x"}),
        "environment.env['1A']",
        "1A",
    ),
    ("env name dash", lambda: Environment(env={"A-B": "x"}), "environment.env['A-B']", "A-B"),
    ("env name space", lambda: Environment(env={"A B": "x"}), "environment.env['A B']", "A B"),
    ("env name empty", lambda: Environment(env={"": "x"}), "environment.env['']", ""),
    ("env value None", lambda: Environment(env={"A": None}), "environment.env['A']", None),
    ("env value list", lambda: Environment(env={"A": [1]}), "environment.env['A']", [1]),
    ("env not a dict", lambda: Environment(env=["A=1"]), "environment.env", ["A=1"]),
    ("env value NUL", lambda: Environment(env={"A": "x\0y"}), "environment.env['A']", "x\0y"),
    (
        "env value lone surrogate",
        lambda: Environment(env={"A": "\ud800"}),
        "environment.env['A']",
        "\ud800",
    ),
    ("pip triple equals", lambda: Environment(pip=["xgboost==="]), "environment.pip", "xgboost==="),
    ("pip version only", lambda: Environment(pip=["==1.0"]), "environment.pip", "==1.0"),
    ("pip garbage", lambda: Environment(pip=["not a req!!"]), "environment.pip", "not a req!!"),
    ("pip bare string", lambda: Environment(pip="numpy"), "environment.pip", "numpy"),
    ("pip non-string item", lambda: Environment(pip=[3]), "environment.pip", 3),
    (
        "pip duplicate",
        lambda: Environment(pip=["numpy", "NumPy>=2"]),
        "environment.pip",
        "NumPy>=2",
    ),
    (
        "pip duplicate underscore and dash",
        lambda: Environment(pip=["scikit_learn==1.5", "scikit-learn>=1"]),
        "environment.pip",
        "scikit-learn>=1",
    ),
    (
        "pip duplicate dot and underscore",
        lambda: Environment(pip=["zope.interface", "Zope_Interface[test]"]),
        "environment.pip",
        "Zope_Interface[test]",
    ),
    (
        "image with space",
        lambda: Environment(image="python 3.11"),
        "environment.image",
        "python 3.11",
    ),
    (
        "image uppercase repo",
        lambda: Environment(image="Python:3.11"),
        "environment.image",
        "Python:3.11",
    ),
    ("image empty tag", lambda: Environment(image="python:"), "environment.image", "python:"),
    (
        "image url",
        lambda: Environment(image="https://hub/python"),
        "environment.image",
        "https://hub/python",
    ),
    ("image empty", lambda: Environment(image=""), "environment.image", ""),
    (
        "image registry two dots",
        lambda: Environment(image="ghcr..io/org/img"),
        "environment.image",
        "ghcr..io/org/img",
    ),
    (
        "image registry leading dash",
        lambda: Environment(image="-registry.example.com/img"),
        "environment.image",
        "-registry.example.com/img",
    ),
    (
        "image name over 255",
        lambda: Environment(image="registry.example.com/" + "a" * 240 + ":1"),
        "environment.image",
        "registry.example.com/" + "a" * 240 + ":1",
    ),
    (
        "secret uppercase",
        lambda: Environment(secrets=["DB_CREDS"]),
        "environment.secrets",
        "DB_CREDS",
    ),
    (
        "secret bare string",
        lambda: Environment(secrets="db-creds"),
        "environment.secrets",
        "db-creds",
    ),
    ("secret empty", lambda: Environment(secrets=[""]), "environment.secrets", ""),
    (
        "secret two dots",
        lambda: Environment(secrets=["db..creds"]),
        "environment.secrets",
        "db..creds",
    ),
    (
        "secret dash dot",
        lambda: Environment(secrets=["db-.creds"]),
        "environment.secrets",
        "db-.creds",
    ),
    (
        "secret ARN with NUL",
        lambda: Environment(secrets=["arn:aws:ssm:us-east-1:123456789012:parameter/x\0"]),
        "environment.secrets",
        "arn:aws:ssm:us-east-1:123456789012:parameter/x\0",
    ),
    (
        "secret ARN with a control character",
        lambda: Environment(secrets=["arn:aws:ssm:us-east-1:123456789012:parameter/x\x1b"]),
        "environment.secrets",
        "arn:aws:ssm:us-east-1:123456789012:parameter/x\x1b",
    ),
    # task-level
    ("compute unknown", lambda: TaskSpec.build(compute="k8s"), "compute", "k8s"),
    ("compute capitalized", lambda: TaskSpec.build(compute="Local"), "compute", "Local"),
    ("compute int", lambda: TaskSpec.build(compute=3), "compute", 3),
    ("catch not identifier", lambda: TaskSpec.build(catch="a-b"), "catch", "a-b"),
    ("catch leading digit", lambda: TaskSpec.build(catch="1x"), "catch", "1x"),
    ("catch empty", lambda: TaskSpec.build(catch=""), "catch", ""),
    ("catch keyword", lambda: TaskSpec.build(catch="class"), "catch", "class"),
    ("catch int", lambda: TaskSpec.build(catch=1), "catch", 1),
    ("resources wrong type", lambda: TaskSpec.build(resources="big"), "resources", "big"),
    ("resources unknown key", lambda: TaskSpec.build(resources={"cores": 2}), "resources.cores", 2),
    ("retry wrong type", lambda: TaskSpec.build(retry="3"), "retry", "3"),
    (
        "environment wrong type",
        lambda: TaskSpec.build(environment="python:3.11"),
        "environment",
        "python:3.11",
    ),
    ("unknown spec", lambda: TaskSpec.build(gpus=1), "gpus", 1),
    # kubernetes options
    (
        "service account two dots",
        lambda: KubernetesOptions(service_account="flow..runner"),
        "kubernetes.service_account",
        "flow..runner",
    ),
    (
        "label key prefix two dots",
        lambda: KubernetesOptions(labels={"example..com/team": "ml"}),
        "kubernetes.labels['example..com/team']",
        "example..com/team",
    ),
    (
        "annotation key prefix dot dash",
        lambda: KubernetesOptions(annotations={"example.-com/owner": "me"}),
        "kubernetes.annotations['example.-com/owner']",
        "example.-com/owner",
    ),
    (
        "node selector key prefix dash dot",
        lambda: KubernetesOptions(node_selector={"example-.com/pool": "a"}),
        "kubernetes.node_selector['example-.com/pool']",
        "example-.com/pool",
    ),
    (
        "gpu_type_label two dots",
        lambda: KubernetesOptions(gpu_type_label="nvidia..com/gpu.product"),
        "kubernetes.gpu_type_label",
        "nvidia..com/gpu.product",
    ),
    (
        "toleration key two dots",
        lambda: KubernetesOptions(tolerations=[{"key": "a..b/spot", "operator": "Exists"}]),
        "kubernetes.tolerations[0].key",
        "a..b/spot",
    ),
    (
        "toleration without key, operator Equal",
        lambda: KubernetesOptions(tolerations=[{"value": "true", "effect": "NoSchedule"}]),
        "kubernetes.tolerations[0].key",
        None,
    ),
    (
        "toleration_seconds with effect NoSchedule",
        lambda: KubernetesOptions(
            tolerations=[{"key": "spot", "effect": "NoSchedule", "toleration_seconds": 60}]
        ),
        "kubernetes.tolerations[0].toleration_seconds",
        60,
    ),
    (
        "toleration_seconds without effect",
        lambda: KubernetesOptions(
            tolerations=[{"key": "spot", "operator": "Exists", "toleration_seconds": 60}]
        ),
        "kubernetes.tolerations[0].toleration_seconds",
        60,
    ),
    (
        "toleration_seconds past int64",
        lambda: KubernetesOptions(
            tolerations=[{"key": "spot", "effect": "NoExecute", "toleration_seconds": 2**63}]
        ),
        "kubernetes.tolerations[0].toleration_seconds",
        2**63,
    ),
    (
        "toleration value with a space",
        lambda: KubernetesOptions(tolerations=[{"key": "pool", "value": "high mem"}]),
        "kubernetes.tolerations[0].value",
        "high mem",
    ),
    (
        "toleration value of 64",
        lambda: KubernetesOptions(tolerations=[{"key": "pool", "value": "v" * 64}]),
        "kubernetes.tolerations[0].value",
        "v" * 64,
    ),
    (
        "toleration value ending in a dash",
        lambda: KubernetesOptions(tolerations=[{"key": "pool", "value": "big-"}]),
        "kubernetes.tolerations[0].value",
        "big-",
    ),
    (
        "toleration value an int",
        lambda: KubernetesOptions(tolerations=[{"key": "pool", "value": 3}]),
        "kubernetes.tolerations[0].value",
        3,
    ),
    (
        "toleration value 0 with Exists",
        lambda: KubernetesOptions(tolerations=[{"key": "pool", "operator": "Exists", "value": 0}]),
        "kubernetes.tolerations[0].value",
        0,
    ),
    # refused before too: guards for the wider forms accepted now
    (
        "toleration empty key, operator Equal",
        lambda: KubernetesOptions(tolerations=[{"key": "", "operator": "Equal", "value": "x"}]),
        "kubernetes.tolerations[0].key",
        "",
    ),
    (
        "pull secret two dots",
        lambda: KubernetesOptions(image_pull_secrets=["reg..cred"]),
        "kubernetes.image_pull_secrets",
        "reg..cred",
    ),
    (
        "pull secret over 253",
        lambda: KubernetesOptions(image_pull_secrets=["a" * 254]),
        "kubernetes.image_pull_secrets",
        "a" * 254,
    ),
    (
        "cpu_limit_ratio inf",
        lambda: KubernetesOptions(cpu_limit_ratio=math.inf),
        "kubernetes.cpu_limit_ratio",
        math.inf,
    ),
    (
        "cpu_limit_ratio nan",
        lambda: KubernetesOptions(cpu_limit_ratio=math.nan),
        "kubernetes.cpu_limit_ratio",
        math.nan,
    ),
]


def test_the_bad_table_is_large():
    assert len(BAD) >= 40


@pytest.mark.parametrize(
    ("builder", "field", "value"), [row[1:] for row in BAD], ids=[row[0] for row in BAD]
)
def test_bad_input_raises_spec_error_naming_field_value_and_form(builder, field, value):
    with pytest.raises(SpecError) as caught:
        builder()
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.field == field
    message = str(err)
    assert message.startswith(f"{field}=")
    assert repr(value) in message
    assert "Accepted:" in message and err.accepted


@pytest.mark.parametrize(
    ("given", "cores"),
    [
        (1, 1.0),
        (2, 2.0),
        (0.5, 0.5),
        ("500m", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("250m", 0.25),
        (" 4 ", 4.0),
        ("0.001", 0.001),
        ("1m", 0.001),
    ],
)
def test_cpu_forms(given, cores):
    assert parse_cpu(given) == cores


@pytest.mark.parametrize(
    ("given", "mib"),
    [
        (2048, 2048),
        ("16Gi", 16384),
        ("500Mi", 500),
        ("16G", 15259),
        ("1.5Gi", 1536),
        ("1024Ki", 1),
        ("1Ki", 1),
        ("1Ti", 1048576),
        ("100M", 96),
        ("2k", 1),
    ],
)
def test_memory_forms(given, mib):
    assert parse_mebibytes(given, "resources.memory") == mib


def test_a_memory_string_without_a_unit_offers_both_readings():
    with pytest.raises(SpecError) as caught:
        Resources(memory="4096")
    assert str(caught.value) == (
        "resources.memory='4096' is invalid: a size without a unit is ambiguous: MiB in "
        "Metaflow's int form, bytes in a Kubernetes quantity. Accepted: an int of MiB (4096) "
        "or a string with a unit ('4096Mi', '4Gi')"
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (90, timedelta(seconds=90)),
        (1.5, timedelta(seconds=1.5)),
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("2m", timedelta(minutes=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("250ms", timedelta(milliseconds=250)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        (timedelta(minutes=2), timedelta(minutes=2)),
    ],
)
def test_duration_forms(given, expected):
    assert parse_duration(given, "timeout") == expected


def test_the_longest_durations_airflow_and_kubernetes_take():
    assert TaskSpec.build(timeout=2**31 - 1).timeout == timedelta(seconds=2**31 - 1)
    assert Retry(delay="1000d").delay == timedelta(days=1000)
    # Airflow caps an exponential backoff at [core] max_task_retry_delay before adding it.
    huge = Retry(delay="99999999d", backoff="exponential")
    assert huge.delay == timedelta(days=99999999)
    assert parse_duration("999999999d", "--grace") == timedelta(days=999999999)


def test_resources_normalize_and_compare_equal_across_forms():
    a = Resources(
        cpu="500m", memory="4Gi", disk="10Gi", shared_memory="1Gi", gpu=2, gpu_type="A100"
    )
    b = Resources(cpu=0.5, memory=4096, disk=10240, shared_memory=1024, gpu=2, gpu_type="A100")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a.cpu_millicores == 500
    assert a.memory_quantity == "4096Mi"
    assert a.disk_quantity == "10240Mi" and a.shared_memory_quantity == "1024Mi"
    assert Resources().disk_quantity is None
    assert repr(Resources(cpu="500m")) == (
        "Resources(cpu=0.5, memory=4096, gpu=0, disk=None, shared_memory=None, gpu_type=None)"
    )


def test_retry_normalizes_durations():
    retry = Retry(times=3, delay="2m", backoff="exponential", max_delay="1h")
    assert retry.delay == timedelta(minutes=2) and retry.max_delay == timedelta(hours=1)
    assert retry == Retry(times=3, delay=120, backoff="exponential", max_delay=3600)
    assert len({retry, Retry(times=3, delay=120, backoff="exponential", max_delay=3600)}) == 1


def test_environment_is_hashable_with_a_readable_repr():
    env = Environment(
        image="python:3.11-slim",
        pip=["xgboost==2.1.4"],
        env={"B": 2, "A": "1"},
        secrets=["db-creds", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"],
    )
    assert env.env_dict == {"A": "1", "B": "2"}
    assert hash(env) == hash(
        Environment(
            image="python:3.11-slim",
            pip=("xgboost==2.1.4",),
            env={"A": "1", "B": "2"},
            secrets=("db-creds", "arn:aws:secretsmanager:us-east-1:123456789012:secret:x"),
        )
    )
    # Values may be credentials and reprs end up in task logs: names only.
    assert repr(Environment(image="python:3.11-slim", pip=["xgboost==2.1.4"], env={"A": 1})) == (
        "Environment(image='python:3.11-slim', pip=('xgboost==2.1.4',), env={'A': '***'}, "
        "secrets=())"
    )


@pytest.mark.parametrize(
    "image",
    [
        "python:3.11-slim",
        "python",
        "ghcr.io/org/team/img:1.2.3",
        "localhost:5000/img",
        "registry.example.com/a_b/c-d:latest",
        "python@sha256:" + "a" * 64,
        "Registry-1.Example.com:443/a__b/c--d.e:v1.2_3",
        "a" * 255 + ":" + "t" * 128,
    ],
)
def test_image_forms(image):
    assert Environment(image=image).image == image


@pytest.mark.parametrize(
    "name",
    ["regcred", "registry.example.com", "a" * 253, ".".join(["b" * 63] * 4)[:253].rstrip(".")],
)
def test_secret_names_are_dns_subdomains(name):
    assert KubernetesOptions(image_pull_secrets=[name]).image_pull_secrets == (name,)
    assert Environment(secrets=[name]).secrets == (name,)


def test_keys_take_a_dns_subdomain_prefix_of_up_to_253():
    prefix = "a" * 100 + "." + "b" * 100 + ".example.com"
    options = KubernetesOptions(labels={f"{prefix}/team": "ml"}, gpu_type_label=f"{prefix}/gpu")
    assert dict(options.labels) == {f"{prefix}/team": "ml"}


@pytest.mark.parametrize(
    "toleration",
    [
        {"operator": "Exists"},  # tolerates every taint
        {"key": "", "operator": "Exists", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "NoExecute", "toleration_seconds": 30},
        {"key": "spot", "effect": "NoExecute", "toleration_seconds": -1},  # evict at once
        {"key": "spot"},
        {"key": "spot", "value": ""},
        {"key": "example.com/pool", "operator": "Equal", "value": "A_b.c-" + "d" * 57},
        {"key": "spot", "operator": "Exists", "value": ""},
    ],
)
def test_tolerations_the_api_server_accepts(toleration):
    options = KubernetesOptions(tolerations=[toleration])
    assert options.toleration_dicts == [{"operator": "Equal", **toleration}]


def test_task_spec_build_accepts_loose_forms():
    spec = TaskSpec.build(
        resources={"cpu": "2", "memory": "8Gi"},
        retry=3,
        timeout="2h",
        catch=True,
        environment={"pip": ["numpy"]},
        compute="kubernetes",
    )
    assert spec.resources == Resources(cpu=2, memory=8192)
    assert spec.retry == Retry(times=3)
    assert spec.timeout == timedelta(hours=2)
    assert spec.catch is True
    assert spec.environment.pip == ("numpy",)
    assert spec.compute == "kubernetes"
    assert TaskSpec.build(catch=False).catch is None
    assert TaskSpec.build() == TaskSpec()
    assert hash(spec) == hash(
        TaskSpec.build(
            resources=Resources(cpu=2, memory=8192),
            retry=Retry(times=3),
            timeout=7200,
            catch=True,
            environment=Environment(pip=["numpy"]),
            compute="kubernetes",
        )
    )


def test_with_overrides_keeps_unset_fields():
    spec = TaskSpec.build(resources={"cpu": 2}, compute="batch", catch="error")
    changed = spec.with_overrides(resources=Resources(cpu=8), compute=None)
    assert changed.resources.cpu == 8
    assert changed.compute == "batch" and changed.catch == "error"
    assert spec.with_overrides() is spec


def test_airflow_retry_kwargs():
    constant = TaskSpec.build(retry=Retry(times=2, delay="30s"))
    assert airflow_retry_kwargs(constant) == {
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 0.0,
    }
    exponential = TaskSpec.build(
        retry=Retry(times=5, delay="1m", backoff="exponential", max_delay="30m"), timeout="1h"
    )
    assert airflow_retry_kwargs(exponential) == {
        "retries": 5,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": timedelta(hours=1),
    }
