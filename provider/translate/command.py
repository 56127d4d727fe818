"""The command a container (or a local subprocess) runs for one flow task try."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from provider.store import Reference
from provider.store.keys import blob_key

BOOTSTRAP_SOURCE = (Path(__file__).parent.parent / "runtime" / "bootstrap.py").read_text()


#: Where a Batch job definition keeps the compressed bootstrap (its command reads it there).
BOOTSTRAP_ENV = "FLOWTASK_BOOTSTRAP"


@lru_cache(maxsize=1)
def packed_bootstrap(source: str = BOOTSTRAP_SOURCE) -> str:
    """The bootstrap without docstrings and annotations, compressed, in base64."""
    import ast
    import base64
    import zlib

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        value = first.value if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):  # a docstring
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined, index]
        if isinstance(node, ast.FunctionDef):
            node.returns = None
        elif isinstance(node, ast.arg):
            node.annotation = None
    return base64.b64encode(zlib.compress(ast.unparse(tree).encode(), 9)).decode()


def bootstrap_program() -> str:
    """The bootstrap as a ``-c`` program, compressed (a pod's command carries it whole)."""
    return (
        "# flowtask bootstrap (provider/runtime/bootstrap.py, compressed)\n"
        f"import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed_bootstrap()}')))"
    )


def bootstrap_launcher() -> str:
    """A ``-c`` program that runs the bootstrap kept in ``$FLOWTASK_BOOTSTRAP`` (a Batch job
    definition's variable: ECS takes 8,192 characters of overrides per job, the command
    included), and removes it from the environment the task sees."""
    return (
        f"# flowtask bootstrap (provider/runtime/bootstrap.py, compressed in ${BOOTSTRAP_ENV})\n"
        f"import base64,os,zlib;exec(zlib.decompress(base64.b64decode(os.environ.pop("
        f"'{BOOTSTRAP_ENV}'))))"
    )


def store_out_of_reach(store_uri: str) -> str | None:
    """Why a container may not reach the store at ``store_uri``; None for an S3 store."""
    if store_uri.startswith("s3://"):
        return None
    return (
        f"the artifact store {store_uri} is a folder of the worker: a container reads it only "
        "where it mounts the same path; set [flow_task] artifact_store to an s3:// URI"
    )


def worker_python() -> str:
    """The worker's Python as major.minor; the runtime refuses to unpickle under another one."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_args(store_uri: str, payload_ref: Mapping[str, Any], manifest_key: str) -> list[str]:
    """Arguments of ``python -m provider.runtime`` that run a stored payload."""
    return [
        "run",
        "--store",
        store_uri,
        "--payload",
        json.dumps(dict(payload_ref), sort_keys=True, separators=(",", ":")),
        "--manifest",
        manifest_key,
        "--python",
        worker_python(),
    ]


def runtime_command(
    store_uri: str,
    payload_ref: Mapping[str, Any],
    manifest_key: str,
    *,
    python: str = "python",
    code_path: str | None = None,
) -> list[str]:
    """Argv that runs a stored payload with ``provider.runtime`` where flowtask is installed.

    ``code_path`` is a local copy of the code package, for the DAG folder's modules.
    """
    argv = [python, "-m", "provider.runtime", *runtime_args(store_uri, payload_ref, manifest_key)]
    return [*argv, "--code", code_path] if code_path else argv


def bootstrap_command(
    store_uri: str,
    code_package: Reference,
    payload_ref: Mapping[str, Any],
    manifest_key: str,
    *,
    environments: Sequence[Reference] = (),
    arch: str | None = None,
    env_cache: str | None = None,
    python: str = "python3",
    foreach: Sequence[str] = (),
    program: str | None = None,
) -> list[str]:
    """Argv for a container: fetch the code package and the ``environments`` (archives, the
    first in front), then run the payload.

    ``arch`` is the machine the environments were built for (checked first); ``env_cache`` where
    they are unpacked (else a temp folder). With ``foreach`` (``--chunk N``, or ``--chunk-env
    VAR --chunks LIST``) it runs those chunks of a ``.foreach`` payload instead. ``python3`` is
    on the PATH of the official Python images and of distribution images alike. ``program`` is
    the ``-c`` program (:func:`bootstrap_launcher` for a Batch job), else the bootstrap itself.
    """
    program = program or bootstrap_program()
    argv = [python, "-c", program, "--python", worker_python(), "--store", store_uri]
    argv += ["--code", f"{blob_key(code_package.sha256)}:{code_package.size}"]
    for archive in environments:
        argv += ["--env", f"{blob_key(archive.sha256)}:{archive.size}"]
    if environments and arch:
        argv += ["--arch", arch]
    if environments and env_cache:
        argv += ["--env-cache", env_cache]
    if foreach:
        return [*argv, "--", *foreach_args(store_uri, payload_ref, foreach)]
    return [*argv, "--", *runtime_args(store_uri, payload_ref, manifest_key)]


def foreach_args(store_uri: str, payload_ref: Mapping[str, Any], mode: Sequence[str]) -> list[str]:
    """Arguments of ``python -m provider.runtime`` that run chunks of a ``.foreach`` payload."""
    payload = json.dumps(dict(payload_ref), sort_keys=True, separators=(",", ":"))
    argv = ["foreach", "--store", store_uri, "--payload", payload, "--python", worker_python()]
    return [*argv, *mode]


def foreach_command(
    store_uri: str,
    payload_ref: Mapping[str, Any],
    mode: Sequence[str],
    *,
    python: str = "python",
    code_path: str | None = None,
) -> list[str]:
    """Argv that runs chunks of a ``.foreach`` payload where flowtask is installed; ``mode``
    says which (``--serve-fd N``, ``--chunk N`` or ``--chunk-env VAR``)."""
    argv = [python, "-m", "provider.runtime", *foreach_args(store_uri, payload_ref, ())]
    if code_path:
        argv += ["--code", code_path]
    return [*argv, *mode]
