"""`@flow_task` at DAG-parse time: spec checks, Airflow retry mapping, expand/partial/override."""

from __future__ import annotations

from datetime import timedelta

import pytest
from airflow.sdk import DAG, Param, task

from provider import Environment, Resources, Retry, SpecError, TaskSpec, flow_params, flow_task
from provider.operators import FlowTaskOperator


def _dag(dag_id: str = "d", **kwargs) -> DAG:
    return DAG(dag_id, schedule=None, **kwargs)


def test_specs_and_retry_map_onto_the_operator():
    with _dag():

        @flow_task(
            resources=Resources(cpu="500m", memory="2Gi"),
            retry=Retry(times=3, delay="2m", backoff="exponential", max_delay="1h"),
            timeout="1h30m",
            compute="local",
        )
        def fit(x: int) -> int:
            return x

        op = fit(1).operator

    assert isinstance(op, FlowTaskOperator)
    assert op.flow_spec.resources == Resources(cpu=0.5, memory=2048)
    assert op.flow_spec.compute == "local"
    assert op.retries == 3
    assert op.retry_delay == timedelta(minutes=2)
    assert op.retry_exponential_backoff == 2.0
    assert op.max_retry_delay == timedelta(hours=1)
    assert op.execution_timeout == timedelta(hours=1, minutes=30)


def test_unset_retry_leaves_airflow_defaults_alone():
    with _dag(default_args={"retries": 5}):

        @flow_task
        def plain() -> None: ...

        op = plain().operator
    assert op.retries == 5
    assert op.execution_timeout is None
    assert op.flow_spec == TaskSpec()


def test_task_flow_task_is_the_same_decorator():
    with _dag():

        @task.flow_task(resources={"cpu": 2}, retry=2)
        def f() -> None: ...

        op = f().operator
    assert isinstance(op, FlowTaskOperator)
    assert op.flow_spec.resources.cpu == 2
    assert op.retries == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resources": Resources}, "resources"),
        ({"resources": {"cpu": -1}}, "resources.cpu"),
        ({"resources": {"memory": "16GB"}}, "resources.memory"),
        ({"retry": "3"}, "retry"),
        ({"timeout": "soon"}, "timeout"),
        ({"compute": "k8s"}, "compute"),
        ({"catch": "not valid"}, "catch"),
        ({"environment": {"env": {"1A": "x"}}}, "environment.env['1A']"),
        ({"retry": 2, "retries": 3}, "retries"),
        ({"timeout": "1m", "execution_timeout": timedelta(minutes=2)}, "execution_timeout"),
    ],
)
def test_bad_specs_fail_at_decoration_time(kwargs, field):
    with pytest.raises(SpecError) as err:
        flow_task(**kwargs)
    assert err.value.field == field


def test_override_reapplies_specs_and_retry():
    with _dag():

        @flow_task(resources=Resources(cpu=1), retry=Retry(times=1))
        def f() -> None: ...

        op = f.override(resources=Resources(cpu=8), retry=Retry(times=4, delay="5s"))().operator
    assert op.flow_spec.resources.cpu == 8
    assert op.retries == 4
    assert op.retry_delay == timedelta(seconds=5)


def test_override_with_a_bad_spec_fails_at_parse_time():
    with _dag():

        @flow_task
        def f() -> None: ...

        with pytest.raises(SpecError) as err:
            f.override(environment=Environment(image="python:3.11"), compute="gpu")()
    assert err.value.field == "compute"


def test_expand_and_partial_build_a_mapped_flow_task():
    with _dag():

        @flow_task(resources=Resources(gpu=1), retry=Retry(times=2, delay="3s"))
        def score(x: int, scale: int) -> int:
            return x * scale

        mapped = score.partial(scale=2).expand(x=[1, 2, 3]).operator
    assert mapped.operator_class is FlowTaskOperator
    assert mapped.partial_kwargs["flow_spec"].resources.gpu == 1
    assert mapped.partial_kwargs["retries"] == 2
    assert mapped.partial_kwargs["retry_delay"] == timedelta(seconds=3)


@pytest.mark.parametrize(
    ("items", "kind"),
    [("abc", "str"), ((i for i in range(3)), "generator"), (42, "int"), (None, "NoneType")],
)
def test_foreach_refuses_at_parse_time_what_expand_refuses(items, kind):
    with _dag():

        @flow_task
        def score(x: int) -> int:
            return x

        with pytest.raises(
            ValueError, match=rf"score.foreach\(x=...\) got an unexpected type '{kind}'"
        ):
            score.foreach(x=items)
        with pytest.raises(ValueError, match=f"unexpected type '{kind}'"):
            score.expand(x=items)  # Airflow's own refusal, for the same values


def test_foreach_takes_what_expand_takes():
    with _dag():

        @flow_task
        def score(x: int) -> int:
            return x

        for items in (range(5), (1, 2), {"a": 1}, [1]):
            assert score.foreach(x=items).operator.foreach_items == items
            score.expand(x=items)


def test_catch_with_multiple_outputs_is_refused():
    with _dag():

        @flow_task(catch=True, multiple_outputs=True)
        def f() -> dict:
            return {}

        with pytest.raises(SpecError) as err:
            f()
    assert err.value.field == "catch"


def test_flow_params_are_airflow_params():
    params = flow_params(namespace="team:ml", tags=["nightly", "exp-1"], compute="local")
    assert set(params) == {"flow_namespace", "flow_tags", "flow_compute"}
    assert all(isinstance(p, Param) for p in params.values())
    assert params["flow_tags"].resolve() == ["nightly", "exp-1"]
    assert params["flow_compute"].resolve() == "local"
    assert flow_params()["flow_namespace"].resolve() is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tags": "nightly"}, "tags"),
        ({"tags": ["ok", ""]}, "tags"),
        ({"tags": [3]}, "tags"),
        ({"namespace": ""}, "namespace"),
        ({"compute": "gpu"}, "compute"),
    ],
)
def test_flow_params_reject_bad_values(kwargs, field):
    with pytest.raises(SpecError) as err:
        flow_params(**kwargs)
    assert err.value.field == field
