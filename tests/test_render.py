"""``flowtask render``: the pod a flow task would submit, with no cluster and no credentials."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, TEST_DAGS, airflow_env

from provider.client.render import RenderError, render_pod
from provider.core.code_package import build_code_package

FLOWTASK = str(Path(sys.executable).parent / "flowtask")
S3_STORE = "s3://flow-artifacts/render"  # Batch containers read only an s3:// store


def test_render_prints_the_pod_as_json(tmp_path: Path):
    env = airflow_env(tmp_path, TEST_DAGS)
    proc = subprocess.run(
        [FLOWTASK, "render", "flow_targets", "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    pod = json.loads(proc.stdout)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "python:3.11-slim"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16384Mi"},
        "limits": {"memory": "16384Mi", "nvidia.com/gpu": "1"},
    }
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "nvidia-tesla-t4"}
    assert pod["metadata"]["labels"]["tag.flowtask.io/k8s"] == "true"
    command = container["command"]
    assert command[:2] == ["python3", "-c"] and "flowtask bootstrap" in command[2]
    store = (tmp_path / "flow_artifacts").as_uri()
    assert command[command.index("--store") + 1] == store
    assert not (tmp_path / "flow_artifacts").exists()  # nothing was stored
    package = build_code_package(TEST_DAGS)  # the runtime and the DAG folder's modules
    sha256 = hashlib.sha256(package).hexdigest()
    expected = f"data/{sha256[:2]}/{sha256}:{len(package)}"
    assert command[command.index("--code") + 1] == expected


def test_render_explains_what_it_cannot_render(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    with pytest.raises(RenderError, match=r"no DAG 'nope' in .*DAGs found: \[.*'flow_targets'"):
        render_pod("nope", "train", dags_folder=TEST_DAGS)
    with pytest.raises(RenderError, match=r"has no task 'nope'; tasks: \['train'\]"):
        render_pod("flow_targets", "nope", dags_folder=TEST_DAGS)
    with pytest.raises(RenderError, match=r"compute='local'.*pass --compute kubernetes"):
        render_pod("flow_failures", "flaky", dags_folder=TEST_DAGS)
    pod = render_pod("flow_failures", "flaky", compute="kubernetes", dags_folder=TEST_DAGS)
    assert pod["spec"]["containers"][0]["image"].startswith("python:3.")
    with pytest.raises(RenderError, match=r"flow_mixed.settings is a .*, not a flow task"):
        render_pod("flow_mixed", "settings", dags_folder=EXAMPLES)
    with pytest.raises(RenderError, match=r"cannot run on Batch: batch.queue=None .* no job queue"):
        render_pod("flow_failures", "flaky", compute="batch", dags_folder=TEST_DAGS)
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE", "flow-spot")
    store = (tmp_path / "flow_artifacts").as_uri()  # the default: no Batch container reads it
    with pytest.raises(RenderError) as refused:
        render_pod("flow_failures", "flaky", compute="batch", dags_folder=TEST_DAGS)
    assert str(refused.value) == (
        f"flow_failures.flaky cannot run on Batch: [flow_task] artifact_store='{store}' is "
        f"invalid: it must be an s3:// store for Batch (the artifact store {store} is a folder "
        "of the worker: a container reads it only where it mounts the same path; set "
        "[flow_task] artifact_store to an s3:// URI; Batch jobs mount no folder). Accepted: "
        "s3://bucket/prefix in [flow_task] artifact_store (AIRFLOW__FLOW_TASK__ARTIFACT_STORE)"
    )
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", S3_STORE)
    with pytest.raises(RenderError, match=r"environment.secrets='db-creds' is invalid"):
        render_pod("flow_targets", "train", compute="batch", dags_folder=TEST_DAGS)


def test_render_prints_the_batch_requests_boto3_receives(tmp_path: Path):
    env = airflow_env(
        tmp_path,
        EXAMPLES,
        AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE="flow-spot",
        AIRFLOW__FLOW_TASK__ARTIFACT_STORE=S3_STORE,
    )
    proc = subprocess.run(
        [FLOWTASK, "render", "flow_batch", "score", "--compute", "batch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(proc.stdout)
    definition, submit = rendered["register_job_definition"], rendered["submit_job"]
    assert set(rendered) == {"register_job_definition", "submit_job"}
    assert definition["containerProperties"]["image"].startswith("python:3.")
    assert submit["jobDefinition"] == definition["jobDefinitionName"]
    assert submit["jobQueue"] == "flow-spot"
    assert set(submit["parameters"]) == {"code", "payload", "manifest"}
    overrides = submit["containerOverrides"]
    assert overrides["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "2048"},
    ]
    assert "command" not in overrides  # the definition's, its placeholders filled
    command = definition["containerProperties"]["command"]
    assert command[:2] == ["python3", "-c"] and "flowtask bootstrap" in command[2]
    assert command[command.index("--payload") :][:2] == ["--payload", "Ref::payload"]
    static = {v["name"]: v["value"] for v in definition["containerProperties"]["environment"]}
    assert static["FLOW_SCALE"] == "2" and static["FLOWTASK_STORE"] == S3_STORE
    assert submit["tags"]["flowtask.io/map-index"] == "0" and submit["tags"]["team"] == "ml"
    assert submit["timeout"] == {"attemptDurationSeconds": 600}
    assert not (tmp_path / "flow_artifacts").exists()  # nothing was stored or registered


def test_render_a_mapped_task_with_its_dag_folder_helpers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    pod = render_pod("flow_kubernetes", "score", dags_folder=EXAMPLES)
    container = pod["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "1024Mi"}
    assert {"name": "FLOW_SCALE", "value": "2"} in container["env"]
    assert pod["metadata"]["annotations"]["flowtask.io/map-index"] == "0"
    assert pod["spec"]["activeDeadlineSeconds"] == 600
    _, size = container["command"][container["command"].index("--code") + 1].split(":")
    assert int(size) == len(build_code_package(EXAMPLES))  # with dags_examples/flow_helpers


def test_render_a_foreach_prints_its_indexed_job_the_same_size_for_any_number_of_items(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    env = airflow_env(tmp_path, EXAMPLES)
    argv = [FLOWTASK, "render", "flow_foreach", "score", "--compute", "kubernetes"]
    proc = subprocess.run(
        [*argv, "--items", "10000"], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    big = json.loads(proc.stdout)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    small = render_pod(
        "flow_foreach", "score", compute="kubernetes", dags_folder=EXAMPLES, items=10
    )
    for job, chunks in ((big, 20), (small, 1)):  # chunks of 500 items
        assert (job["kind"], job["spec"]["completionMode"]) == ("Job", "Indexed")
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == chunks
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[-2:] == ["--chunks", f"0-{chunks - 1}" if chunks > 1 else "0"]
    sizes = [len(json.dumps(job, sort_keys=True)) for job in (small, big)]
    print(f"RENDERED JOB 10 items: {sizes[0]} B; 10,000 items: {sizes[1]} B")
    assert abs(sizes[1] - sizes[0]) <= 8  # the digits of the counts, not the items
    with pytest.raises(RenderError, match=r"over an upstream's list.*pass --items N"):
        render_pod("flow_foreach", "score", compute="kubernetes", dags_folder=EXAMPLES)


def test_render_a_foreach_task_prints_its_array_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Its items come from an upstream task: their number, and so the array's size and chunk
    list, are known when the task runs. (The CLI prints this, as for any Batch task.)"""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE", "flow-spot")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", S3_STORE)
    rendered = render_pod("flow_foreach", "score", compute="batch", dags_folder=EXAMPLES)
    assert set(rendered) == {"register_job_definition", "submit_job"}
    submit = rendered["submit_job"]
    assert submit["arrayProperties"] == {"size": "<chunks: known when the task runs>"}
    assert submit["parameters"]["chunks"] == "<chunks: known when the task runs>"
    command = rendered["register_job_definition"]["containerProperties"]["command"]
    assert command[command.index("--") + 1] == "foreach"
    assert command[-4:] == ["--chunk-env", "AWS_BATCH_JOB_ARRAY_INDEX", "--chunks", "Ref::chunks"]


FOREACH_DAG = """
from airflow.sdk import dag
from provider import flow_task


@dag(schedule=None)
def fan_out():
    @flow_task
    def score(item: int) -> int:
        return item * 2

    score.foreach(item=list(range({n})))


fan_out()
"""


def test_a_foreach_submit_request_does_not_grow_with_its_items(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """10 items or 10,000: the items are in the store, never in the request, which differs
    only in the array's size and its chunk list ("0-9" against "0-999")."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE", "flow-spot")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", S3_STORE)
    submits, sizes = {}, {}
    for n in (10, 10_000):
        folder = tmp_path / f"dags_{n}"
        folder.mkdir()
        (folder / "fan_out.py").write_text(FOREACH_DAG.replace("{n}", str(n)))
        submit = render_pod("fan_out", "score", compute="batch", dags_folder=folder)["submit_job"]
        sizes[n] = len(json.dumps(submit))
        submit["parameters"]["code"] = "<the DAG folder's code package>"  # files differ in "10"
        submits[n] = submit
    print(f"FOREACH SubmitJob request: {sizes[10]} bytes for 10 items, {sizes[10_000]} for 10,000")
    small, large = (len(json.dumps(submits[n])) for n in (10, 10_000))
    assert submits[10]["arrayProperties"] == {"size": 10}
    assert submits[10_000]["arrayProperties"] == {"size": 1000}  # chunks of 10 items
    assert submits[10]["parameters"]["chunks"] == "0-9"
    assert submits[10_000]["parameters"]["chunks"] == "0-999"
    assert large - small == len("1000") - len("10") + len("0-999") - len("0-9")
    assert max(sizes.values()) < 30 * 1024  # Batch's limit on a SubmitJob request


VARIABLES_DAG = """
from airflow.sdk import dag
from provider import Environment, flow_task

ENV = {f"VAR_{i:02d}": "x" * (100 - len(f"VAR_{i:02d}")) for i in range(40)}


@dag(schedule=None)
def many_variables():
    @flow_task(compute="batch", environment=Environment(env=ENV))
    def configured() -> int:
        return 1

    configured()


many_variables()
"""


def test_render_a_batch_task_with_40_variables_of_100_characters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """The variables are the job definition's, with the bootstrap; the submission's overrides
    stay well under the 8,192 characters ECS takes (flowtask counts them as ECS does: the
    definition's command with the parameters substituted, the overrides' variables)."""
    from provider.translate.batch import overrides_length

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE", "flow-spot")
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", S3_STORE)
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "many_variables.py").write_text(VARIABLES_DAG)
    rendered = render_pod("many_variables", "configured", compute="batch", dags_folder=folder)
    definition, submit = rendered["register_job_definition"], rendered["submit_job"]
    static = [v["name"] for v in definition["containerProperties"]["environment"]]
    assert [name for name in static if name.startswith("VAR_")] == [
        f"VAR_{i:02d}" for i in range(40)
    ]
    assert "VAR_00" not in json.dumps(submit)
    size = overrides_length(definition, submit)
    length = len(json.dumps(definition, separators=(",", ":")))
    print(
        f"RENDER 40 variables of 100 characters: container overrides {size} characters (of "
        f"8192), job definition {length} bytes (of 24576), SubmitJob {len(json.dumps(submit))}"
    )
    assert size < 8192 / 4


def test_flowtask_env_prints_the_resolved_lock_for_the_tasks_target(tmp_path: Path):
    """Resolution only: the lock for the pod's platform (or the worker's), nothing stored."""
    from wheels import probe_wheels

    env = airflow_env(tmp_path, TEST_DAGS, **probe_wheels(tmp_path / "wheels"))
    runs = {
        compute: subprocess.run(
            [FLOWTASK, "env", "flow_environment", "probe", "--compute", compute],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for compute in ("kubernetes", "local")
    }
    for proc in runs.values():
        assert proc.returncode == 0, proc.stderr
        assert "ftprobe-1.0-py3-none-any.whl" in proc.stdout and 'name = "ftprobe"' in proc.stdout
        assert "# environment id: " in proc.stdout
    assert "compute=kubernetes, Python 3.11 on x86_64-manylinux_2_28" in runs["kubernetes"].stdout
    assert "compute=local, Python 3.11 on the worker" in runs["local"].stdout
    assert not (tmp_path / "flow_artifacts").exists()  # nothing was built or stored
    assert not (tmp_path / "flowtask").exists()

    proc = subprocess.run(
        [FLOWTASK, "env", "flow_targets", "train"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "has no Environment(pip=[...]) to resolve" in proc.stderr


def test_no_rendered_command_installs_anything(tmp_path: Path):
    env = airflow_env(
        tmp_path,
        TEST_DAGS,
        AIRFLOW__FLOW_TASK__BATCH_JOB_QUEUE="flow-spot",
        AIRFLOW__FLOW_TASK__ARTIFACT_STORE=S3_STORE,
    )
    for compute in ("kubernetes", "batch"):
        proc = subprocess.run(
            [FLOWTASK, "render", "flow_environment", "probe", "--compute", compute],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "pip install" not in proc.stdout and "--pip" not in proc.stdout
        assert "ftprobe" not in proc.stdout  # requirements travel built, never as a command
