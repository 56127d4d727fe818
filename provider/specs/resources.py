"""``Resources``: what a task needs from the machine it runs on."""

from __future__ import annotations

import re
from dataclasses import dataclass

from provider.specs.errors import SpecError
from provider.specs.units import parse_cpu, parse_mebibytes

_GPU_TYPE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class Resources:
    """CPUs, memory (MiB), GPUs, disk (MiB), shared memory (MiB) and a GPU type.

    ``Resources(cpu="500m", memory="16Gi")`` and ``Resources(cpu=0.5, memory=16384)`` are equal:
    values are normalized to cores and MiB when the spec is made.
    """

    cpu: float | int | str = 1
    memory: int | str = 4096
    gpu: int = 0
    disk: int | str | None = None
    shared_memory: int | str | None = None
    gpu_type: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "cpu", parse_cpu(self.cpu, "resources.cpu"))
        set_(self, "memory", parse_mebibytes(self.memory, "resources.memory"))
        if self.disk is not None:
            set_(self, "disk", parse_mebibytes(self.disk, "resources.disk"))
        if self.shared_memory is not None:
            shm = parse_mebibytes(self.shared_memory, "resources.shared_memory")
            if shm > self.memory:  # type: ignore[operator]
                raise SpecError(
                    "resources.shared_memory",
                    self.shared_memory,
                    f"at most memory ({self.memory} MiB)",
                    "shared memory counts against the memory limit",
                )
            set_(self, "shared_memory", shm)
        gpu = self.gpu
        if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
            raise SpecError(
                "resources.gpu",
                gpu,
                "a whole number of GPUs >= 0, such as 1",
                "GPUs are not shared fractionally" if isinstance(gpu, float) else None,
            )
        if self.gpu_type is not None:
            if not isinstance(self.gpu_type, str) or not _GPU_TYPE.fullmatch(self.gpu_type):
                raise SpecError(
                    "resources.gpu_type",
                    self.gpu_type,
                    "a GPU model label such as 'nvidia-tesla-t4' or 'A100'",
                )
            if gpu == 0:
                raise SpecError(
                    "resources.gpu_type",
                    self.gpu_type,
                    "gpu=1 (or more) together with gpu_type",
                    "it needs gpu >= 1",
                )

    @property
    def cpu_millicores(self) -> int:
        return round(float(self.cpu) * 1000)

    @property
    def memory_quantity(self) -> str:
        return f"{self.memory}Mi"

    @property
    def disk_quantity(self) -> str | None:
        return None if self.disk is None else f"{self.disk}Mi"

    @property
    def shared_memory_quantity(self) -> str | None:
        return None if self.shared_memory is None else f"{self.shared_memory}Mi"
