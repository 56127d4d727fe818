"""The differential parity table (tests/dags/flow_parity.py): every mapping pattern, with plain
``@task`` and with ``@flow_task``, gives the same values and types for every value size, with
``FlowXCom`` and with Airflow's default XCom backend."""

from __future__ import annotations

import json
import re
import sqlite3
import sys

import pytest
from conftest import TEST_DAGS, DagsTest
from reachability import assert_gc_keeps_everything_reachable

sys.path.insert(0, str(TEST_DAGS))
import flow_parity

DEFAULT_XCOM = "airflow.sdk.execution_time.xcom.BaseXCom"
# (size, XCom backend): the default backend keeps plain values inline whatever their size, so
# its slice is the large one, where flow tasks' values are stored.
RUNS = [
    ("tiny", "provider.xcom.FlowXCom"),
    ("past", "provider.xcom.FlowXCom"),
    ("large", "provider.xcom.FlowXCom"),
    ("large", DEFAULT_XCOM),
]


def test_the_table_covers_every_pattern_producer_and_size():
    cells = [(size, backend, *cell) for size, backend in RUNS for cell in flow_parity.cells(size)]
    assert len(cells) >= 40, len(cells)
    assert {pattern for *_, pattern, _ in cells} == set(flow_parity.PATTERNS)
    assert {producer for *_, producer in cells} == set(flow_parity.PRODUCERS)
    # As the plain producers' JSON: "tiny" stays in the XCom row (1024 bytes at most), "past"
    # is just past that limit, "large" is over 1 MiB.
    size = {name: len(json.dumps(flow_parity.make_items(name))) for name in flow_parity.SIZES}
    assert size["tiny"] < 1024 < size["past"] < 1400 and size["large"] > 1 << 20


@pytest.mark.dags_test
@pytest.mark.parametrize(
    ("size", "backend"), RUNS, ids=[f"{s}-{b.rsplit('.')[-1]}" for s, b in RUNS]
)
def test_flow_tasks_map_as_task_does(dags_test: DagsTest, size: str, backend: str):
    dag_id = f"flow_parity_{size}"
    run = dags_test(dag_id, dags_folder=TEST_DAGS, AIRFLOW__CORE__XCOM_BACKEND=backend)
    with sqlite3.connect(run.home / "airflow.db") as db:
        states = dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND task_id LIKE "
                "'%\\_\\_check' ESCAPE '\\'",
                (dag_id,),
            ).fetchall()
        )
    cells = {f"{pattern}__{producer}__check" for pattern, producer in flow_parity.cells(size)}
    assert set(states) == cells
    differing = sorted(task for task, state in states.items() if state != "success")
    reasons = sorted(set(re.findall(r"AssertionError: (\S+: .{0,300})", run.output)))
    assert not differing, f"{len(differing)} cells differ: {differing}\n" + "\n".join(reasons)
    assert run.returncode == 0, run.output[-5000:]
    with sqlite3.connect(run.home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, map_index, value FROM xcom WHERE dag_id = ?", (dag_id,))
        xcoms = {f"{task}[{index}]": json.loads(value) for task, index, value in rows}
    assert_gc_keeps_everything_reachable(run.artifacts, xcoms)
