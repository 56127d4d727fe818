"""Pure translation of flow task specs into what each compute target runs."""

from provider.compute.batch import check_batch, job_definition_request, submit_job_request
from provider.compute.batch_status import describe_job_failure
from provider.compute.code_package import build_code_package
from provider.compute.command import bootstrap_command, runtime_command, worker_python
from provider.compute.kubernetes import describe_pod_failure, pod_operator_kwargs
from provider.compute.local import run_local

__all__ = [
    "bootstrap_command",
    "build_code_package",
    "check_batch",
    "describe_job_failure",
    "describe_pod_failure",
    "job_definition_request",
    "pod_operator_kwargs",
    "run_local",
    "runtime_command",
    "submit_job_request",
    "worker_python",
]
