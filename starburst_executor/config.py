"""Frozen settings, every default, and the one place the environment is read.

Environment variables (read when a function here is called, never at import), each
named by one constant below:

===================================  ===================================================
``STARBURST_HOME``                   state directory of the embedded local S3 server
``STARBURST_S3_ENDPOINT``            an S3-compatible endpoint to use instead of it
``STARBURST_BUCKET``                 the bucket on that endpoint
``STARBURST_PREFIX``                 key prefix for sessions (default ``starburst``)
``STARBURST_REGION``                 region (``resolve_region`` gives the precedence)
``STARBURST_BACKEND``                ``local`` (default) or ``ecs``
``STARBURST_SSE``                    ``AES256`` (default on AWS) or ``aws:kms``
``STARBURST_SSE_KMS_KEY_ID``         the KMS key for ``aws:kms``
``STARBURST_SHIP_CODE``              ``0`` turns off shipping the user's own modules
``STARBURST_RETENTION``              how long a finished session is kept (default ``7d``)
``STARBURST_FORKSERVER``             ``0``: start local per-call workers as subprocesses
``STARBURST_MAX_OBJECT_BYTES``       the largest pickled call or result
``STARBURST_CONFIG_DIR``             where ``starburst setup`` saves ``aws.json``
``STARBURST_AWS_ENDPOINT``           one endpoint for every AWS control-plane call (tests)
``STARBURST_SPOT_WATCH``             worker: ``1`` watches EC2's Spot interruption notice
``STARBURST_IMDS_ENDPOINT``          worker: the instance metadata endpoint (tests)
``STARBURST_STORED_FD``              worker forked locally: where it says its outcome is stored
``STARBURST_SESSION_ID``             worker: its session (``WORKER_ID``, ``TASK_ID``,
                                     ``TAKEOVER``, ``WORKER_LOG`` alike: set by the launcher)
``STARBURST_EXPECTED_BUCKET_OWNER``  worker: the account the bucket must belong to
``STARBURST_TERM_GRACE``             worker: seconds it gets after SIGTERM (default 100)
``STARBURST_LOG_LEVEL``              worker: its log level (default ``INFO``)
``ECS_CONTAINER_METADATA_URI_V4``    worker on ECS (set by ECS): its task's metadata
===================================  ===================================================

A worker receives its session through the variables ``WorkerEnv`` reads, the same
ones the ECS launcher passes as container overrides: ids and locations, never
credentials or payloads.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from .errors import ConfigError

DEFAULT_PREFIX = "starburst"
DEFAULT_REGION = "us-east-1"
LOCAL_BUCKET = "starburst"
DEFAULT_CPU = 1.0  # vCPUs per worker
DEFAULT_MEMORY_MB = 2048  # per worker
DEFAULT_TERM_GRACE = 100.0  # seconds a worker gets after SIGTERM (a Spot notice gives 120)
# A worker's exit code when it failed before serving (its environment, its settings, its
# own code), not for a store it could not reach: the local launcher stops relaunching
# after a few of these in a row (``WorkersCannotStart``).
EXIT_CANNOT_START = 3

ENV_HOME = "STARBURST_HOME"
ENV_ENDPOINT = "STARBURST_S3_ENDPOINT"
ENV_BUCKET = "STARBURST_BUCKET"
ENV_PREFIX = "STARBURST_PREFIX"
ENV_REGION = "STARBURST_REGION"
ENV_SESSION = "STARBURST_SESSION_ID"
ENV_WORKER = "STARBURST_WORKER_ID"
ENV_TASK = "STARBURST_TASK_ID"
ENV_TAKEOVER = "STARBURST_TAKEOVER"  # ephemeral retry: take over the dead worker's claim
ENV_WORKER_LOG = "STARBURST_WORKER_LOG"
# A worker forked by the local template: the pipe on which it says its task's outcome
# is stored, before it exits (the client then reads it without waiting for the exit).
ENV_STORED_FD = "STARBURST_STORED_FD"
TASK_ID_FIELD = "{task}"  # in an ECS worker's log location: its task id, filled in by it
ENV_TERM_GRACE = "STARBURST_TERM_GRACE"
ENV_LOG_LEVEL = "STARBURST_LOG_LEVEL"
ENV_BACKEND = "STARBURST_BACKEND"
ENV_SSE = "STARBURST_SSE"
ENV_SSE_KMS_KEY_ID = "STARBURST_SSE_KMS_KEY_ID"
ENV_EXPECTED_BUCKET_OWNER = "STARBURST_EXPECTED_BUCKET_OWNER"
ENV_SHIP_CODE = "STARBURST_SHIP_CODE"
ENV_RETENTION = "STARBURST_RETENTION"
ENV_FORKSERVER = "STARBURST_FORKSERVER"
ENV_MAX_OBJECT_BYTES = "STARBURST_MAX_OBJECT_BYTES"
ENV_CONFIG_DIR = "STARBURST_CONFIG_DIR"
ENV_AWS_ENDPOINT = "STARBURST_AWS_ENDPOINT"
ENV_SPOT_WATCH = "STARBURST_SPOT_WATCH"  # "1": the worker watches EC2's Spot notice
ENV_IMDS_ENDPOINT = "STARBURST_IMDS_ENDPOINT"  # instance metadata (tests: a local one)
ENV_ECS_METADATA = "ECS_CONTAINER_METADATA_URI_V4"  # set by ECS in every container

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,3}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


DEFAULT_MAX_OBJECT_BYTES = 5 * 1024**3  # one S3 PUT carries at most 5 GiB


def max_object_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The largest pickled call or result (``STARBURST_MAX_OBJECT_BYTES`` lowers it)."""
    env = os.environ if environ is None else environ
    try:
        return int(env.get(ENV_MAX_OBJECT_BYTES, DEFAULT_MAX_OBJECT_BYTES))
    except ValueError:
        raise ConfigError(f"{ENV_MAX_OBJECT_BYTES} must be a number of bytes") from None


def json_fields(obj: Any) -> dict[str, Any]:
    """A frozen settings dataclass as JSON-ready fields (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}


def ship_code_enabled(ship_code: bool | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether sessions ship the user's own modules: the argument, else
    ``STARBURST_SHIP_CODE`` (``0``/``false``/``no`` turn it off), else on."""
    if ship_code is not None:
        return ship_code
    env = os.environ if environ is None else environ
    return env.get(ENV_SHIP_CODE, "1").strip().lower() not in {"0", "false", "no", "off"}


def starburst_home(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user state directory (``STARBURST_HOME`` overrides it)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "starburst"


def check_endpoint_url(url: str) -> tuple[str, int]:
    """The host and port of an S3 endpoint URL, or ``ConfigError`` naming the fix."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ConfigError(
            f"invalid endpoint {url!r}: use http(s)://host[:port], for example "
            f"http://127.0.0.1:9000 (endpoint_url / {ENV_ENDPOINT})"
        )
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


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
        if self.endpoint_url is not None:
            check_endpoint_url(self.endpoint_url)

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
            env[ENV_EXPECTED_BUCKET_OWNER] = self.expected_bucket_owner
        if self.sse:
            env[ENV_SSE] = self.sse
        if self.sse_kms_key_id:
            env[ENV_SSE_KMS_KEY_ID] = self.sse_kms_key_id
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
            expected_bucket_owner=environ.get(ENV_EXPECTED_BUCKET_OWNER) or None,
            sse=environ.get(ENV_SSE) or None,
            sse_kms_key_id=environ.get(ENV_SSE_KMS_KEY_ID) or None,
        )


def backend_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``STARBURST_BACKEND``: ``local`` or ``ecs``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_BACKEND) or None


def encryption_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """Server-side encryption for AWS: ``STARBURST_SSE`` (default ``AES256``, or
    ``aws:kms``) and ``STARBURST_SSE_KMS_KEY_ID``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_SSE) or "AES256", env.get(ENV_SSE_KMS_KEY_ID) or None


def user_location_overrides(
    environ: Mapping[str, str] | None = None,
) -> tuple[str | None, str | None, str | None]:
    """``(endpoint, bucket, prefix)`` the user's environment sets (None: unset, so a
    saved setup or the default applies); the region is ``resolve_region``'s."""
    env = os.environ if environ is None else environ
    return (env.get(ENV_ENDPOINT) or None, env.get(ENV_BUCKET) or None, env.get(ENV_PREFIX) or None)


def resolve_region(
    argument: str | None, saved: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The one region precedence: the argument, then ``STARBURST_REGION``, then the
    region ``starburst setup`` saved, then the AWS SDK's ``AWS_REGION`` and
    ``AWS_DEFAULT_REGION`` (shell-wide defaults rank below a setup made for this
    library); None when nothing names one (callers use ``DEFAULT_REGION`` or ask)."""
    env = os.environ if environ is None else environ
    return (
        argument
        or env.get(ENV_REGION)
        or saved
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or None
    )


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``starburst setup`` saves its configuration (``STARBURST_CONFIG_DIR``, else
    ``$XDG_CONFIG_HOME/starburst`` or ``~/.config/starburst``)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_CONFIG_DIR):
        return Path(env[ENV_CONFIG_DIR]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "starburst"


def aws_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``STARBURST_AWS_ENDPOINT``: one endpoint for every control-plane call (the tests
    point it at moto's server on 127.0.0.1); S3 data never goes there."""
    env = os.environ if environ is None else environ
    return env.get(ENV_AWS_ENDPOINT) or None


def store_endpoint(environ: Mapping[str, str] | None = None) -> str | None:
    """``STARBURST_S3_ENDPOINT``, when the user points the library at a store of theirs."""
    env = os.environ if environ is None else environ
    return env.get(ENV_ENDPOINT) or None


@dataclass(frozen=True, kw_only=True)
class WorkerEnv:
    """What a worker process reads from its environment: the launcher's variables."""

    location: StoreLocation
    session_id: str
    worker_id: str | None
    task_id: str | None
    takeover: bool
    log_location: str
    term_grace: float
    log_level: str
    spot_watch: bool
    imds_endpoint: str | None
    ecs_metadata_uri: str | None
    stored_fd: int | None = None

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> WorkerEnv:
        try:
            grace = float(environ.get(ENV_TERM_GRACE, DEFAULT_TERM_GRACE))
        except ValueError:
            raise ConfigError(f"{ENV_TERM_GRACE} must be a number of seconds") from None
        return cls(
            location=StoreLocation.from_env(environ),
            session_id=environ.get(ENV_SESSION, ""),
            worker_id=environ.get(ENV_WORKER) or None,
            task_id=environ.get(ENV_TASK) or None,
            takeover=environ.get(ENV_TAKEOVER) == "1",
            log_location=environ.get(ENV_WORKER_LOG, ""),
            term_grace=grace,
            log_level=environ.get(ENV_LOG_LEVEL, "INFO"),
            spot_watch=environ.get(ENV_SPOT_WATCH) == "1",
            imds_endpoint=environ.get(ENV_IMDS_ENDPOINT) or None,
            ecs_metadata_uri=environ.get(ENV_ECS_METADATA) or None,
            stored_fd=int(environ[ENV_STORED_FD]) if environ.get(ENV_STORED_FD) else None,
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
    return env.get(ENV_FORKSERVER, "1") != "0"


def retention_seconds(environ: Mapping[str, str] | None = None) -> float:
    """How long a finished session is kept (``STARBURST_RETENTION``, default 7 days)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_RETENTION) or DEFAULT_RETENTION
    try:
        return parse_duration(text)
    except ConfigError as err:
        raise ConfigError(f"{ENV_RETENTION}: {err}") from None


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
    return value  # the launch spec checks the size


@dataclass(frozen=True, kw_only=True)
class SessionSettings:
    """What a session's workers enforce. Stored in the manifest; validated here."""

    max_workers: int
    min_workers: int = 0
    session_timeout: float = 300.0
    absolute_timeout: float = 86400.0
    lease_seconds: float = 60.0
    max_retries: int = 3
    seed: int | None = None
    slots: int | None = None  # tasks a worker runs at once (None: its whole vCPUs)

    def __post_init__(self) -> None:
        checks = [
            (self.max_workers >= 1, f"max_workers must be >= 1, got {self.max_workers}"),
            (
                0 <= self.min_workers <= self.max_workers,
                f"min_workers must be between 0 and max_workers ({self.max_workers}), "
                f"got {self.min_workers}",
            ),
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


class SessionOptions(TypedDict, total=False):
    """The keyword options both executors take (``DetachedOptions`` adds its own).

    Defaults: those of ``SessionSettings`` and ``LaunchSpec``; store and backend
    from the environment, then ``starburst setup``, then the embedded local server.
    """

    cpu: float
    memory: int | str
    absolute_timeout: float
    seed: int | None
    backend: Literal["local", "ecs"] | None
    launch_type: Literal["FARGATE", "EC2"] | None
    instance_type: str | None
    use_spot: bool | None
    image: str | None
    cluster: str | None
    subnets: Sequence[str] | None
    security_groups: Sequence[str] | None
    max_hourly_cost: float | None
    endpoint_url: str | None
    bucket: str | None
    prefix: str | None
    region: str | None
    ship_code: bool | None


class DetachedOptions(SessionOptions, total=False):
    """``DetachedExecutor``'s options beyond the shared ones."""

    min_workers: int
    session_timeout: float
    lease_seconds: float
    max_retries: int
    slots: int | None


def check_options(owner: str, options: Mapping[str, Any], allowed: type) -> None:
    """``TypeError`` for a keyword ``owner`` does not take, as Python's own is."""
    known = allowed.__optional_keys__ | allowed.__required_keys__  # type: ignore[attr-defined]
    for name in options:
        if name not in known:
            raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")


def session_settings(max_workers: int, options: Mapping[str, Any]) -> SessionSettings:
    """The settings the options give (the rest keep ``SessionSettings``' defaults)."""
    fields = SessionSettings.__dataclass_fields__
    return SessionSettings(
        max_workers=max_workers, **{k: v for k, v in options.items() if k in fields}
    )
