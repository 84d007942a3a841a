"""The session manifest: settings, deadline and fingerprint, as JSON.

It holds no counters: every count is derived from listings, so no worker ever
has to compare-and-swap a shared object and the numbers never go stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from ..config import SessionSettings
from ..errors import ConfigError, CorruptObject, SchemaVersionError
from ..launch_spec import LaunchSpec
from .layout import check_session_id

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds."""

    session_id: str
    mode: str
    created: float
    deadline: float
    settings: SessionSettings
    fingerprint: dict[str, str]
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    schema_version: int = SCHEMA_VERSION

    @property
    def backend(self) -> str:
        return self.launch.backend

    @property
    def task_slots(self) -> int:
        """Tasks one worker runs at once: ``slots``, else its whole vCPUs (at least 1)."""
        slots = self.settings.slots
        return slots if slots is not None else max(1, int(self.launch.cpu))

    def to_json(self, nonce: str = "") -> bytes:
        data = {
            "schema_version": self.schema_version,
            "session_id": self.session_id,
            "mode": self.mode,
            "backend": self.backend,
            "created": self.created,
            "deadline": self.deadline,
            "settings": self.settings.to_json(),
            "fingerprint": self.fingerprint,
            "launch": self.launch.to_json(),
        }
        if nonce:
            data["nonce"] = nonce
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, key: str) -> Manifest:
        try:
            data = json.loads(raw)
            version = int(data["schema_version"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptObject(f"manifest {key} is not valid JSON with a schema_version") from err
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"manifest {key} has schema_version {version}, newer than this release "
                f"understands ({SCHEMA_VERSION}); upgrade starburst-executor"
            )
        try:
            return cls(
                session_id=check_session_id(data["session_id"]),
                mode=str(data["mode"]),
                created=float(data["created"]),
                deadline=float(data["deadline"]),
                settings=SessionSettings.from_json(data["settings"]),
                fingerprint={str(k): str(v) for k, v in data["fingerprint"].items()},
                # Releases before the launch spec kept the backend beside it.
                launch=LaunchSpec.from_json({**data.get("launch", {}), "backend": data["backend"]}),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError, ConfigError) as err:
            raise CorruptObject(f"manifest {key} is missing or has a bad field: {err}") from err

    def extended(self, seconds: float) -> Manifest:
        """The manifest with its deadline ``seconds`` later than the current one."""
        return replace(self, deadline=self.deadline + seconds)
