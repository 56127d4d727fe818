"""A ``.foreach`` resumes in another process: a task killed mid-way and run again in a new
process (as a retry on another worker is) re-runs only the items with no stored result,
whatever the new interpreter's hash seed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import AIRFLOW, TEST_DAGS, airflow_env

from provider.store import open_store

pytestmark = pytest.mark.dags_test


def _calls(marker: Path, what: str) -> Counter[int]:
    names = (p.name.split("-") for p in marker.iterdir() if p.name.startswith(f"{what}-"))
    return Counter(int(parts[1]) for parts in names)


def _airflow(home: Path, marker: Path, seed: str, *argv: str) -> subprocess.Popen[str]:
    env = airflow_env(
        home,
        TEST_DAGS,
        FLOW_TEST_MARKER=str(marker),
        PYTHONHASHSEED=seed,
        AIRFLOW__FLOW_TASK__FOREACH_CHECKPOINT_SECONDS="0",
    )
    return subprocess.Popen(
        [AIRFLOW, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_killed_foreach_resumes_in_a_new_process_with_another_hash_seed(
    migrated_db: Path, tmp_path: Path
):
    home, marker = tmp_path / "home", tmp_path / "calls"
    home.mkdir()
    (home / "airflow.db").write_bytes(migrated_db.read_bytes())
    marker.mkdir()

    first = _airflow(home, marker, "1", "dags", "test", "flow_resume")
    deadline = time.monotonic() + 240
    while sum(_calls(marker, "end").values()) < 25:
        assert first.poll() is None, first.communicate()[0][-5000:]
        assert time.monotonic() < deadline, "the foreach never got going"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the worker dies mid-way: nothing retries here
    first.communicate()
    started = _calls(marker, "start")
    (run,) = (home / "flow_artifacts" / "runs" / "flow_resume").iterdir()

    # The same task of the same run, in a new process with another hash seed.
    second = _airflow(home, marker, "2", "tasks", "test", "flow_resume", "slow", unquote(run.name))
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output[-8000:]
    found = re.search(r"foreach: 60 items in 10 chunks of 6; (\d+) chunks to run", output)
    assert found and int(found.group(1)) < 10, output[-3000:]
    total = _calls(marker, "start")
    again = sorted(item for item in started if total[item] > started[item])
    # Only what had no stored result ran again: what each of the two pool workers was
    # running when the worker died, and what had ended without its checkpoint written yet.
    assert len(again) <= 4, (again, sorted(started))
    assert set(total) == set(range(60))
    (result,) = (run / "slow" / "-1").glob("*/result.json")
    manifest = json.loads(result.read_text())
    store = open_store((home / "flow_artifacts").as_uri())
    assert store.get(manifest["result"]) == [2 * i for i in range(60)]
