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
    if namespace is not None:
        from provider.specs.namespaces import MAX_LENGTH, checked_namespace

        try:
            namespace = checked_namespace(namespace)
        except ValueError:
            accepted = f"a name of 1 to {MAX_LENGTH} printable characters such as 'team:ml'"
            raise SpecError("namespace", namespace, accepted) from None
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
        "flow_compute": _compute_param(compute),
    }


def _compute_param(compute: str | None) -> Param:
    """The compute override; a target this deployment has not configured says what it needs
    (a run on it fails at once, saying the same)."""
    needs = unconfigured_targets()
    shown = {c: f"{c} (needs {needs[c]})" if c in needs else c for c in COMPUTE_TARGETS}
    description = "Run every flow task of this run on this target."
    if needs:
        listed = "; ".join(f"{c} needs {setting}" for c, setting in needs.items())
        description += f" Not configured here: {listed}."
    return Param(
        compute,
        type=["null", "string"],
        enum=[None, *COMPUTE_TARGETS],
        values_display={"null": "each task's own", **shown},
        title="flowtask compute override",
        description=description,
    )


def unconfigured_targets() -> dict[str, str]:
    """Compute targets with no place to run, each with the setting that gives it one."""
    from provider import config, settings

    needs = {}
    try:
        if config.kubernetes_unconfigured() is not None:
            needs["kubernetes"] = f"[{settings.SECTION}] kubernetes_conn_id"
        if settings.batch_defaults().queue is None:
            needs["batch"] = f"[{settings.SECTION}] batch_job_queue or BatchOptions(queue=...)"
    except Exception:  # a config the tasks will refuse, with the reason: the form says nothing
        return {}
    return needs
