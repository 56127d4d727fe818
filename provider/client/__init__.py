"""Find past runs and load their results without Airflow: only the store's credentials.

    from provider.client import Flow
    run = next(Flow("train_models").runs(tags=["nightly"]))
    model = run["fit"].data

``flowtask runs / show / get / tag / gc`` (``provider.client.cli``) are built on it. Importing
this package imports neither Airflow nor boto3 (boto3 comes when an ``s3://`` store is opened).
"""

from provider.client.errors import NoResult, NotFound, UnknownDag, UnknownRun, UnknownTask
from provider.client.flow import Flow
from provider.client.namespaces import default_namespace, get_namespace, namespace
from provider.client.run import Run
from provider.client.task import Task, Try

__all__ = [
    "Flow",
    "NoResult",
    "NotFound",
    "Run",
    "Task",
    "Try",
    "UnknownDag",
    "UnknownRun",
    "UnknownTask",
    "default_namespace",
    "get_namespace",
    "namespace",
]
