"""The container bootstrap names a Python mismatch on any image, old Pythons included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from provider.store import Reference
from provider.translate import bootstrap_command
from provider.translate.command import BOOTSTRAP_SOURCE

BOOTSTRAP = Path(__file__).parent.parent / "provider" / "runtime" / "bootstrap.py"
CODE = Reference(uri="file:///s/data/ab/ab", sha256="ab" * 32, size=1, type="t", encoding="zip")


def test_old_pythons_can_run_the_bootstrap_up_to_its_version_check():
    """vermin reads what each construct and call needs; annotations stay unevaluated strings."""
    assert "\nfrom __future__ import annotations\n" in BOOTSTRAP_SOURCE
    vermin = str(Path(sys.executable).with_name("vermin"))
    proc = subprocess.run(
        [vermin, "--no-tips", "--violations", "-t=3.7-", str(BOOTSTRAP)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_version_is_checked_before_the_arguments_are_parsed():
    """Arguments a newer bootstrap passes may mean nothing to this one: the mismatch comes
    first, naming both versions, whatever follows it."""
    argv = [sys.executable, "-c", BOOTSTRAP_SOURCE, "--python", "3.8", "--from-the-future", "x"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert proc.returncode == 2, proc.stderr
    assert "the task was packaged with Python 3.8 on the Airflow worker" in proc.stderr
    assert f"this container runs Python {running}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_arguments_are_named_by_argparse():
    argv = bootstrap_command("file:///s", CODE, {"uri": "x"}, "k", python=sys.executable)
    del argv[argv.index("--code") : argv.index("--code") + 2]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "the following arguments are required: --code" in proc.stderr


@pytest.mark.parametrize("version", ["3.8", "3.9"])
def test_an_old_python_image_names_the_mismatch_on_the_cluster(tmp_path: Path, version: str):
    pytest.importorskip("kmock")
    from k8s_cluster import LocalCluster
    from k8s_images import local_python

    if local_python(version) is None:
        pytest.skip(f"no Python {version} on this machine to run python:{version}-slim")
    from kubernetes.client import models as k8s

    argv = bootstrap_command("file:///s", CODE, {"uri": "x"}, "k")
    container = k8s.V1Container(name="base", image=f"python:{version}-slim", command=argv)
    body = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="old"),
        spec=k8s.V1PodSpec(containers=[container], restart_policy="Never"),
    )
    with LocalCluster(tmp_path) as cluster:
        api = cluster.core_v1()
        api.create_namespaced_pod("default", body)
        deadline = time.monotonic() + 60
        while api.read_namespaced_pod("old", "default").status.phase != "Failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        logs = cluster.logs("old")
    worker = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"packaged with Python {worker} on the Airflow worker" in logs, logs
    assert f"this container runs Python {version}" in logs
