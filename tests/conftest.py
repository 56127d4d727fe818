"""Shared fixtures: an Airflow home with a migrated SQLite DB, and `airflow dags test` runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from s3_servers import MotoServer

BUCKET = "flow-artifacts"
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "dags_examples"
TEST_DAGS = Path(__file__).resolve().parent / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")


#: ``FLOWTASK_TEST_PRELOAD=numpy,pandas`` runs the DAG tests with warm runtimes preloading those
PRELOAD_OVERRIDE = "FLOWTASK_TEST_PRELOAD"


def airflow_env(home: Path, dags_folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__XCOM_BACKEND="provider.xcom.FlowXCom",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
    )
    if os.environ.get(PRELOAD_OVERRIDE):  # the suite with preloading forced (see README)
        env["AIRFLOW__FLOW_TASK__WARM_RUNTIME_PRELOAD"] = os.environ[PRELOAD_OVERRIDE]
    env.update(extra)
    return env


def s3_client(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server (or the fault proxy in front of it)."""
    import boto3
    from botocore.config import Config

    from provider.store.s3 import botocore_config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=botocore_config().merge(Config(s3={"addressing_style": "path"})),
    )


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """moto's S3 server on 127.0.0.1 in its own process, with the artifacts bucket made."""
    server = MotoServer()
    s3_client(server.endpoint).create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


def aws_connection(endpoint: str) -> str:
    """An Airflow AWS connection (as AIRFLOW_CONN_* JSON) pointing at ``endpoint``."""
    extra = {"endpoint_url": endpoint, "region_name": "us-east-1"}
    return json.dumps(
        {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    """A Kubernetes API (kmock) on 127.0.0.1 whose pods run as local subprocesses."""
    from k8s_cluster import LocalCluster

    with LocalCluster(tmp_path) as running:
        yield running


# Modules whose tests share one expensive module-scoped fixture (each starts a whole Airflow
# deployment): under xdist they all go to one worker, so it starts once. The
# `xdist_group` mark with `--dist loadgroup` would say this, but with pytest 9.2 loadgroup
# silently stops grouping (pytest-dev/pytest-xdist#1386).
ONE_WORKER_MODULES = frozenset({"test_deployment.py", "test_celery_deployment.py", "test_ui.py"})


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist load`` (what ``-n 2`` means), except that ONE_WORKER_MODULES stay together."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LoadScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).name in ONE_WORKER_MODULES else nodeid

    return LoadScheduling(config, log)


@pytest.fixture(scope="session")
def _batch_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from batch_cluster import LocalBatch

    with LocalBatch(tmp_path_factory.mktemp("batch")) as running:
        yield running


@pytest.fixture
def batch(_batch_session: Any) -> Iterator[Any]:
    """AWS Batch (moto on 127.0.0.1) whose jobs run as local subprocesses; one server per
    session, reset after each test (which fails if a job's process outlived the test)."""
    yield _batch_session
    _batch_session.reset()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow SQLite DB migrated once per session; each test home gets a copy."""
    home = tmp_path_factory.mktemp("airflow_template")
    subprocess.run(
        [AIRFLOW, "db", "migrate"],
        env=airflow_env(home, EXAMPLES),
        check=True,
        capture_output=True,
    )
    return home / "airflow.db"


@dataclass
class DagRunResult:
    returncode: int
    output: str
    home: Path

    @property
    def artifacts(self) -> Path:
        return self.home / "flow_artifacts"

    def manifests(self, dag_id: str) -> list[dict]:
        """Every task-try manifest the run wrote, in path order."""
        root = self.artifacts / "runs" / dag_id
        return [json.loads(p.read_text()) for p in sorted(root.rglob("result.json"))]


DagsTest = Callable[..., DagRunResult]


@pytest.fixture
def dags_test(migrated_db: Path, tmp_path: Path) -> Iterator[DagsTest]:
    """Run ``airflow dags test DAG_ID [-c CONF]`` in a fresh Airflow home (``home``: another
    one, a second worker's)."""

    def run(
        dag_id: str,
        conf: dict | None = None,
        dags_folder: Path = EXAMPLES,
        home: Path | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        **env: str,
    ) -> DagRunResult:
        """``preexec_fn`` runs in the child before ``airflow`` starts (e.g. to enter a cgroup)."""
        home = home or tmp_path / "airflow_home"
        home.mkdir(exist_ok=True)
        shutil.copy(migrated_db, home / "airflow.db")
        argv = [AIRFLOW, "dags", "test", dag_id]
        if conf is not None:
            argv += ["-c", json.dumps(conf)]
        proc = subprocess.run(
            argv,
            env=airflow_env(home, dags_folder, **env),
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=preexec_fn,
        )
        return DagRunResult(proc.returncode, proc.stdout + proc.stderr, home)

    yield run
