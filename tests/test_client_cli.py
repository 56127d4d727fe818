"""``flowtask runs / show / get / tag``: tables for people, JSON for scripts, clear errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUCKET, s3_client
from run_factory import Fails, make_run

from provider.client import namespaces
from provider.client.cli import main
from provider.store import open_store

FLOWTASK = str(Path(sys.executable).parent / "flowtask")


@pytest.fixture
def store_uri(tmp_path, monkeypatch):
    """A folder store with runs of 'train', as the default store; the user is alice."""
    monkeypatch.setenv("FLOWTASK_USER", "alice")
    monkeypatch.setattr(namespaces, "_current", namespaces.CURRENT)
    store = open_store(tmp_path.as_uri())
    make_run(store, "train", "r1", tags=["nightly"], tasks={"fit": {"auc": 0.8}}, end="success")
    frame = pd.DataFrame({"x": np.arange(100), "y": np.arange(100) * 2.0})
    make_run(
        store,
        "train",
        "r2",
        tags=["nightly", "gpu"],
        tasks={"fit": [Fails("CUDA out of memory"), frame]},
        mapped={"score": [0.25, 0.5]},
        end="failed",
    )
    make_run(store, "train", "r3", namespace="team:ml", tags=["exp-7"], tasks={"fit": 3})
    monkeypatch.setenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", tmp_path.as_uri())
    return tmp_path.as_uri()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_runs_prints_a_table_of_the_current_namespace(store_uri, capsys):
    code, out, _ = _run(capsys, "runs", "train")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "ID", "NAMESPACE", "TAGS", "STARTED", "STATUS"]
    assert [row.split()[0] for row in rows] == ["r2", "r1"]
    assert rows[0].split()[1:4] == ["user:alice", "nightly,", "gpu"]
    assert rows[0].split()[-1] == "failed" and rows[1].split()[-1] == "success"
    assert header.index("STATUS") == rows[0].index("failed")  # columns line up
    code, out, _ = _run(capsys, "runs", "train", "--all-namespaces", "--tag", "exp-7")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["r3"]
    assert out.splitlines()[1].split()[-1] == "running"


def test_runs_says_where_the_runs_are_when_a_namespace_has_none(store_uri, capsys):
    code, out, err = _run(capsys, "runs", "train", "--tag", "exp-7")
    assert (code, out) == (0, "")
    assert err == (
        "no runs of train tagged exp-7 in namespace 'user:alice'\n"
        "runs tagged exp-7 are in: team:ml (--namespace NS or --all-namespaces)\n"
    )
    # --json says the same, in a field.
    code, out, _ = _run(capsys, "runs", "train", "--tag", "exp-7", "--json")
    listing = json.loads(out)
    assert listing == {"namespace": "user:alice", "runs": [], "hint": err.rstrip("\n")}
    # A namespace as typed into a form or a shell, with spaces around it, is the same one.
    code, out, _ = _run(capsys, "runs", "train", "--namespace", " team:ml ", "--json")
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["r3"]


def test_runs_json_is_for_scripts(store_uri):
    proc = subprocess.run(
        [FLOWTASK, "runs", "train", "--namespace", "user:alice", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert (listing["namespace"], listing["hint"]) == ("user:alice", None)
    runs = listing["runs"]
    assert [r["run_id"] for r in runs] == ["r2", "r1"]
    assert runs[0] | {"created_at": None} == {
        "run_id": "r2",
        "namespace": "user:alice",
        "tags": ["nightly", "gpu"],
        "system_tags": ["nightly", "gpu"],
        "user_tags": [],
        "created_at": None,
        "status": "failed",
        "finished": True,
        "successful": False,
        "finished_at": runs[0]["finished_at"],
    }
    assert runs[0]["created_at"].endswith("+00:00")


def test_tag_add_and_remove(store_uri, capsys):
    code, out, _ = _run(capsys, "tag", "add", "train", "r1", "best", "reviewed")
    assert (code, out) == (0, "r1: nightly, best, reviewed\n")
    code, out, _ = _run(capsys, "tag", "remove", "train", "r1", "reviewed")
    assert (code, out) == (0, "r1: nightly, best\n")
    code, out, _ = _run(capsys, "runs", "train", "--tag", "best", "--json")
    assert [(r["run_id"], r["user_tags"]) for r in json.loads(out)["runs"]] == [("r1", ["best"])]
    code, _, err = _run(capsys, "tag", "remove", "train", "r1", "nightly")
    assert code == 2
    assert "original tags of run 'r1' (from its trigger) and stay recorded" in err


def test_show_lists_tasks_tries_result_types_and_sizes(store_uri, capsys):
    code, out, _ = _run(capsys, "show", "train", "r2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["run", "r2", "(DAG", "train)"]
    assert lines[2].split() == ["tags", "nightly,", "gpu"]
    assert lines[4].split()[:2] == ["status", "failed"]
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == [
        "TASK",
        "MAP",
        "TRY",
        "STATUS",
        "SECONDS",
        "PEAK",
        "RSS",
        "SIZE",
        "RESULT",
    ]
    rows = [" ".join(row.split()) for row in table[1:]]
    assert rows == [
        "fit - 1 failed 1.50 64 MiB - ValueError: CUDA out of memory",
        f"fit - 2 succeeded 1.50 64 MiB {rows[1].split()[7]} KiB DataFrame (100, 2)",
        "score 0 1 succeeded 1.50 64 MiB 41 B float: 0.25",
        "score 1 1 succeeded 1.50 64 MiB 41 B float: 0.5",
    ]  # types and sizes from the manifests: nothing loaded
    code, out, _ = _run(capsys, "show", "train", "r2", "fit")
    assert "score" not in out
    assert out.rstrip().endswith("fit try 1: ValueError: CUDA out of memory")


def test_get_prints_a_value_or_a_dataframes_head_or_writes_a_pickle(store_uri, capsys, tmp_path):
    code, out, _ = _run(capsys, "get", "train", "r1", "fit")
    assert (code, out) == (0, "{'auc': 0.8}\n")
    code, out, _ = _run(capsys, "get", "train", "r2", "fit")
    assert out.splitlines()[0] == "DataFrame (100, 2)"
    assert len(out.splitlines()) == 1 + 6  # the head: a header line and five rows
    code, out, _ = _run(capsys, "get", "train", "r2", "score", "--map-index", "1")
    assert out == "0.5\n"
    target = tmp_path / "fit.pickle"
    code, out, err = _run(capsys, "get", "train", "r2", "fit", "-o", str(target))
    assert (code, out) == (0, "")
    assert f"wrote DataFrame to {target}" in err
    frame = pickle.loads(target.read_bytes())
    assert frame.shape == (100, 2) and frame["y"].iloc[-1] == 198.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["runs", "nope"], "flowtask runs: no runs of DAG 'nope' in file://"),
        (["show", "train", "r9"], "flowtask show: DAG 'train' has no run 'r9' in the store"),
        (["get", "train", "r2", "zz"], "stored nothing for task 'zz'; its tasks: fit, score"),
        (["get", "train", "r2", "score"], "'score' is mapped (2 instances): pass --map-index I"),
        (["get", "train", "r2", "score", "--map-index", "5"], "nothing for map index 5"),
        (["get", "train", "r3", "fit", "--map-index", "0"], "task 'fit' is not mapped"),
        (["tag", "add", "train", "r1", " "], "tag ' ' is invalid"),
    ],
)
def test_errors_are_one_line_and_exit_2(store_uri, capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert (code, out) == (2, "")
    assert message in err and len(err.splitlines()) == 1, err


def test_the_store_option_and_s3(moto, capsys, monkeypatch, tmp_path):
    prefix = uuid.uuid4().hex
    store = open_store(f"s3://{BUCKET}/{prefix}", s3_client=s3_client(moto.endpoint))
    make_run(store, "train", "r1", namespace="user:bob", tasks={"fit": 42})
    monkeypatch.delenv("AIRFLOW__FLOW_TASK__ARTIFACT_STORE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FLOWTASK_S3_ADDRESSING_STYLE", "path")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    code, out, err = _run(capsys, "runs", "train")  # no --store: the provider's default
    assert (code, out) == (2, "")
    assert f"no artifact store at {tmp_path / 'home' / 'flow_artifacts'}" in err
    assert "from the default, $AIRFLOW_HOME/flow_artifacts; pass --store" in err
    uri = f"s3://{BUCKET}/{prefix}"
    out = _run(capsys, "runs", "train", "--namespace", "user:bob", "--store", uri)[1]
    assert out.splitlines()[1].split()[:2] == ["r1", "user:bob"]
    assert _run(capsys, "get", "train", "r1", "fit", "--store", uri)[1] == "42\n"


def _flowtask(*argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The installed ``flowtask`` command with ``env`` and no Airflow or flowtask settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLOWTASK"))}
    return subprocess.run(
        [FLOWTASK, *argv],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=cwd,
        timeout=60,
    )


def test_without_store_the_cli_opens_the_store_the_provider_uses(tmp_path):
    """``[flow_task] artifact_store`` in airflow.cfg, else ``$AIRFLOW_HOME/flow_artifacts``,
    as the provider reads them; a relative ``--store`` is a path from the working directory."""
    home = tmp_path / "home"
    make_run(open_store((home / "flow_artifacts").as_uri()), "train", "r1", tasks={"fit": 1})
    elsewhere = tmp_path / "elsewhere"
    make_run(open_store(elsewhere.as_uri()), "train", "r9", tasks={"fit": 9})
    as_alice = {"AIRFLOW_HOME": str(home), "FLOWTASK_USER": "alice"}

    proc = _flowtask("get", "train", "r1", "fit", **as_alice)
    assert (proc.returncode, proc.stdout) == (0, "1\n"), proc.stderr
    (home / "airflow.cfg").write_text(
        f"[core]\nload_examples = True\n\n[flow_task]\nartifact_store = {elsewhere.as_uri()}\n"
    )
    proc = _flowtask("runs", "train", **as_alice)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == ["r9"]
    # The environment variable wins over airflow.cfg, as in Airflow.
    env = {**as_alice, "AIRFLOW__FLOW_TASK__ARTIFACT_STORE": (home / "flow_artifacts").as_uri()}
    proc = _flowtask("get", "train", "r1", "fit", **env)
    assert (proc.returncode, proc.stdout) == (0, "1\n"), proc.stderr
    proc = _flowtask("get", "train", "r9", "fit", "--store", "elsewhere", cwd=tmp_path, **as_alice)
    assert (proc.returncode, proc.stdout) == (0, "9\n"), proc.stderr
    proc = _flowtask("gc", "--store", "elsewhere", cwd=tmp_path, **as_alice)
    assert proc.returncode == 0 and "would delete" in proc.stdout, proc.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """``flowtask get ... | head``: no BrokenPipeError traceback, the shell's SIGPIPE code."""
    store = open_store(tmp_path.as_uri())
    make_run(store, "train", "r1", tasks={"fit": {"rows": list(range(200_000))}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FLOWTASK"))}
    proc = subprocess.Popen(
        [FLOWTASK, "get", "train", "r1", "fit", "--store", tmp_path.as_uri()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b"{'rows': ["  # what `head -c 10` reads, then it leaves
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == "", err
