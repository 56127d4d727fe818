"""Pure translation of flow task specs into what each compute target runs."""

from provider.compute.command import runtime_command, worker_python
from provider.compute.local import run_local

__all__ = ["run_local", "runtime_command", "worker_python"]
