"""TaskFlow decorators: ``flow_task`` (registered as ``@task.flow_task``) and ``flow_params``."""

from provider.decorators.flow_task import flow_task
from provider.decorators.params import flow_params

__all__ = ["flow_params", "flow_task"]
