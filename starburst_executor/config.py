"""Frozen settings, and the one place the environment is read.

Environment variables (read when a function here is called, never at import):

=========================  ==================================================
``STARBURST_HOME``         state directory of the embedded local S3 server
``STARBURST_S3_ENDPOINT``  an S3-compatible endpoint to use instead of it
``STARBURST_BUCKET``       the bucket on that endpoint
``STARBURST_PREFIX``       key prefix for sessions (default ``starburst``)
``STARBURST_REGION``       region name (default ``us-east-1``)
``STARBURST_BACKEND``      ``local`` (default) or ``ecs``
``STARBURST_SSE``          ``AES256`` (default on AWS) or ``aws:kms``
``STARBURST_SSE_KMS_KEY_ID`` the KMS key for ``aws:kms``
``STARBURST_SHIP_CODE``    ``0`` turns off shipping the user's own modules
``STARBURST_RETENTION``    how long a finished session is kept (default ``7d``)
``STARBURST_FORKSERVER``   ``0``: start local per-call workers as subprocesses, not forks
=========================  ==================================================

A worker receives its session through the ``WORKER_ENV`` variables only, the
same ones the ECS launcher passes as container overrides: ids and locations,
never credentials or payloads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_PREFIX = "starburst"
DEFAULT_REGION = "us-east-1"
LOCAL_BUCKET = "starburst"

ENV_HOME = "STARBURST_HOME"
ENV_ENDPOINT = "STARBURST_S3_ENDPOINT"
ENV_BUCKET = "STARBURST_BUCKET"
ENV_PREFIX = "STARBURST_PREFIX"
ENV_REGION = "STARBURST_REGION"
ENV_SESSION = "STARBURST_SESSION_ID"
ENV_WORKER = "STARBURST_WORKER_ID"
ENV_TASK = "STARBURST_TASK_ID"
ENV_TAKEOVER = "STARBURST_TAKEOVER"  # ephemeral retry: take over the dead worker's claim

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,3}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


DEFAULT_MAX_OBJECT_BYTES = 5 * 1024**3  # one S3 PUT carries at most 5 GiB


def max_object_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The largest pickled call or result (``STARBURST_MAX_OBJECT_BYTES`` lowers it)."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get("STARBURST_MAX_OBJECT_BYTES", DEFAULT_MAX_OBJECT_BYTES))
    except ValueError:
        raise ConfigError("STARBURST_MAX_OBJECT_BYTES must be a number of bytes") from None


def ship_code_enabled(ship_code: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether sessions ship the user's own modules: the argument, else
    ``STARBURST_SHIP_CODE`` (``0``/``false``/``no`` turn it off), else on."""
    if ship_code is not None:
        return ship_code
    env = os.environ if environ is None else environ
    return env.get("STARBURST_SHIP_CODE", "1").strip().lower() not in {"0", "false", "no", "off"}


def starburst_home(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user state directory (``STARBURST_HOME`` overrides it)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "starburst"


@dataclass(frozen=True, kw_only=True)
class StoreLocation:
    """Where sessions live: endpoint, bucket, key prefix and request options.

    ``endpoint_url=None`` means AWS S3 itself. ``local_home`` is set when the
    endpoint is the embedded server, whose generated credentials live there.
    """

    bucket: str
    prefix: str = DEFAULT_PREFIX
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    local_home: str | None = None
    expected_bucket_owner: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket):
            raise ConfigError(
                f"invalid bucket name {self.bucket!r}: use 3-63 lowercase letters, digits, "
                "dots or hyphens"
            )
        if not _PREFIX_RE.match(self.prefix):
            raise ConfigError(
                f"invalid key prefix {self.prefix!r}: use letters, digits, '.', '_', '-' "
                "in at most four '/'-separated parts"
            )

    def owner_extra(self) -> dict[str, Any]:
        """Parameters every S3 call carries (the bucket-owner check on AWS)."""
        if self.expected_bucket_owner:
            return {"ExpectedBucketOwner": self.expected_bucket_owner}
        return {}

    def put_extra(self) -> dict[str, Any]:
        """Parameters every PUT carries: owner check and encryption when configured."""
        extra = self.owner_extra()
        if self.sse:
            extra["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id:
                extra["SSEKMSKeyId"] = self.sse_kms_key_id
        return extra

    def to_env(self) -> dict[str, str]:
        """The variables a worker needs to find this location (no credentials)."""
        env = {ENV_BUCKET: self.bucket, ENV_PREFIX: self.prefix, ENV_REGION: self.region}
        if self.endpoint_url:
            env[ENV_ENDPOINT] = self.endpoint_url
        if self.local_home:
            env[ENV_HOME] = self.local_home
        if self.expected_bucket_owner:
            env["STARBURST_EXPECTED_BUCKET_OWNER"] = self.expected_bucket_owner
        if self.sse:
            env["STARBURST_SSE"] = self.sse
        if self.sse_kms_key_id:
            env["STARBURST_SSE_KMS_KEY_ID"] = self.sse_kms_key_id
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreLocation:
        """Rebuild a location from ``to_env`` output (the worker side)."""
        try:
            bucket = environ[ENV_BUCKET]
        except KeyError:
            raise ConfigError(f"{ENV_BUCKET} is not set; the launcher must pass it") from None
        return cls(
            bucket=bucket,
            prefix=environ.get(ENV_PREFIX, DEFAULT_PREFIX),
            endpoint_url=environ.get(ENV_ENDPOINT) or None,
            region=environ.get(ENV_REGION, DEFAULT_REGION),
            local_home=environ.get(ENV_HOME) or None,
            expected_bucket_owner=environ.get("STARBURST_EXPECTED_BUCKET_OWNER") or None,
            sse=environ.get("STARBURST_SSE") or None,
            sse_kms_key_id=environ.get("STARBURST_SSE_KMS_KEY_ID") or None,
        )


def backend_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``STARBURST_BACKEND``: ``local`` or ``ecs``."""
    env = os.environ if environ is None else environ
    return env.get("STARBURST_BACKEND") or None


def encryption_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """Server-side encryption for AWS: ``STARBURST_SSE`` (default ``AES256``, or
    ``aws:kms``) and ``STARBURST_SSE_KMS_KEY_ID``."""
    env = os.environ if environ is None else environ
    return env.get("STARBURST_SSE") or "AES256", env.get("STARBURST_SSE_KMS_KEY_ID") or None


def user_location_overrides(
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None, str | None, str | None]:
    """``(endpoint, bucket, prefix, region)`` the user's environment sets (None: unset,
    so a saved setup or the default applies)."""
    env = os.environ if environ is None else environ
    return (
        env.get(ENV_ENDPOINT) or None,
        env.get(ENV_BUCKET) or None,
        env.get(ENV_PREFIX) or None,
        env.get(ENV_REGION) or env.get("AWS_DEFAULT_REGION") or None,
    )


DEFAULT_RETENTION = "7d"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"7d"`` -> 604800.0 seconds; units s, m, h, d, w; a bare number is seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigError(
            f"invalid duration {text!r}: write a number and a unit, e.g. '90m', '12h' or '7d'"
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def forkserver_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Fork local per-call workers from a template (``STARBURST_FORKSERVER=0``: do not)."""
    env = os.environ if environ is None else environ
    return env.get("STARBURST_FORKSERVER", "1") != "0"


def retention_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a finished session is kept (``STARBURST_RETENTION``, default 7 days)."""
    env = os.environ if environ is None else environ
    text = env.get("STARBURST_RETENTION") or DEFAULT_RETENTION
    try:
        return parse_duration(text)
    except ConfigError as err:
        raise ConfigError(f"STARBURST_RETENTION: {err}") from None


_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(MB|MiB|GB|GiB|M|G)?\s*$", re.IGNORECASE)


def parse_memory_mb(memory: int | str) -> int:
    """``"8GB"`` -> 8192; an int is taken as MiB."""
    if isinstance(memory, int):
        value = memory
    else:
        match = _MEMORY_RE.match(memory)
        if not match:
            raise ConfigError(f"invalid memory {memory!r}: write e.g. '512MB' or '8GB'")
        number = float(match.group(1))
        unit = (match.group(2) or "MB").upper()
        value = int(number * 1024) if unit.startswith("G") else int(number)
    if value < 128:
        raise ConfigError(f"memory {memory!r} is below 128 MiB")
    return value


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """What a session's workers enforce. Stored in the manifest; validated here."""

    max_workers: int
    min_workers: int = 0
    cpu: float = 1.0
    memory_mb: int = 2048
    session_timeout: float = 300.0
    absolute_timeout: float = 86400.0
    lease_seconds: float = 60.0
    max_retries: int = 3
    seed: int | None = None
    slots: int | None = None

    @property
    def task_slots(self) -> int:
        """Tasks one worker runs at once: ``slots``, else its whole vCPUs (at least 1)."""
        return self.slots if self.slots is not None else max(1, int(self.cpu))

    def __post_init__(self) -> None:
        checks = [
            (self.max_workers >= 1, f"max_workers must be >= 1, got {self.max_workers}"),
            (
                0 <= self.min_workers <= self.max_workers,
                f"min_workers must be between 0 and max_workers ({self.max_workers}), "
                f"got {self.min_workers}",
            ),
            (self.cpu > 0, f"cpu must be > 0, got {self.cpu}"),
            (self.session_timeout > 0, f"session_timeout must be > 0, got {self.session_timeout}"),
            (
                self.absolute_timeout > 0,
                f"absolute_timeout must be > 0, got {self.absolute_timeout}",
            ),
            (self.lease_seconds >= 2, f"lease_seconds must be >= 2, got {self.lease_seconds}"),
            (self.max_retries >= 0, f"max_retries must be >= 0, got {self.max_retries}"),
            (
                self.slots is None or (isinstance(self.slots, int) and self.slots >= 1),
                f"slots must be an integer >= 1, got {self.slots!r}",
            ),
            (
                self.seed is None or (isinstance(self.seed, int) and self.seed >= 0),
                f"seed must be a non-negative integer, got {self.seed!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionSettings:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})
