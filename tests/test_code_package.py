"""The code package and the container bootstrap, run as the exact command a pod runs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from provider.compute import bootstrap_command, build_code_package
from provider.operators.targets.code import code_reference, store_code_package
from provider.runtime import Payload
from provider.store import ArtifactStore, open_store


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
    assert not [n for n in names if n.startswith(("provider/decorators", "provider/compute"))]
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
    store: ArtifactStore, function: Any, tmp_path: Path, *, pip: tuple[str, ...] = (), **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``function`` through the bootstrap, as a pod would: only the command line and env."""
    code = store_code_package(store, build_code_package())
    payload = store.put(
        Payload(function=function, args=(), kwargs={}, layout="value", identity={}), by_value=True
    )
    key = "runs/d/r/t/-1/1/result.json"
    argv = bootstrap_command(
        store.root_uri, code, payload.to_json(), key, pip=pip, python=sys.executable
    )
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


def _wheel(folder: Path, name: str, value: str) -> None:
    """A minimal pure-Python wheel, so pip installs from a local folder with no index."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_the_bootstrap_installs_the_tasks_pip_requirements(tmp_path: Path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "flowtask_probe", "installed")
    store = open_store((tmp_path / "store").as_uri())

    def probe() -> str:
        import flowtask_probe  # type: ignore[import-not-found]

        return flowtask_probe.VALUE

    proc, manifest = _run_in_container(
        store,
        probe,
        tmp_path,
        pip=("flowtask_probe==1.0",),
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheels),
    )
    assert proc.returncode == 0, proc.stderr
    assert store.get(manifest["result"]) == "installed"
    assert "installed ['flowtask_probe==1.0']" in proc.stdout


def test_a_store_the_container_cannot_see_is_named(tmp_path: Path):
    store = open_store((tmp_path / "store").as_uri())
    code = store_code_package(store, build_code_package())
    argv = bootstrap_command(
        (tmp_path / "elsewhere").as_uri(), code, {"uri": "x"}, "k", python=sys.executable
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is not in this container: a file:// artifact store only works where" in proc.stderr
