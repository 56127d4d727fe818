"""Store keys: '/'-separated relative paths under the store root."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from provider.store.errors import StoreError


def check_key(key: str) -> str:
    """Refuse keys that could leave the root: absolute, '..', '.', empty segments, backslashes."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}: expected a relative 'a/b/c' path")
    return key


def blob_key(sha256: str) -> str:
    return f"data/{sha256[:2]}/{sha256}"


MAX_PART = 128  # bytes of one quoted key segment; file names stop at 255


def _part(value: object) -> str:
    """``value`` as one key segment: quoted, never '.' or '..', at most ``MAX_PART`` bytes.

    A longer one (Airflow accepts 250-character ids and 512-character XCom keys, any Unicode,
    which quoting can triple) keeps a readable start and ends in its SHA-256, so distinct
    values never share a segment.
    """
    text = quote(str(value), safe="-_.+=@:,")
    if len(text) > MAX_PART:
        digest = hashlib.sha256(str(value).encode()).hexdigest()[:32]
        start = text[: MAX_PART - len(digest) - 1]
        start = start[: start.rfind("%")] if "%" in start[-2:] else start  # no cut escape
        return f"{start}~{digest}"
    # A lone '.' or '..' would be a path segment, not a name.
    return text.replace(".", "%2E") if text in (".", "..") else text


def key_part(value: object) -> str:
    """``value`` as the one key segment the store names it by (see ``_part``)."""
    return _part(value)


def run_prefix(dag_id: str, run_id: str) -> str:
    """``runs/<dag>/<run>``: everything one run stored."""
    return f"runs/{_part(dag_id)}/{_part(run_id)}"


def index_prefix(dag_id: str) -> str:
    """``index/<dag>``: the DAG's run index (see ``provider.store.index``)."""
    return f"index/{_part(dag_id)}"


ENVIRONMENTS_PREFIX = "environments"


def environment_index_key(content_key: str) -> str:
    """``environments/<key>.json``: the store's index entry of an environment, by the hash of
    its requirements and target (see ``provider.core.environments.index``)."""
    return f"{ENVIRONMENTS_PREFIX}/{_part(content_key)}.json"


def run_manifest_key(dag_id: str, run_id: str) -> str:
    """``runs/<dag>/<run>/run.json``: namespace and tags of a run."""
    return f"runs/{_part(dag_id)}/{_part(run_id)}/run.json"


PAYLOAD_NAME = "payload.pickle"


def try_prefix(dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> str:
    """``runs/<dag>/<run>/<task>/<map_index>/<try>``: where one task try's objects live."""
    return "runs/" + "/".join(_part(p) for p in (dag_id, run_id, task_id, map_index, try_number))


def manifest_key(
    dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int, name: str = "result"
) -> str:
    """``runs/<dag>/<run>/<task>/<map_index>/<try>/<name>.json``: one task try's manifest."""
    prefix = try_prefix(dag_id, run_id, task_id, map_index, try_number)
    return f"{prefix}/{_part(name)}.json"


def payload_key(manifest: str) -> str:
    """The payload beside a try's result manifest: ``.../<try>/payload.pickle``.

    It holds the task's function and rendered arguments (secrets included), so it lives only
    as long as the try.
    """
    return manifest.rsplit("/", 1)[0] + "/" + PAYLOAD_NAME


def launch_manifest_key(manifest: str) -> str:
    """The launch manifest beside a try's result manifest: what the try uses while it runs."""
    return manifest.rsplit("/", 1)[0] + "/launch.json"


def xcom_manifest_key(dag_id: str, run_id: str, task_id: str, map_index: int, key: str) -> str:
    """``runs/<dag>/<run>/<task>/<map_index>/xcom/<key>.json``: a value FlowXCom stored."""
    parts = (dag_id, run_id, task_id, map_index)
    return "runs/" + "/".join(_part(p) for p in parts) + f"/xcom/{_part(key)}.json"
