"""Everyday TaskFlow patterns, each of which a flow task handles as ``@task`` does."""

from __future__ import annotations

import subprocess
import sys
from typing import NamedTuple

from airflow.sdk import dag, task

from provider import Resources, flow_context, flow_params, flow_task

LONG_KEY = "model-metrics-" + "k" * 300  # Airflow takes XCom keys up to 512 characters


class Config(NamedTuple):
    lr: float
    layers: int


@dag(schedule=None, catchup=False, params={**flow_params(tags=["taskflow"]), "scale": 3})
def flow_taskflow():
    # 1. Chained mapping: b.expand over a.expand's results.
    @flow_task
    def double(y: int) -> int:
        return 2 * y

    @flow_task
    def plus_one(x: int) -> int:
        return x + 1

    # 2. Mapping over a dict result: one instance per (key, value) pair.
    @flow_task
    def weights() -> dict[str, float]:
        return {"a": 0.5, "b": 2.0}

    @flow_task
    def describe(pair: tuple[str, float]) -> str:
        key, weight = pair
        return f"{key}={weight}"

    @flow_task
    def join(descriptions: list[str]) -> str:  # a flow task's fan-in over a mapped task
        return ",".join(sorted(descriptions))

    # 3. The DAG folder imports where the task runs: a lazy import, a DAG-folder class.
    @task
    def make_point():
        from taskflow_helpers.geometry import Point

        return Point(3.0, 4.0)

    @flow_task
    def measure(point) -> float:
        from taskflow_helpers.geometry import Point, norm

        assert isinstance(point, Point), type(point)
        return norm(point)

    # 4. A template that pulls an XCom gives the value; 5. a NamedTuple keeps its type;
    # 6. context arguments and flow_context() give the plain context values.
    @flow_task(multiple_outputs=False)
    def inspect(pulled: str, cfg: Config, ds=None, params=None, run_id=None, logical_date=None):
        # As for @task: on SQLite the XCom row's JSON column keeps 5.0 as the number 5.
        assert float(pulled) == 5.0, pulled
        assert isinstance(cfg, Config) and cfg.lr == 0.01, cfg
        context = flow_context()
        assert ds == context["ds"] and len(ds) == 10, ds
        assert params["scale"] == 3 and params["flow_tags"] == ["taskflow"], params
        assert run_id == context["run_id"] and logical_date.year >= 2024
        print("a line on stdout")
        print("a line on stderr", file=sys.stderr)
        return {"ds": ds, "scale": params["scale"], "try": context["try_number"]}

    # 9. A background child: the task ends when the function returns.
    @flow_task
    def leave_a_daemon() -> int:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        return child.pid

    # 8. A long, non-ASCII XCom key, stored by FlowXCom.
    @task
    def long_key(**context) -> None:
        context["ti"].xcom_push(key=LONG_KEY, value=list(range(2000)))

    @task
    def check(doubled_plus_one, described, measured, inspected) -> str:
        assert sorted(doubled_plus_one) == [3, 5, 7], doubled_plus_one
        assert described == "a=0.5,b=2.0", described
        assert measured == 5.0, measured
        assert inspected["scale"] == 3 and inspected["try"] == 1, inspected
        return "all like @task"

    # 7. .override with specs on a mapped flow task.
    more = plus_one.override(task_id="plus_one_more", resources=Resources(memory="256Mi"))
    doubled = double.expand(y=[1, 2, 3])
    measured = measure(make_point())
    inspected = inspect("{{ ti.xcom_pull(task_ids='measure') }}", Config(lr=0.01, layers=2))
    measured >> inspected
    described = join(describe.expand(pair=weights()))
    check(plus_one.expand(x=doubled), described, measured, inspected)
    more.expand(x=[10])
    leave_a_daemon()
    long_key()


flow_taskflow()
