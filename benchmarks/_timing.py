"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence


def time_command(argv: Sequence[str], repeat: int, env: Mapping[str, str] | None = None) -> float:
    """Median wall time of ``argv`` over ``repeat`` runs; fails loudly if a run fails."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(list(argv), check=True, capture_output=True, env=env)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
