"""Links on a flow task in Airflow's UI to where its try ran: the pod, the AWS Batch job.

Airflow asks a task's links at the end of each try, on the worker, and keeps the answers
(XCom ``_link_<class>``) for the UI. Each link reads where the try ran from the try's result
manifest (``where``, recorded by the runtime), so every target gets them with no code of its
own; a try that ran elsewhere gets no link (an empty one, which the UI shows disabled).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.sdk import BaseOperatorLink

from provider.translate.links import BATCH_JOB, BATCH_LOG, POD, console_links

# The ``where`` of the tries this process settled, by result manifest key: the links read it
# here instead of reading the manifest back from the store once per link.
SETTLED: dict[str, dict[str, Any]] = {}


def where_of(ti_key: Any) -> dict[str, Any]:
    """The ``where`` of the try ``ti_key`` names, from its result manifest; {} if none."""
    from provider.config import open_artifact_store
    from provider.store import MissingArtifact, manifest_key
    from provider.store.errors import BadManifest

    key = manifest_key(
        ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index, ti_key.try_number
    )
    if key in SETTLED:
        return SETTLED[key]
    try:
        manifest = open_artifact_store().read_manifest(key)
    except (MissingArtifact, BadManifest):
        return {}
    where = manifest.get("where")
    return where if isinstance(where, dict) else {}


class _WhereLink(BaseOperatorLink):
    name: ClassVar[str]

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return console_links(where_of(ti_key)).get(self.name, "")


class PodLink(_WhereLink):
    """The try's pod in the cluster's console (``[flow_task] kubernetes_pod_url``)."""

    name = POD


class BatchJobLink(_WhereLink):
    """The try's AWS Batch job in the AWS console."""

    name = BATCH_JOB


class BatchLogLink(_WhereLink):
    """The try's Batch job's CloudWatch log stream in the AWS console (its last attempt's)."""

    name = BATCH_LOG
