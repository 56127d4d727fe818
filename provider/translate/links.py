"""Links to where a try ran, from the ``where`` its runtime recorded: the pod in the cluster's
console (``[flow_task] kubernetes_pod_url``), the AWS Batch job in the AWS console."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

POD, BATCH_JOB = "Pod", "Batch job"
BATCH_JOB_URL = "https://console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"


def console_links(where: dict[str, Any]) -> dict[str, str]:
    """``{link name: URL}`` for where a try ran, as far as the configuration allows."""
    from provider import settings

    links = {}
    if where.get("platform") == "kubernetes" and where.get("pod"):
        template = settings.value("kubernetes_pod_url")
        if template:
            links[POD] = template.format(
                pod=quote(str(where["pod"])), namespace=quote(str(where.get("namespace", "")))
            )
    if where.get("platform") == "batch" and where.get("batch_job_id"):
        region = where.get("region") or settings.value("aws_region")
        if region:
            links[BATCH_JOB] = BATCH_JOB_URL.format(
                region=quote(region), job_id=quote(str(where["batch_job_id"]))
            )
    return links
