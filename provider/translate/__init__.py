"""Pure translation of flow task specs into what each compute target runs."""

from provider.translate.batch import check_batch, job_definition_request, submit_job_request
from provider.translate.batch_status import describe_job_failure
from provider.translate.command import bootstrap_command, runtime_command, worker_python
from provider.translate.kubernetes import describe_pod_failure, pod_operator_kwargs

__all__ = [
    "bootstrap_command",
    "check_batch",
    "describe_job_failure",
    "describe_pod_failure",
    "job_definition_request",
    "pod_operator_kwargs",
    "runtime_command",
    "submit_job_request",
    "worker_python",
]
