"""What this machine can run on: NVIDIA GPUs and their memory, and CPU RAM.

Probed once per process and cached (nvidia-smi costs ~50 ms, /proc/meminfo less); tests build a
`Hardware` by hand to simulate a CUDA machine.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_total: int
    memory_free: int


@dataclass(frozen=True)
class Hardware:
    cpu_count: int
    memory_total: int
    memory_available: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)

    @property
    def cuda(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        gib = 1024**3
        cpu = f"{self.cpu_count} CPU cores, {self.memory_total / gib:.1f} GiB RAM"
        if not self.gpus:
            return f"{cpu}, no NVIDIA GPU"
        gpus = ", ".join(f"{g.name} ({g.memory_total / gib:.0f} GiB)" for g in self.gpus)
        return f"{cpu}, {gpus}"


@functools.cache
def probe() -> Hardware:
    """The hardware of this machine (cached for the life of the process)."""
    total, available = _meminfo()
    return Hardware(cpu_count=os.cpu_count() or 1, memory_total=total, memory_available=available, gpus=_gpus())


def memory_available() -> int:
    """RAM available right now (not cached: it changes as engines start and stop)."""
    return _meminfo()[1]


def _meminfo() -> tuple[int, int]:
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = int(fields["MemTotal"].split()[0]) * 1024
        available = int(fields.get("MemAvailable", fields["MemFree"]).split()[0]) * 1024
        return total, available
    except (OSError, KeyError, ValueError):
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * size, pages * size // 2


def _gpus() -> tuple[Gpu, ...]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(Gpu(parts[0], int(parts[1]) * 1024**2, int(parts[2]) * 1024**2))
    return tuple(gpus)
