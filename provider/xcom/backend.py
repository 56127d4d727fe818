"""An XCom backend that keeps values in the artifact store and references in the XCom table."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk.bases.xcom import BaseXCom

from provider import config
from provider.store import ArtifactStore
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
        limit = config.xcom_inline_max_bytes()
        if limit:
            try:
                inline = BaseXCom.serialize_value(value)
                if len(json.dumps(inline)) <= limit:
                    return inline
            except (TypeError, ValueError):  # serde cannot encode it: it goes to the store
                pass
        return _store().put(value).to_json()

    @staticmethod
    def deserialize_value(result: Any) -> Any:
        value = result.value
        if holds_references(value):
            return value if keeping_references() else load_references(value, _store())
        return BaseXCom.deserialize_value(result)
