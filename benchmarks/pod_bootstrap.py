"""What the container bootstrap costs: process start -> the user's function starting.

    .venv/bin/python benchmarks/pod_bootstrap.py [--repeat 7]

Runs the exact command a pod runs (``python -c <bootstrap> ...``: version check, fetch and verify
the code package, put it on sys.path, load the payload) as a subprocess, against a file:// store
and against moto's S3 server on 127.0.0.1, and times it from ``Popen`` to the runtime's
``function_started_at``. The anchor, measured in the same run, is the local-compute command
(``python -m provider.runtime run``, flowtask installed, no code package), which is what the
bootstrap adds to. A bare ``python -c pass`` start is printed for scale. Medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3_servers import MotoServer

from provider.core.code import store_code_package
from provider.core.code_package import build_code_package
from provider.runtime import Payload
from provider.store import ArtifactStore, Reference, open_store
from provider.translate import bootstrap_command, runtime_command


def task() -> int:
    return 1


def start_to_function(store: ArtifactStore, argv_for: object, env: dict[str, str]) -> float:
    """Seconds from starting the process to the function starting, for one fresh payload."""
    payload = store.put(Payload(task, (), {}, "value", {"nonce": time.time_ns()}), by_value=True)
    key = f"runs/bench/{time.time_ns()}/result.json"
    argv = argv_for(store, payload.to_json(), key)  # type: ignore[operator]
    started = time.time()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return float(store.read_manifest(key)["function_started_at"]) - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    package = build_code_package()
    print(f"code package: {len(package)} bytes ({len(package) / 1024:.1f} KiB, zip of .py)")

    bare = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - started)
    print(f"python -c pass: {statistics.median(bare):.3f}s")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    server = MotoServer()
    try:
        import boto3

        boto3.session.Session().client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket="bench")
        s3_env = {
            **env,
            "AWS_ENDPOINT_URL_S3": server.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        with tempfile.TemporaryDirectory() as tmp:
            os.environ.update({k: v for k, v in s3_env.items() if k.startswith("AWS_")})
            stores = {
                "file://": (open_store(Path(tmp).as_uri()), env),
                "s3 (moto)": (open_store("s3://bench/pods"), s3_env),
            }
            for name, (store, run_env) in stores.items():
                code = store_code_package(store, package)

                def bootstrap(
                    store: ArtifactStore, payload: dict, key: str, code: Reference = code
                ) -> list[str]:
                    return bootstrap_command(
                        store.root_uri, code, payload, key, python=sys.executable
                    )

                def local(store: ArtifactStore, payload: dict, key: str) -> list[str]:
                    return runtime_command(store.root_uri, payload, key, python=sys.executable)

                samples: dict[str, list[float]] = {"bootstrap": [], "local": []}
                for _ in range(args.repeat):  # alternate, so drift hits both alike
                    samples["local"].append(start_to_function(store, local, run_env))
                    samples["bootstrap"].append(start_to_function(store, bootstrap, run_env))
                pod = statistics.median(samples["bootstrap"])
                anchor = statistics.median(samples["local"])
                print(
                    f"{name:10} start -> function: bootstrap {pod:.3f}s, local runtime "
                    f"{anchor:.3f}s (anchor) -> ratio {pod / anchor:.2f}x, "
                    f"+{pod - anchor:.3f}s"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
