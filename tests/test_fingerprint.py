"""Content fingerprints: equal in every process and on every worker, different for different
content (what names a ``.foreach`` plan)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from provider.store import Reference
from provider.store.fingerprint import fingerprint

SOURCE = """
SPLITS = {"train", "test", "validation"}

def keep(x, limit=3):
    return x in {"train", "test"} and x in SPLITS and len(x) < limit
"""


def _load(path: Path, name: str):
    path.write_text(SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_function_is_the_same_under_every_hash_seed_and_at_every_path(tmp_path: Path):
    """Airflow imports a DAG file as unusual_prefix_<hash of its path>_<name>: two workers
    holding the DAG folder at two paths must name the same plan."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = _load(tmp_path / "a" / "dag.py", "unusual_prefix_0a1b_dag")
    two = _load(tmp_path / "b" / "dag.py", "unusual_prefix_9f8e_dag")
    assert fingerprint(one.keep) == fingerprint(two.keep)
    path = str(tmp_path / "a" / "dag.py")
    program = (
        "import importlib.util, sys\n"
        "from provider.store.fingerprint import fingerprint\n"
        f"spec = importlib.util.spec_from_file_location('unusual_prefix_77_dag', {path!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(fingerprint(m.keep), fingerprint([{'b', 'a', 'c'}, {'k': frozenset('xyz')}]))\n"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert seen == {
        f"{fingerprint(one.keep)} {fingerprint([{'a', 'b', 'c'}, {'k': frozenset('zyx')}])}\n"
    }


@dataclass
class Config:
    lr: float
    tags: frozenset[str]


def test_different_content_differs():
    ref = Reference("s3://b/data/ab/" + "a" * 64, "a" * 64, 10, "builtins.list", "pickle5")
    values = [
        1,
        1.0,
        True,
        "1",
        b"1",
        (1,),
        [1],
        {1},
        {"a": 1},
        {"a": 2},
        Config(0.1, frozenset({"x"})),
        Config(0.2, frozenset({"x"})),
        ref,
        {**ref.to_json(), "item": 1},
        {**ref.to_json(), "item": 2},
        None,
    ]
    prints = [fingerprint(v) for v in values]
    assert len(set(prints)) == len(values)
    assert fingerprint(ref) == fingerprint(ref.to_json())  # a reference is its content


def test_a_change_of_code_or_default_changes_a_function(tmp_path: Path):
    module = _load(tmp_path / "dag.py", "dag_one")
    before = fingerprint(module.keep)
    module.keep.__defaults__ = (4,)
    assert fingerprint(module.keep) != before
    (tmp_path / "dag2.py").write_text(SOURCE.replace("len(x) < limit", "len(x) <= limit"))
    spec = importlib.util.spec_from_file_location("dag_two", tmp_path / "dag2.py")
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    assert fingerprint(other.keep) != before
