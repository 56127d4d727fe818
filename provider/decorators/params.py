"""``flow_params``: the run params that namespace, tag and re-target a run."""

from __future__ import annotations

from collections.abc import Iterable

from airflow.sdk import Param

from provider.specs import COMPUTE_TARGETS, SpecError


def flow_params(
    namespace: str | None = None,
    tags: Iterable[str] = (),
    compute: str | None = None,
) -> dict[str, Param]:
    """Params to merge into a DAG's ``params``: ``flow_namespace``, ``flow_tags``, ``flow_compute``.

    The trigger form shows them. The namespace and tags are written into every run manifest; a
    run's ``flow_compute``, when set, overrides every flow task's ``compute=`` for that run.
    """
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise SpecError("namespace", namespace, "a non-empty string such as 'team:ml'")
    if isinstance(tags, str):
        raise SpecError("tags", tags, "a list of strings such as ['nightly']", "a bare string")
    tag_list = list(tags)
    if not all(isinstance(tag, str) and tag for tag in tag_list):
        raise SpecError("tags", tag_list, "a list of non-empty strings such as ['nightly']")
    if compute is not None and compute not in COMPUTE_TARGETS:
        raise SpecError("compute", compute, f"None or one of {COMPUTE_TARGETS}")
    return {
        "flow_namespace": Param(
            namespace,
            type=["null", "string"],
            title="flowtask namespace",
            description="Namespace of this run's artifacts; empty: user:<you> "
            "(production:<dag_id> for scheduled runs).",
        ),
        # Optional (a "null" type), and lenient: the form's list field leaves an empty line
        # behind a trailing Enter, which the run ignores.
        "flow_tags": Param(
            tag_list,
            type=["array", "null"],
            items={"type": "string"},
            title="flowtask tags",
            description="Tags recorded with this run's artifacts, to find them later; one a line.",
        ),
        "flow_compute": Param(
            compute,
            type=["null", "string"],
            enum=[None, *COMPUTE_TARGETS],
            values_display={"null": "each task's own", **{c: c for c in COMPUTE_TARGETS}},
            title="flowtask compute override",
            description="Run every flow task of this run on this target.",
        ),
    }
