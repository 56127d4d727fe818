"""What a try really used: wall time, CPU time, peak memory, and GPU memory where visible."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

GPU_SAMPLE_SECONDS = 2.0


def peak_rss_mib() -> float:
    """Peak resident memory of this process since it started running this program, or of its
    largest waited-for child, whichever is larger.

    Linux's VmHWM belongs to the address space and so starts afresh at exec; ru_maxrss of the
    process itself survives exec and would report the forking Airflow worker's peak instead.
    """
    import resource

    own = None
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    if own is None:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return round(max(own, children), 1)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    own, children = os.times()[:2], os.times()[2:4]
    return round(sum(own) + sum(children), 3)


class GpuSampler:
    """Peak GPU memory in use, sampled with ``nvidia-smi`` while the function runs; nothing
    (no thread, no process) where there is no ``nvidia-smi``."""

    def __init__(self, command: str = "nvidia-smi") -> None:
        self._binary = _which(command)
        self._peak: float | None = None
        self._stop: Any = None
        self._thread: Any = None

    def __enter__(self) -> GpuSampler:
        if self._binary is not None:
            import threading  # only where there is a GPU to watch

            self._stop = threading.Event()
            self._sample()
            self._thread = threading.Thread(target=self._loop, daemon=True, name="flowtask-gpu")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sample()

    @property
    def peak_mib(self) -> float | None:
        return self._peak

    def _loop(self) -> None:
        while not self._stop.wait(GPU_SAMPLE_SECONDS):
            self._sample()

    def _sample(self) -> None:
        import subprocess

        assert self._binary is not None
        try:
            out = subprocess.run(
                [self._binary, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            used = sum(float(line) for line in out.split() if line.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            return
        self._peak = used if self._peak is None else max(self._peak, used)


def _which(command: str) -> str | None:
    """``shutil.which`` without importing shutil at every runtime start."""
    for folder in os.get_exec_path():
        path = os.path.join(folder, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def usage(started: float, cpu_at_start: float, gpu: GpuSampler | None = None) -> dict[str, Any]:
    """The usage record of a try (or a chunk) that started at ``started``."""
    record: dict[str, Any] = {
        "wall_seconds": round(time.time() - started, 3),
        "cpu_seconds": round(cpu_seconds() - cpu_at_start, 3),
        "peak_rss_mib": peak_rss_mib(),
    }
    if gpu is not None and gpu.peak_mib is not None:
        record["gpu_memory_mib"] = gpu.peak_mib
    return record


MEMORY_MARGIN = 1.25  # a suggested request leaves this much room above the peak
MEMORY_STEP_MIB = 256


def suggested_request(
    peak_rss_mib: float, cpu_seconds: float, wall_seconds: float
) -> dict[str, Any]:
    """A request that fits what a try used: peak memory plus a margin, rounded up to 256 MiB;
    CPUs from CPU time over wall time, rounded up to a tenth (at least 0.1)."""
    import math

    memory = math.ceil(peak_rss_mib * MEMORY_MARGIN / MEMORY_STEP_MIB) * MEMORY_STEP_MIB
    cpu = max(0.1, math.ceil(10 * cpu_seconds / max(wall_seconds, 1e-3)) / 10)
    return {"memory_mib": max(MEMORY_STEP_MIB, memory), "cpu": cpu}


def human_mib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"
