"""The first thing a flow task's container runs: ``python3 -c <this file> ARGS``.

It needs nothing but Python (and boto3 for an ``s3://`` store, which it installs when the image
lacks it): it checks the Python version, fetches the content-addressed code package (the
flowtask runtime, cloudpickle and the DAG folder's modules), verifies its SHA-256, installs the
task's pip requirements, and hands over to ``provider.runtime``. It imports nothing from the
package it lives in, so its source can travel in the command line.

Any image's Python may run it, so it parses, and runs up to the version check, on Python 3.7 and
later (``tests/test_bootstrap_pythons.py`` checks this with vermin): the check comes first,
before the arguments are parsed, and names both versions.

Usage: ``--python X.Y --store URI --code KEY:SIZE [--pip REQ]... -- RUNTIME_ARGS...``, where
KEY is the package's blob key in the store, which ends in its SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from typing import NoReturn
from urllib.parse import unquote, urlparse


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"flowtask bootstrap: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def check_python(argv: list[str]) -> None:
    """Refuse to run under another Python than the worker's, naming both."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    if "--python" not in own or own.index("--python") + 1 >= len(own):
        return  # argparse names the missing flag
    wanted = own[own.index("--python") + 1]
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if wanted != running:
        fail(
            f"the task was packaged with Python {wanted} on the Airflow worker, but "
            f"this container runs Python {running}; use an image with Python {wanted}"
        )


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="flowtask bootstrap", allow_abbrev=False)
    parser.add_argument("--python", required=True, help="the worker's Python, X.Y")
    parser.add_argument("--store", required=True, help="the artifact store's URI")
    parser.add_argument("--code", required=True, help="the code package's KEY:SIZE")
    parser.add_argument("--pip", action="append", default=[], help="a requirement to install")
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def pip_install(requirements: list[str], target: str) -> None:
    started = time.time()
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    command += ["--no-warn-script-location", "--target", target, *requirements]
    if subprocess.call(command, stdout=sys.stderr) != 0:
        fail(f"pip could not install {requirements} (see its output above)")
    sys.path.insert(0, target)
    print(f"flowtask bootstrap: installed {requirements} in {time.time() - started:.1f}s")


def fetch(store: str, key: str) -> bytes:
    if store.startswith("file://"):
        path = os.path.join(unquote(urlparse(store).path), key)
        if not os.path.exists(path):
            fail(
                f"{path} is not in this container: a file:// artifact store only works where "
                "pods mount the same path; use an s3:// store ([flow_task] artifact_store)"
            )
        with open(path, "rb") as blob:
            return blob.read()
    if not store.startswith("s3://"):
        fail(f"unsupported artifact store {store!r}: expected file:// or s3://")
    import boto3
    from botocore.config import Config

    bucket, _, prefix = store[len("s3://") :].partition("/")
    config = Config(retries={"mode": "standard", "max_attempts": 10})
    client = boto3.session.Session().client("s3", config=config)
    key = f"{prefix.strip('/')}/{key}".lstrip("/")
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def main(argv: list[str]) -> int:
    started = time.time()
    check_python(argv)
    options, runtime_args = parse(argv)
    work = tempfile.mkdtemp(prefix="flowtask-")
    store, requirements = options.store, list(options.pip)
    if store.startswith("s3://"):
        try:
            import boto3  # noqa: F401
        except ImportError:
            print(
                "flowtask bootstrap: the image has no boto3; installing it (use an image with it)"
            )
            requirements.append("boto3")
    if requirements:
        pip_install(requirements, os.path.join(work, "site"))
    key, size = options.code.rsplit(":", 1)
    sha256 = key.rpartition("/")[2]
    blob = fetch(store, key)
    if len(blob) != int(size) or hashlib.sha256(blob).hexdigest() != sha256:
        fail(f"code package {sha256} is damaged: {len(blob)} bytes, expected {size}")
    package = os.path.join(work, "code.zip")
    with open(package, "wb") as out:
        out.write(blob)
    sys.path.insert(0, package)
    os.environ["FLOWTASK_BOOTSTRAP_SECONDS"] = f"{time.time() - started:.6f}"
    from provider.runtime.__main__ import main as run

    return run(runtime_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
