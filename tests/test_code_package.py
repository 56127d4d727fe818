"""The code package and the container bootstrap, run as the exact command a pod runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from provider.core.code import code_reference, store_code_package
from provider.core.code_package import build_code_package
from provider.runtime import Payload
from provider.store import ArtifactStore, open_store
from provider.translate import bootstrap_command


def _names(package: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(package)).namelist()


def test_the_package_is_reproducible_and_holds_only_what_a_container_needs():
    package = build_code_package()
    assert package == build_code_package()
    names = _names(package)
    for needed in (
        "provider/__init__.py",
        "provider/runtime/__main__.py",
        "provider/store/s3.py",
        "provider/specs/task.py",
        "cloudpickle/__init__.py",
    ):
        assert needed in names
    assert not [n for n in names if n.startswith(("provider/operators", "provider/xcom"))]
    assert not [n for n in names if n.startswith(("provider/decorators", "provider/translate"))]
    assert len(package) < 200_000


def test_every_module_of_the_dag_folder_goes_in_under_its_import_name(tmp_path: Path):
    helpers = tmp_path / "ft_helpers"
    (helpers / "__pycache__").mkdir(parents=True)
    (helpers / "__init__.py").write_text("")
    (helpers / "shapes.py").write_text("SIDES = 4\n")  # imported lazily, inside a task
    (helpers / "__pycache__" / "shapes.cpython-311.py").write_text("")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "big.py").write_text("")
    (tmp_path / "my_dag.py").write_text("x = 1\n")

    package = build_code_package(tmp_path)
    names = set(_names(package))
    assert {"ft_helpers/__init__.py", "ft_helpers/shapes.py", "my_dag.py"} <= names
    assert not [n for n in names if "__pycache__" in n or ".venv" in n]
    assert package == build_code_package(tmp_path) != build_code_package()


def test_stored_once_per_content_and_render_computes_the_same_reference(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    package = build_code_package()
    first = store_code_package(store, package)
    assert store_code_package(store, package) == first
    assert code_reference(store.root_uri, package) == first
    assert (tmp_path / "store" / "data" / first.sha256[:2] / first.sha256).read_bytes() == package


def _run_in_container(
    store: ArtifactStore,
    function: Any,
    tmp_path: Path,
    *,
    environments: tuple[Any, ...] = (),
    env_cache: str | None = None,
    bare: bool = False,
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``function`` through the bootstrap, as a pod would: only the command line and env."""
    code = store_code_package(store, build_code_package())
    payload = store.put(
        Payload(function=function, args=(), kwargs={}, layout="value", identity={}), by_value=True
    )
    key = "runs/d/r/t/-1/1/result.json"
    argv = bootstrap_command(
        store.root_uri,
        code,
        payload.to_json(),
        key,
        environments=environments,
        env_cache=env_cache,
        python=sys.executable,
    )
    if bare:  # an image with Python and nothing else: no site-packages at all
        argv.insert(1, "-S")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    proc = subprocess.run(
        argv,
        env={**clean, "TMPDIR": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    manifest = store.read_manifest(key) if proc.returncode != 2 else {}
    return proc, manifest


def test_the_bootstrap_runs_the_task_from_the_code_package_without_airflow(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())

    def where() -> tuple[str, bool]:
        import provider

        return provider.__file__, any(name.startswith("airflow") for name in sys.modules)

    proc, manifest = _run_in_container(store, where, tmp_path)
    assert proc.returncode == 0, proc.stderr
    location, airflow_loaded = store.get(manifest["result"])
    assert location.endswith("code.zip/provider/__init__.py") and not airflow_loaded
    assert 0 < manifest["bootstrap_seconds"] < manifest["function_started_at"]


def test_the_bootstrap_refuses_another_python_naming_both_versions(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    code = store_code_package(store, build_code_package())
    argv = bootstrap_command(store.root_uri, code, {"uri": "x"}, "k", python=sys.executable)
    argv[argv.index("--python") + 1] = "3.99"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert proc.returncode == 2
    assert "packaged with Python 3.99 on the Airflow worker" in proc.stderr
    assert f"this container runs Python {running}" in proc.stderr


def test_a_damaged_code_package_is_refused_before_it_runs(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    code = store_code_package(store, build_code_package())
    blob = tmp_path / "store" / "data" / code.sha256[:2] / code.sha256
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"!")
    argv = bootstrap_command(store.root_uri, code, {"uri": "x"}, "k", python=sys.executable)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"code package {code.sha256} is damaged" in proc.stderr


def test_the_bootstrap_runs_the_task_in_its_environment_from_the_store(tmp_path: Path):
    """The environment's archive is fetched (hash checked), unpacked into the cache folder, and
    put in front of sys.path; the next container finds it there. No index, no pip."""
    from provider.core.environments.build import pack

    site = tmp_path / "site"
    (site / "flowtask_probe").mkdir(parents=True)
    (site / "flowtask_probe" / "__init__.py").write_text("VALUE = 'from the environment'\n")
    pack(site, tmp_path / "env.tar.gz")
    store = open_store((tmp_path / "store").as_uri())
    archive = store.put_file(tmp_path / "env.tar.gz", type_name="t", encoding="tar.gz")

    def probe() -> tuple[str, str]:
        import os

        import flowtask_probe  # type: ignore[import-not-found]

        return flowtask_probe.VALUE, os.environ["PYTHONPATH"]

    cache = tmp_path / "node-cache"
    runs = [
        _run_in_container(store, probe, tmp_path, environments=(archive,), env_cache=str(cache))
        for _ in range(2)
    ]
    for proc, manifest in runs:
        assert proc.returncode == 0, proc.stderr
        value, pythonpath = store.get(manifest["result"])
        assert value == "from the environment"
        assert pythonpath.split(":")[0] == str(cache / archive.sha256)  # for its subprocesses too
    assert [m["environments"][0]["from"] for _, m in runs] == ["store", "cache"]
    assert "pip" not in " ".join(bootstrap_command(store.root_uri, archive, {}, "k"))


def test_a_damaged_environment_is_refused_and_a_foreign_machine_named(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    code = store_code_package(store, build_code_package())
    archive = store.put_bytes(b"not a tar", type_name="t", encoding="tar.gz")
    blob = tmp_path / "store" / "data" / archive.sha256[:2] / archive.sha256
    blob.chmod(0o644)
    blob.write_bytes(b"not a taR")
    argv = bootstrap_command(
        store.root_uri, code, {"uri": "x"}, "k", environments=(archive,), python=sys.executable
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"environment {archive.sha256} is damaged" in proc.stderr
    argv = bootstrap_command(
        store.root_uri, code, {}, "k", environments=(archive,), arch="riscv", python=sys.executable
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert "the task's environment was built for riscv, but this machine is x86_64" in proc.stderr


def test_a_store_the_container_cannot_see_is_named(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    code = store_code_package(store, build_code_package())
    argv = bootstrap_command(
        (tmp_path / "elsewhere").as_uri(), code, {"uri": "x"}, "k", python=sys.executable
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not in this container: a file:// artifact store only works where" in proc.stderr


def test_an_image_with_python_alone_runs_the_task_from_s3(tmp_path: Path, moto: Any):
    """No site-packages at all (``python -S``): the bootstrap reads S3 with the standard
    library (SigV4), and the runtime gets boto3 and zstandard from the runtime environment
    (built from the worker's own files), with the package index unreachable."""
    import logging

    from conftest import BUCKET, s3_client

    from provider.core.environments.build import runtime_requirements
    from provider.core.environments.cache import EnvironmentCache
    from provider.core.environments.tasks import ensure_environment
    from provider.translate.environment import remote_target

    store = open_store(f"s3://{BUCKET}/bare", s3_client=s3_client(moto.endpoint))
    cache = EnvironmentCache(tmp_path / "cache", 2**30)
    runtime = ensure_environment(
        store,
        runtime_requirements(),
        remote_target("x86_64"),
        cache=cache,
        log=logging.getLogger("test"),
        runtime=True,
    )
    assert runtime.how == "built" and "boto3" in runtime.packages

    def probe() -> tuple[str, list[str]]:
        import boto3

        return boto3.__file__, [p for p in sys.path if "site-packages" in p]

    proc, manifest = _run_in_container(
        store,
        probe,
        tmp_path,
        environments=(runtime.archive,),
        bare=True,
        AWS_ENDPOINT_URL_S3=moto.endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        PIP_INDEX_URL="http://127.0.0.1:9/simple",
        UV_INDEX_URL="http://127.0.0.1:9/simple",
    )
    assert proc.returncode == 0, proc.stderr
    location, site_packages = store.get(manifest["result"])
    assert location.startswith(str(tmp_path)) and site_packages == []
    assert manifest["environments"][0]["sha256"] == runtime.archive.sha256


def test_the_bootstraps_signature_is_botocores():
    """SigV4 as the standard library computes it, against botocore's for the same request."""
    import datetime
    from types import SimpleNamespace
    from unittest import mock

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from provider.runtime import bootstrap

    now = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    url = "https://bucket.s3.eu-west-1.amazonaws.com/prefix/data/ab/ab%2Bc"
    creds = {"key": "AKID", "secret": "secret", "token": "session"}
    ours = bootstrap.sign("GET", url, "eu-west-1", creds, now)
    request = AWSRequest(method="GET", url=url)
    config = SimpleNamespace(s3={"payload_signing_enabled": False})  # UNSIGNED-PAYLOAD
    request.context["client_config"] = config
    signer = S3SigV4Auth(Credentials("AKID", "secret", "session"), "s3", "eu-west-1")
    with mock.patch("botocore.auth.get_current_datetime", return_value=now.replace(tzinfo=None)):
        signer.add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
