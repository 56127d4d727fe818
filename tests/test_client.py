"""``provider.client``: runs by namespace and tag, their tasks, tries and data, without Airflow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
from conftest import BUCKET, REPO, s3_client
from run_factory import Fails, make_run

from provider.client import (
    Flow,
    NoResult,
    UnknownDag,
    UnknownRun,
    UnknownTask,
    get_namespace,
    namespace,
    namespaces,
)
from provider.runtime import Failure
from provider.store import (
    IntegrityError,
    launch_manifest_key,
    manifest_key,
    open_store,
    xcom_manifest_key,
)


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return open_store(tmp_path.as_uri())
    moto = request.getfixturevalue("moto")
    return open_store(f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_client=s3_client(moto.endpoint))


@pytest.fixture(autouse=True)
def _as_alice(monkeypatch):
    """The current user is alice (``user:alice`` is the default namespace), and a namespace a
    test sets does not outlive it."""
    monkeypatch.setenv("FLOWTASK_USER", "alice")
    monkeypatch.setattr(namespaces, "_current", namespaces.CURRENT)
    assert get_namespace() == "user:alice"


def _train(store) -> None:
    """Four runs of 'train' in two namespaces, with tags, ends, mapped and failed tasks."""
    make_run(store, "train", "r1", tags=["nightly"], tasks={"fit": 1}, end="success")
    make_run(
        store,
        "train",
        "r2",
        tags=["nightly", "gpu"],
        tasks={"fit": [Fails("CUDA out of memory"), {"auc": 0.9}]},
        mapped={"score": [0.1, 0.2, Fails("bad shard")]},
        end="failed",
    )
    make_run(store, "train", "r3", namespace="team:ml", tags=["nightly"], tasks={"fit": 3})
    make_run(store, "train", "r4", tags=["adhoc"], tasks={"fit": Fails("boom")})


def test_runs_newest_first_in_the_current_namespace_by_every_tag(store):
    _train(store)
    flow = Flow("train", store)
    assert [r.run_id for r in flow.runs()] == ["r4", "r2", "r1"]  # user:alice by default
    assert [r.run_id for r in flow] == ["r4", "r2", "r1"]
    assert [r.run_id for r in flow.runs(tags=["nightly"])] == ["r2", "r1"]
    assert [r.run_id for r in flow.runs(tags=["nightly", "gpu"])] == ["r2"]
    assert [r.run_id for r in flow.runs(tags=["nightly"], namespace=None)] == ["r3", "r2", "r1"]
    assert [r.run_id for r in flow.runs(namespace="team:ml")] == ["r3"]
    assert flow.latest_run.run_id == "r4"
    assert flow.latest_successful_run.run_id == "r1"
    namespace("team:ml")
    assert [r.run_id for r in flow.runs()] == ["r3"]
    assert flow.latest_successful_run is None  # r3 never recorded an end
    namespace(None)
    assert len(list(flow.runs())) == 4
    with pytest.raises(TypeError, match=r"pass a list of tags, e.g. \['nightly'\]"):
        list(flow.runs(tags="nightly"))


def test_a_run_knows_its_namespace_tags_and_state(store):
    _train(store)
    flow = Flow("train", store)
    r1, r2, r3 = flow["r1"], flow["r2"], flow["r3"]
    assert (r2.namespace, r2.tags, r2.system_tags, r2.user_tags) == (
        "user:alice",
        ("nightly", "gpu"),
        ("nightly", "gpu"),
        (),
    )
    assert r1.created_at < r2.created_at < r3.created_at
    assert r1.created_at.tzinfo is not None
    assert (r1.finished, r1.successful, r1.status) == (True, True, "success")
    assert (r2.finished, r2.successful, r2.status) == (True, False, "failed")
    assert (r3.finished, r3.successful, r3.status) == (False, False, "running")
    assert r2.finished_at >= r2.created_at and r3.finished_at is None
    assert r2.task_ids == ["fit", "score"] and "fit" in r2 and "nope" not in r2
    assert [t.task_id for t in r2] == ["fit", "score"]


def test_a_run_whose_dag_does_not_record_its_end_has_status_unknown(store):
    make_run(store, "plain", "r1", tasks={"t": 1}, dag=None)
    run = Flow("plain", store)["r1"]
    assert (run.status, run.finished) == ("unknown", False)


def test_task_data_is_the_latest_successful_try_loaded_through_the_store(store):
    _train(store)
    r2 = Flow("train", store)["r2"]
    fit = r2["fit"]
    assert fit.data == {"auc": 0.9}
    assert [(t.number, t.status) for t in fit.tries] == [(1, "failed"), (2, "succeeded")]
    failed = fit.tries[0]
    assert failed.error == {"type": "ValueError", "message": "CUDA out of memory"}
    assert failed.failure == Failure("ValueError", "CUDA out of memory", "Traceback ...")
    assert failed.result is None
    with pytest.raises(NoResult, match="did not succeed"):
        _ = failed.data
    assert fit.tries[1].usage == {"seconds": 1.5, "function_seconds": 1.25, "peak_rss_mib": 64.0}
    ref = fit.reference
    assert ref["type"] == "builtins.dict" and ref["size"] > 0
    assert ref["uri"].startswith(store.root_uri)
    assert fit.successful and fit.latest_try.number == 2


def test_mapped_tasks_by_map_index(store):
    _train(store)
    score = Flow("train", store)["r2"]["score"]
    assert score.mapped and len(score) == 3 and score.map_index is None
    assert score[0].data == 0.1 and score[1].data == 0.2
    assert [t.map_index for t in score] == [0, 1, 2]
    assert [(t.map_index, t.status) for t in score.tries] == [
        (0, "succeeded"),
        (1, "succeeded"),
        (2, "failed"),
    ]
    with pytest.raises(NoResult, match=r"task 'score\[2\]' has no successful try; .*bad shard"):
        _ = score[2].data
    with pytest.raises(TypeError, match=r"task 'score' is mapped \(3 instances\): use task\[i\]"):
        _ = score.data
    with pytest.raises(UnknownTask, match=r"map index 7; it has map indexes 0\.\.2"):
        score[7]
    fit = Flow("train", store)["r2"]["fit"]
    assert not fit.mapped and list(fit) == [fit] and fit.map_index == -1
    with pytest.raises(UnknownTask, match="'fit' is not mapped"):
        fit[0]


def test_a_try_still_running_has_only_its_launch_manifest(store):
    identity = make_run(store, "d", "r1", tasks={"t": Fails("lost its node")})
    launch = launch_manifest_key(manifest_key("d", "r1", "t", -1, 2))
    store.write_manifest(
        launch, {**identity, "task_id": "t", "compute": "kubernetes", "launched_at": 5.0}
    )
    task = Flow("d", store)["r1"]["t"]
    running = task.tries[-1]
    assert (running.number, running.status, running.compute) == (2, "running", "kubernetes")
    assert running.started_at == 5.0 and running.usage == {}
    with pytest.raises(NoResult, match="try 2 running"):
        _ = task.data


def test_a_task_with_only_failed_tries_has_no_result(store):
    _train(store)
    with pytest.raises(NoResult, match="try 1 failed: ValueError: boom"):
        _ = Flow("train", store)["r4"]["fit"].data


def test_a_plain_task_value_stored_by_flowxcom_is_its_data(store):
    identity = make_run(store, "mixed", "r1", tasks={"flow": 1})
    ref = store.put({"rows": 10}).to_json()
    key = xcom_manifest_key("mixed", "r1", "settings", -1, "return_value")
    store.write_manifest(key, {**identity, "task_id": "settings", "value": ref})
    run = Flow("mixed", store)["r1"]
    assert run["settings"].data == {"rows": 10} and run["settings"].tries == []
    store.write_manifest(xcom_manifest_key("mixed", "r1", "other", -1, "error"), {"value": ref})
    with pytest.raises(NoResult, match="small JSON values stay in Airflow's XCom table"):
        _ = Flow("mixed", store)["r1"]["other"].data


def test_data_is_checked_on_load(tmp_path):
    store = open_store(tmp_path.as_uri())
    make_run(store, "d", "r1", tasks={"t": np.arange(1000)})
    task = Flow("d", store)["r1"]["t"]
    blob = tmp_path / "data" / task.reference["sha256"][:2] / task.reference["sha256"]
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="expected sha256"):
        _ = task.data


def test_unknown_dag_run_and_task_are_named(store):
    _train(store)
    with pytest.raises(UnknownDag, match=r"no runs of DAG 'nope' in .*; DAGs with runs: train"):
        Flow("nope", store)
    with pytest.raises(UnknownRun, match=r"DAG 'train' has no run 'r9'.*latest runs: r4, r3, r2"):
        Flow("train", store)["r9"]
    with pytest.raises(UnknownTask, match="stored nothing for task 'nope'; its tasks: fit, score"):
        Flow("train", store)["r2"]["nope"]


def test_tags_added_after_the_fact_stay_apart_from_the_original_ones(store):
    _train(store)
    flow = Flow("train", store)
    run, same_run = flow["r1"], flow["r1"]  # two sessions holding the same run
    run.add_tags("best", "nightly")  # 'nightly' is original already
    same_run.add_tags("reviewed")  # does not overwrite what the other added
    assert run.tags == ("nightly", "best")
    fresh = flow["r1"]
    assert (fresh.system_tags, fresh.user_tags) == (("nightly",), ("best", "reviewed"))
    assert [r.run_id for r in flow.runs(tags=["best", "reviewed"])] == ["r1"]
    fresh.remove_tags("best")
    assert flow["r1"].tags == ("nightly", "reviewed")
    with pytest.raises(ValueError, match=r"\['nightly'\] are original tags of run 'r1'"):
        fresh.remove_tags("nightly")
    with pytest.raises(ValueError, match="tag '' is invalid"):
        fresh.add_tags("")
    assert flow["r1"].tags == ("nightly", "reviewed")


def test_a_store_comes_from_the_environment_or_airflow_cfg_as_for_workers(tmp_path, monkeypatch):
    store = open_store(tmp_path.as_uri())
    make_run(store, "d", "r1", tasks={"t": 1})
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", tmp_path.as_uri())
    assert Flow("d").latest_run["t"].data == 1
    monkeypatch.delenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))  # then the provider's default
    with pytest.raises(Exception, match=r"home/flow_artifacts \(from the default, \$AIRFLOW_H"):
        Flow("d")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "airflow.cfg").write_text(
        f"[flow_task]\nartifact_store = {tmp_path.as_uri()}\n"
    )
    assert Flow("d").latest_run["t"].data == 1
    with pytest.raises(Exception, match="no artifact store at"):
        Flow("d", store=(tmp_path / "typo").as_uri())


NOTEBOOK = """
import sys
assert "airflow" not in sys.modules
from provider.client import Flow
assert "boto3" not in sys.modules, "imported before an s3 store is opened"
flow = Flow("train")
run = next(flow.runs(tags=["nightly", "gpu"]))
print(run.run_id, run.status, run["fit"].data, [t.data for t in run["score"] if t.successful])
print("boto3" in sys.modules)
banned = sorted(m for m in sys.modules if m.split(".")[0] == "airflow")
assert not banned, banned
"""


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_a_notebook_finds_results_without_airflow(kind, tmp_path, request):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS"))}
    if kind == "folder":
        store = open_store(tmp_path.as_uri())
        env["AIRFLOW__FLOW_TASK__ARTIFACT_STORE"] = tmp_path.as_uri()
    else:
        moto = request.getfixturevalue("moto")
        prefix = uuid.uuid4().hex
        store = open_store(f"s3://{BUCKET}/{prefix}", s3_client=s3_client(moto.endpoint))
        env.update(
            AIRFLOW__FLOW_TASK__ARTIFACT_STORE=f"s3://{BUCKET}/{prefix}",
            AWS_ENDPOINT_URL_S3=moto.endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            FLOWTASK_S3_ADDRESSING_STYLE="path",
        )
    _train(store)
    env["FLOWTASK_USER"] = "alice"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NOTEBOOK)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, opened_s3 = proc.stdout.splitlines()
    assert first == "r2 failed {'auc': 0.9} [0.1, 0.2]"
    assert opened_s3 == str(kind == "s3")
