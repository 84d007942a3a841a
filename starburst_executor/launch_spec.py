"""How a session's workers launch: one frozen, typed spec.

Built once when a session is created (arguments, then environment, then what
``starburst setup`` saved, then the defaults in ``config.py``), stored in the
manifest as is, and rebuilt from it on ``attach``. ``make_launcher`` in
``_runtime.py`` is the one factory that turns it into a launcher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from .aws.sizes import FARGATE_CPU_UNITS, architecture_for, check_fargate_size
from .config import DEFAULT_CPU, DEFAULT_MEMORY_MB, DEFAULT_REGION, json_fields
from .errors import ConfigError

Backend = Literal["local", "ecs"]
LaunchType = Literal["FARGATE", "EC2"]
BACKENDS: tuple[str, ...] = get_args(Backend)
LAUNCH_TYPES: tuple[str, ...] = get_args(LaunchType)
# The options that only mean something to ECS; given for local workers, they are an error.
ECS_ONLY = (
    "launch_type",
    "instance_type",
    "use_spot",
    "image",
    "cluster",
    "subnets",
    "security_groups",
    "max_hourly_cost",
)


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """Where workers run and how big each is.

    ``image``, ``cluster``, ``subnets`` and ``security_groups`` empty mean "what
    ``starburst setup`` saved"; the ECS launcher fills them in before the session's
    manifest records the spec, so an attached client starts the same workers.
    """

    backend: Backend = "local"
    region: str = DEFAULT_REGION
    cpu: float = DEFAULT_CPU
    memory_mb: int = DEFAULT_MEMORY_MB
    launch_type: LaunchType = "FARGATE"
    instance_type: str | None = None
    use_spot: bool = False
    image: str = ""
    cluster: str = ""
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    max_hourly_cost: float | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if not self.cpu > 0:
            raise ConfigError(f"cpu must be > 0, got {self.cpu}")
        if self.memory_mb < 128:
            raise ConfigError(f"memory {self.memory_mb} MiB is below 128 MiB")
        if self.backend == "local":
            return  # ECS options given for local workers: refused by _runtime.launch_spec
        if self.launch_type not in LAUNCH_TYPES:
            raise ConfigError(f"launch_type must be 'FARGATE' or 'EC2', not {self.launch_type!r}")
        if self.launch_type == "FARGATE":
            check_fargate_size(self.cpu, self.memory_mb)
        if self.launch_type == "EC2" and not self.instance_type:
            raise ConfigError("launch_type='EC2' needs instance_type, e.g. 'c7i.xlarge'")
        architecture_for(self.instance_type)  # an unknown instance type fails here, early
        if self.max_hourly_cost is not None and self.max_hourly_cost < 0:
            raise ConfigError(f"max_hourly_cost must be >= 0 USD, got {self.max_hourly_cost}")

    @property
    def cpu_units(self) -> int:
        return FARGATE_CPU_UNITS.get(self.cpu, int(self.cpu * 1024))

    @property
    def architecture(self) -> Literal["X86_64", "ARM64"]:
        return architecture_for(self.instance_type)

    def to_json(self) -> dict[str, Any]:
        return json_fields(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LaunchSpec:
        """The spec a manifest recorded (fields a newer release added are ignored)."""
        values = {k: v for k, v in data.items() if k in _DEFAULTS and v is not None}
        for name in ("subnets", "security_groups"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(LaunchSpec)}
