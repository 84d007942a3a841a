"""What AWS offers: Fargate's task sizes and the architecture of an instance type.

Pure tables and checks, no SDK: the launch spec validates with them before any call.
"""

from __future__ import annotations

import re
from typing import Literal

from ..errors import ConfigError, InvalidTaskSize

FARGATE_CPU_UNITS = {0.25: 256, 0.5: 512, 1: 1024, 2: 2048, 4: 4096, 8: 8192, 16: 16384}
# Fargate's allowed memory (MB) per vCPU count (AWS "Task CPU and memory" table).
FARGATE_MEMORY: dict[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4097, 1024)),
    1: tuple(range(2048, 8193, 1024)),
    2: tuple(range(4096, 16385, 1024)),
    4: tuple(range(8192, 30721, 1024)),
    8: tuple(range(16384, 61441, 4096)),
    16: tuple(range(32768, 122881, 8192)),
}
_INSTANCE_RE = re.compile(r"^(?P<family>[a-z]+)(?P<gen>\d+)(?P<attrs>[a-z-]*)\.")


def architecture_for(instance_type: str | None) -> Literal["X86_64", "ARM64"]:
    """Graviton families carry a ``g`` after the generation (c7g, m7gd, r8g)."""
    if not instance_type:
        return "X86_64"
    match = _INSTANCE_RE.match(instance_type)
    if not match:
        raise ConfigError(f"unrecognised instance type {instance_type!r} (e.g. c7i.xlarge)")
    return "ARM64" if "g" in match.group("attrs") else "X86_64"


def check_fargate_size(cpu: float, memory_mb: int) -> None:
    """Raise ``InvalidTaskSize`` naming the nearest valid sizes unless Fargate offers
    ``cpu`` vCPU with ``memory_mb`` (RegisterTaskDefinition would refuse it later)."""
    if cpu in FARGATE_MEMORY and memory_mb in FARGATE_MEMORY[cpu]:
        return
    nearest: list[tuple[float, int]] = []
    if cpu in FARGATE_MEMORY:
        nearest.append((cpu, min(FARGATE_MEMORY[cpu], key=lambda m: (abs(m - memory_mb), m))))
    else:
        # Round up: the caller asked for at least this much compute.
        closest = min((c for c in FARGATE_MEMORY if c >= cpu), default=max(FARGATE_MEMORY))
        allowed = FARGATE_MEMORY[closest]
        nearest.append((closest, min(allowed, key=lambda m: (abs(m - memory_mb), m))))
    nearest += [(c, memory_mb) for c, allowed in FARGATE_MEMORY.items() if memory_mb in allowed]
    unique = list(dict.fromkeys(nearest))
    offers = (
        f"{cpu:g} vCPU takes {FARGATE_MEMORY[cpu][0]}-{FARGATE_MEMORY[cpu][-1]} MB"
        if cpu in FARGATE_MEMORY
        else f"Fargate cpu is one of {', '.join(f'{c:g}' for c in FARGATE_MEMORY)} vCPU"
    )
    choices = ", or ".join(f"cpu={c:g} with memory={m} MB" for c, m in unique)
    raise InvalidTaskSize(
        f"Fargate does not offer cpu={cpu:g} vCPU with memory={memory_mb} MB ({offers}); "
        f"nearest valid: {choices}",
        nearest=unique,
    )
