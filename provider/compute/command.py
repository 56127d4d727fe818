"""The command a container (or a local subprocess) runs for one flow task try."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any


def worker_python() -> str:
    """The worker's Python as major.minor; the runtime refuses to unpickle under another one."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def runtime_command(
    store_uri: str,
    payload_ref: Mapping[str, Any],
    manifest_key: str,
    *,
    python: str = "python",
) -> list[str]:
    """Argv that runs a stored payload with ``provider.runtime``."""
    return [
        python,
        "-m",
        "provider.runtime",
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
