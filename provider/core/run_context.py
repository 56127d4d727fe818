"""What a flow task try needs to know about its run: identity, namespace, tags, compute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from provider.core.errors import CannotRun
from provider.specs import COMPUTE_TARGETS
from provider.specs.namespaces import checked_namespace
from provider.specs.namespaces import default_namespace as own_namespace


class RunParamError(CannotRun):
    """A ``flow_*`` run param has a value the run cannot use."""


# Airflow's triggering user of the runs `airflow dags test` and `DAG.test()` create
# (airflow/sdk/definitions/dag.py): no person of that name triggered them.
DAGS_TEST_USER = "dag_test"


def default_namespace(dag_id: str, run_type: str, triggering_user: str | None) -> str:
    """A run someone triggered by hand belongs to them (``user:<who>``): from the UI or the
    REST API, their Airflow login; from ``airflow dags test``, whoever ran it, the namespace
    ``flowtask runs`` and ``provider.client`` list by default (``$FLOWTASK_USER``, else the OS
    login). Every run the deployment starts by itself (scheduled, asset-triggered, backfill,
    triggered by another DAG) is ``production:<dag_id>``."""
    if run_type != "manual":
        return f"production:{dag_id}"
    if triggering_user in (None, "", DAGS_TEST_USER):
        return own_namespace()
    return f"user:{triggering_user}"


def run_namespace(params: Mapping[str, Any], default: str) -> str:
    """``flow_namespace`` as the form sends it: stripped; blank means the default."""
    given = params.get("flow_namespace")
    if given is None or (isinstance(given, str) and not given.strip()):
        return default
    try:
        return checked_namespace(given, "flow_namespace")
    except ValueError as exc:
        raise RunParamError(str(exc)) from None


def run_tags(params: Mapping[str, Any]) -> list[str]:
    """The run's tags: stripped, blank ones (a trailing Enter in the form) dropped, each once."""
    tags = params.get("flow_tags") or []
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise RunParamError(
            f"flow_tags={tags!r} is invalid. Accepted: a list of strings, "
            'e.g. ["nightly", "exp-42"]'
        )
    return list(dict.fromkeys(tag.strip() for tag in tags if tag.strip()))


def resolve_compute(task_compute: str | None, params: Mapping[str, Any], default: str) -> str:
    """The run param ``flow_compute`` beats the task's ``compute=``, which beats the default."""
    override = params.get("flow_compute")
    if override is not None and override not in COMPUTE_TARGETS:
        raise RunParamError(
            f"flow_compute={override!r} is invalid. Accepted: one of {COMPUTE_TARGETS} or null"
        )
    return override or task_compute or default
