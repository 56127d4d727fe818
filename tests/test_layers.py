"""The package's layers, as ``/work/shared/DESIGN.md`` orders them: each imports only the ones
listed before it; the runtime and the core never import Airflow; every module of the operators
imports Airflow (what does not belongs in the core); the operators stay small."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROVIDER = Path(__file__).resolve().parent.parent / "provider"
# The layer table, in order. A module outside a package (provider/__init__.py, card.py, ...)
# is its own entry; compat/ is a leaf any layer may use (it imports no other part of flowtask).
LAYERS = [
    ["specs"],
    ["settings", "store"],
    ["runtime", "card"],
    ["translate"],
    ["core"],
    ["config", "xcom"],
    ["operators"],
    ["decorators", "provider_info", "__init__"],
    ["client"],
    ["ui"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Not even inside a function. (The client imports no Airflow when imported, which
# tests/test_import.py checks; ``flowtask render`` and ``flowtask env`` load DAGs, and Airflow.)
AIRFLOW_FREE = ("specs", "settings", "store", "runtime", "card", "translate", "core")
OPERATORS_MAX_LINES = 1600  # "about 1,500": the Airflow classes and the boundary, nothing else


def _modules() -> dict[str, Path]:
    found = {}
    for path in PROVIDER.rglob("*.py"):
        parts = path.relative_to(PROVIDER).with_suffix("").parts
        found[".".join(("provider", *parts))] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert {_layer(m) for m in _modules()} - {"compat"} <= set(RANK)


def test_no_layer_imports_one_listed_after_it():
    wrong = []
    for module, path in _modules().items():
        layer = _layer(module)
        if layer == "compat":
            continue
        for name in _imports(path):
            if not name.startswith("provider.") and name != "provider":
                continue
            used = _layer(name) if name != "provider" else "__init__"
            if used in ("compat", layer) or name == "provider":
                continue
            if RANK[used] > RANK[layer]:
                wrong.append(f"{module} ({layer}) imports {name} ({used})")
    assert wrong == []


def test_compat_imports_no_other_part_of_flowtask():
    for module, path in _modules().items():
        if _layer(module) == "compat":
            own = {n for n in _imports(path) if n.startswith("provider.")}
            assert {n for n in own if not n.startswith("provider.compat")} == set(), module


@pytest.mark.parametrize("layer", AIRFLOW_FREE)
def test_airflow_free_layers_import_no_airflow(layer: str):
    """Not at the top and not in a function: also no compat module of an Airflow project."""
    airflow_compat = ("provider.compat.airflow_sdk", "provider.compat.kubernetes",
                      "provider.compat.amazon")  # fmt: skip
    for module, path in _modules().items():
        if _layer(module) != layer:
            continue
        bad = [
            name
            for name in _imports(path)
            if name == "airflow" or name.startswith(("airflow.", *airflow_compat))
        ]
        assert bad == [], f"{module} imports {bad}"


def test_every_operators_module_imports_airflow_and_the_package_stays_small():
    lines = 0
    for module, path in _modules().items():
        if _layer(module) != "operators" or path.name == "__init__.py":
            continue
        lines += len(path.read_text().splitlines())
        imports = _imports(path)
        uses_airflow = any(n == "airflow" or n.startswith("airflow.") for n in imports) or any(
            n.startswith("provider.compat.") and n != "provider.compat.botocore" for n in imports
        )
        assert uses_airflow, f"{module} imports nothing of Airflow: it belongs in the core"
    assert lines <= OPERATORS_MAX_LINES, lines


def test_importing_the_runtime_and_the_core_loads_no_airflow():
    code = (
        "import sys, json, pkgutil, importlib, provider.core, provider.runtime\n"
        "for pkg in (provider.core, provider.runtime):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if m == "airflow" or m.startswith("airflow.")] == []


def test_import_provider_takes_under_10_ms_cumulative():
    """``python -X importtime``: what ``import provider`` costs, the best of five (a loaded
    machine slows any one of them)."""
    best = min(_import_time_us("provider") for _ in range(5))
    assert best < 10_000, f"import provider: {best / 1000:.1f} ms"


def _import_time_us(module: str) -> int:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    for line in out.stderr.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1])
    raise AssertionError(f"no import time line for {module}")
