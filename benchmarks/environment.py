"""What an ``Environment(pip=[...])`` adds to a pod's start, and what its caches save.

    .venv/bin/python benchmarks/environment.py [--repeat 5] [--modules 300]

Every case runs the exact command a pod runs (``python -c <bootstrap> ...``) as a subprocess
against moto's S3 on 127.0.0.1, and times it from starting the process to the runtime's
``function_started_at`` (the worker's own work is added where the case includes it):

- anchor: the same pod start without an environment;
- first: the worker resolves, builds, packs and stores a new environment (uv, from a local
  folder of wheels: no network), then the pod fetches and unpacks it;
- from the store: the worker finds it in its index and cache; the pod fetches it (hash checked)
  and unpacks it into an empty cache folder (a fresh emptyDir);
- from the node cache: another pod on the same node finds it unpacked
  (``[flow_task] kubernetes_env_cache_path``).

The environment is one generated pure-Python package of ``--modules`` modules of ~8 KiB each
(a package of a few MiB, as a small library is). Medians; ratios against the anchor of the same
run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3_servers import MotoServer
from wheels import local_index

from provider.core.code import store_code_package
from provider.core.code_package import build_code_package
from provider.core.environments.cache import EnvironmentCache
from provider.core.environments.tasks import ensure_environment
from provider.runtime import Payload
from provider.store import ArtifactStore, Reference, open_store
from provider.translate import bootstrap_command
from provider.translate.environment import remote_target

LOG = logging.getLogger("benchmark")


def plain() -> int:
    return 1


def task() -> int:
    import ftbench  # type: ignore[import-not-found]

    return len(ftbench.__name__)


def bench_wheel(folder: Path, version: str, modules: int) -> None:
    """``ftbench`` ``version``: ``modules`` modules of ~8 KiB of code each."""
    dist = f"ftbench-{version}.dist-info"
    body = "".join(f"def f{i}(x):\n    return x * {i} + len('{'y' * 80}')\n\n" for i in range(64))
    files = {"ftbench/__init__.py": "VALUE = 1\n"}
    # Code compresses about 3:1: each module also holds 4 KiB of random hex (2:1) of its own.
    files.update(
        {
            f"ftbench/m{i:04d}.py": body + f"DATA = '{os.urandom(2048).hex()}'\n"
            for i in range(modules)
        }
    )
    files[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: ftbench\nVersion: {version}\n"
    files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\n"
    files[f"{dist}/WHEEL"] += "Tag: py3-none-any\n"
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"ftbench-{version}-py3-none-any.whl", "w") as wheel:
        for member, text in files.items():
            wheel.writestr(member, text, compress_type=zipfile.ZIP_DEFLATED)


def pod_start(
    store: ArtifactStore,
    code: Reference,
    env: dict[str, str],
    archives: list[Reference],
    node_cache: Path,
) -> float:
    """Seconds from starting the pod's command to the function starting."""
    function = task if archives else plain
    payload = store.put(
        Payload(function, (), {}, "value", {"nonce": time.time_ns()}), by_value=True
    )
    key = f"runs/bench/{time.time_ns()}/result.json"
    argv = bootstrap_command(
        store.root_uri,
        code,
        payload.to_json(),
        key,
        environments=archives,
        arch="x86_64" if archives else None,
        env_cache=str(node_cache),
        python=sys.executable,
    )
    started = time.time()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return float(store.read_manifest(key)["function_started_at"]) - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modules", type=int, default=300)
    args = parser.parse_args()
    server = MotoServer()
    tmp = Path(tempfile.mkdtemp(prefix="flowtask-bench-env-"))
    try:
        aws = {
            "AWS_ENDPOINT_URL_S3": server.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        os.environ.update(aws)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
        import boto3

        boto3.session.Session().client("s3", endpoint_url=server.endpoint).create_bucket(
            Bucket="bench"
        )
        store = open_store("s3://bench/env")
        code = store_code_package(store, build_code_package())
        wheels = tmp / "wheels"
        wheels.mkdir()
        os.environ.update(local_index(wheels))
        target = remote_target("x86_64")
        samples: dict[str, list[float]] = {"anchor": [], "first": [], "store": [], "node": []}
        worker: dict[str, list[float]] = {"first": [], "store": []}
        size = 0
        for round_ in range(args.repeat):
            bench_wheel(wheels, f"1.0.{round_}", args.modules)  # a new environment each round
            requirement = (f"ftbench==1.0.{round_}",)
            cache = EnvironmentCache(tmp / "worker-cache", 2**34)
            nodes = [tmp / f"node-{round_}-{n}" for n in range(2)]

            samples["anchor"].append(pod_start(store, code, env, [], nodes[0]))

            built = ensure_environment(store, requirement, target, cache=cache, log=LOG)
            assert built.how == "built" and built.archive is not None
            size = built.archive.size
            worker["first"].append(built.seconds)
            pod = pod_start(store, code, env, [built.archive], nodes[0])
            samples["first"].append(built.seconds + pod)

            again = ensure_environment(store, requirement, target, cache=cache, log=LOG)
            assert again.how == "cached" and again.archive == built.archive
            worker["store"].append(again.seconds)
            pod = pod_start(store, code, env, [built.archive], nodes[1])  # an empty cache
            samples["store"].append(again.seconds + pod)

            samples["node"].append(pod_start(store, code, env, [built.archive], nodes[1]))
            for hold in (built.hold, again.hold):
                if hold is not None:
                    os.close(hold)
        anchor = statistics.median(samples["anchor"])
        print(
            f"environment: ftbench, {args.modules} modules, archive {size / 2**20:.1f} MiB; "
            f"medians of {args.repeat}"
        )
        print(f"pod start without an environment: {anchor:.3f}s (anchor)")
        labels = {
            "first": "first (worker builds and stores, pod fetches)",
            "store": "from the store (worker cached, pod fetches)",
            "node": "from the node cache",
        }
        for name, label in labels.items():
            median = statistics.median(samples[name])
            extra = (
                f", of which worker {statistics.median(worker[name]):.3f}s"
                if name in worker
                else ""
            )
            print(f"{label}: {median:.3f}s -> {median / anchor:.2f}x the anchor{extra}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
