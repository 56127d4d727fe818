"""Links to where a try ran, from the ``where`` of its manifest: the pod in the cluster's
console (``[flow_task] kubernetes_pod_url``), the AWS Batch job and its CloudWatch log stream in
the AWS console."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, quote_plus

POD, BATCH_JOB, BATCH_LOG = "Pod", "Batch job", "CloudWatch log"
BATCH_JOB_URL = "https://console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"
# As the amazon provider's CloudWatchEventsLink writes it (group and stream quote_plus'ed).
BATCH_LOG_URL = (
    "https://console.aws.amazon.com/cloudwatch/home?region={region}#logsV2:log-groups/"
    "log-group/{group}/log-events/{stream}"
)


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
            if where.get("log_group") and where.get("log_stream"):
                links[BATCH_LOG] = BATCH_LOG_URL.format(
                    region=quote(region),
                    group=quote_plus(str(where["log_group"])),
                    stream=quote_plus(str(where["log_stream"])),
                )
    return links
