"""The AWS configuration ``starburst setup`` saves, under the user's config directory.

``$STARBURST_CONFIG_DIR`` (default ``$XDG_CONFIG_HOME/starburst`` or
``~/.config/starburst``) holds ``aws.json``: ids and names only, never credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import config_dir, json_fields
from ..errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class AwsConfig:
    """Where the ECS backend runs. Every field can be overridden by executor arguments."""

    region: str
    account_id: str = ""
    bucket: str = ""
    prefix: str = "starburst"
    cluster: str = "starburst"
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    execution_role_arn: str = ""
    task_role_arn: str = ""
    log_group: str = "/starburst/workers"
    log_stream_prefix: str = "starburst"
    ecr_repository: str = "starburst-worker"
    image: str = ""
    capacity_providers: dict[str, str] = field(default_factory=dict)  # instance type -> name
    created: list[dict[str, str]] = field(default_factory=list)  # what setup made, in order

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(
                f"the ECS backend needs {', '.join(missing)}; run `starburst setup` "
                "or pass them as arguments"
            )

    def with_overrides(self, **overrides: Any) -> AwsConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in ("subnets", "security_groups"):
            if key in given:
                given[key] = tuple(given[key])
        return replace(self, **given)

    def to_json(self) -> dict[str, Any]:
        return json_fields(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AwsConfig:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["subnets"] = tuple(values.get("subnets", ()))
        values["security_groups"] = tuple(values.get("security_groups", ()))
        return cls(**values)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / "aws.json"


def load_config(environ: Mapping[str, str] | None = None) -> AwsConfig | None:
    path = config_path(environ)
    try:
        return AwsConfig.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read {path}: {err}; rerun `starburst setup`") from err


def save_config(config: AwsConfig, environ: Mapping[str, str] | None = None) -> Path:
    path = config_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.to_json(), indent=2))
    os.chmod(tmp, 0o600)
    tmp.replace(path)  # whole or not at all
    return path
