"""TaskFlow decorators: ``flow_task`` (registered as ``@task.flow_task``), ``flow_params`` and the
DAG callback ``record_run_state``."""

from provider.decorators.flow_task import flow_task
from provider.decorators.params import flow_params
from provider.decorators.run_state import record_run_state

__all__ = ["flow_params", "flow_task", "record_run_state"]
