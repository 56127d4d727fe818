"""An XCom backend that keeps values in the artifact store and references in the XCom table."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk.bases.xcom import BaseXCom

from provider import config, settings
from provider.runtime.channel import small_json
from provider.store import ArtifactStore, xcom_manifest_key
from provider.xcom.references import holds_references, keeping_references, load_references


def _store() -> ArtifactStore:
    return config.open_artifact_store()


class FlowXCom(BaseXCom):
    """Every XCom value of every task goes to the artifact store; the row holds its reference.

    A value that already is a reference (a flow task's result) is not stored again. JSON values
    up to ``[flow_task] xcom_inline_max_bytes`` stay inline in the row, as with the default
    backend, so small values remain readable in the UI.
    """

    @staticmethod
    def serialize_value(
        value: Any,
        *,
        key: str | None = None,
        task_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        map_index: int | None = None,
    ) -> Any:
        if holds_references(value):
            return value
        limit = settings.value("xcom_inline_max_bytes")
        if limit and small_json(value, limit) and len(json.dumps(value)) <= limit:
            return BaseXCom.serialize_value(value)
        store = _store()
        ref = store.put(value).to_json()
        if isinstance(value, (list, tuple, dict)):
            ref["length"] = len(value)  # what .foreach over it needs, without loading it
        if dag_id and run_id and task_id and key:
            # The manifest is what keeps the blob alive for `flowtask gc`.
            manifest = xcom_manifest_key(
                dag_id, run_id, task_id, -1 if map_index is None else map_index, key
            )
            store.write_manifest(
                manifest,
                {
                    "dag_id": dag_id,
                    "run_id": run_id,
                    "task_id": task_id,
                    "map_index": map_index,
                    "key": key,
                    "value": ref,
                },
            )
        return ref

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        value = result.value
        if holds_references(value):
            return value if keeping_references() else load_references(value, _store())
        return BaseXCom.deserialize_value(result)
