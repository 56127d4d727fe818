"""The test cluster's "registry": which interpreter runs an image, and what a failed pull says.

``python:X.Y[-variant]`` runs with a Python X.Y found on this machine (the worker's own
interpreter for the worker's version, else ``pythonX.Y`` on the PATH); any other image runs with
the worker's interpreter. An image in the cluster's ``missing_images``, or a ``python:X.Y`` with
no such interpreter here, fails to pull as a real kubelet reports it (containerd's wording).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

_PYTHON_IMAGE = re.compile(r"(?:[^/]+/)*python:(\d+)\.(\d+)(?:[.-][^@]*)?(?:@.+)?")


def worker_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def python_of(image: str) -> str | None:
    """The Python X.Y an official ``python:X.Y*`` image runs, or None for any other image."""
    match = _PYTHON_IMAGE.fullmatch(image)
    return f"{match[1]}.{match[2]}" if match else None


def interpreter(image: str) -> str | None:
    """The local interpreter that runs ``image``'s ``python``, or None if there is none."""
    version = python_of(image)
    if version is None or version == worker_version():
        return sys.executable
    return local_python(version)


@functools.cache
def local_python(version: str) -> str | None:
    """A ``pythonX.Y`` on the PATH that runs and is X.Y (a pyenv shim may be neither)."""
    found = shutil.which(f"python{version}")
    if found is None:
        return None
    check = "import sys; print('%d.%d' % sys.version_info[:2])"
    try:
        ran = subprocess.run([found, "-c", check], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found if ran.returncode == 0 and ran.stdout.strip() == version else None


def shims(root: Path, python: str) -> Path:
    """A folder whose ``python`` and ``python3`` run ``python`` (what the image's PATH holds)."""
    folder = root / ("bin-" + re.sub(r"[^A-Za-z0-9.]+", "-", python).strip("-"))
    if not folder.exists():
        folder.mkdir(parents=True)
        for name in ("python", "python3"):
            shim = folder / name
            shim.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
            shim.chmod(0o755)
    return folder


def reference(image: str) -> str:
    """The reference containerd resolves: ``nope:1`` -> ``docker.io/library/nope:1``."""
    first, slash, _ = image.partition("/")
    if not slash:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def pull_error(image: str) -> str:
    """containerd's error for an image the registry does not have."""
    ref = reference(image)
    return (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
        f'failed to resolve reference "{ref}": {ref}: not found'
    )
