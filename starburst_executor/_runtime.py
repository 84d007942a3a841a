"""Choosing where sessions live and how workers start, from arguments and environment.

Backend: the ``backend`` argument, then ``STARBURST_BACKEND``, then ``"local"``.

Store, first that applies: explicit ``endpoint_url``/``bucket`` arguments;
``STARBURST_S3_ENDPOINT``/``STARBURST_BUCKET``; for the ECS backend, the bucket
``starburst setup`` saved (on AWS S3); otherwise the embedded local server.

An attached session's launcher is rebuilt from its manifest (``backend`` and
``launch``), so cleanup and scaling reach the same kind of workers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ._core.loop import LoopThread
from .config import (
    DEFAULT_PREFIX,
    DEFAULT_REGION,
    LOCAL_BUCKET,
    SessionSettings,
    StoreLocation,
    backend_from_env,
    encryption_from_env,
    starburst_home,
    user_location_overrides,
)
from .errors import ConfigError
from .launch.base import Launcher
from .launch.local import LocalLauncher
from .store.local_server import LocalServer, read_credentials
from .store.s3 import S3Store

BACKENDS = ("local", "ecs")


@dataclass
class Runtime:
    """A store, an event loop to drive it, and a launcher."""

    location: StoreLocation
    backend: str
    loop: LoopThread
    store: S3Store
    launcher: Launcher
    launch_info: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.store.close(), timeout=10)
        self.loop.close()
        if isinstance(self.launcher, LocalLauncher):
            self.launcher.close()  # its worker template; the workers it forked run on


def choose_backend(backend: str | None) -> str:
    chosen = backend or backend_from_env() or "local"
    if chosen not in BACKENDS:
        raise ConfigError(f"unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
    return chosen


def resolve_location(
    *,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    backend: str = "local",
) -> tuple[StoreLocation, tuple[str, str] | None]:
    """The store location and, for the embedded server, its generated credentials."""
    env_endpoint, env_bucket, env_prefix, env_region = user_location_overrides()
    endpoint = endpoint_url or env_endpoint
    chosen_bucket = bucket or env_bucket
    chosen_prefix = prefix or env_prefix
    chosen_region = region or env_region
    if endpoint is None and chosen_bucket is None and backend == "ecs":
        from .aws.settings import AwsConfig, load_config

        saved = load_config() or AwsConfig(region=chosen_region or DEFAULT_REGION)
        saved.require("bucket")
        sse, kms_key = encryption_from_env()
        # One precedence for every field: argument, then environment, then saved setup.
        location = StoreLocation(
            bucket=saved.bucket,
            prefix=chosen_prefix or saved.prefix,
            region=chosen_region or saved.region,
            expected_bucket_owner=saved.account_id or None,
            sse=sse,
            sse_kms_key_id=kms_key,
        )
        return location, None
    chosen_prefix = chosen_prefix or DEFAULT_PREFIX
    chosen_region = chosen_region or DEFAULT_REGION
    if endpoint is None and chosen_bucket is None:
        info = LocalServer().ensure_running()
        location = StoreLocation(
            bucket=LOCAL_BUCKET,
            prefix=chosen_prefix,
            endpoint_url=info.endpoint_url,
            region=chosen_region,
            local_home=str(info.home),
        )
        return location, read_credentials(info.home)
    if not chosen_bucket:
        raise ConfigError(
            f"endpoint {endpoint} was given without a bucket; pass bucket=... "
            "or set STARBURST_BUCKET"
        )
    location = StoreLocation(
        bucket=chosen_bucket, prefix=chosen_prefix, endpoint_url=endpoint, region=chosen_region
    )
    return location, None


def make_launcher(
    backend: str,
    location: StoreLocation,
    launch_info: dict[str, Any],
    settings: SessionSettings | None,
) -> Launcher:
    """The launcher of ``backend``; ``launch_info`` holds the ECS options (manifest form)."""
    if backend == "local":
        return LocalLauncher(
            starburst_home() / "logs", strip_aws_env=location.local_home is not None
        )
    from .aws.clients import AwsClients
    from .aws.settings import AwsConfig, load_config
    from .launch.ecs import EcsLauncher, EcsSpec

    region = launch_info.get("region") or location.region
    saved = load_config() or AwsConfig(region=region)
    config = saved.with_overrides(
        cluster=launch_info.get("cluster"),
        subnets=launch_info.get("subnets"),
        security_groups=launch_info.get("security_groups"),
        image=launch_info.get("image"),
    )
    clients = AwsClients(config.region)
    if not launch_info.get("image"):
        from dataclasses import replace

        from .aws.image import require_image

        # First use on ECS: a missing image is one line naming it and the build command.
        config = replace(config, image=require_image(config, clients))
    cpu = settings.cpu if settings else float(launch_info.get("cpu", 1.0))
    memory = settings.memory_mb if settings else int(launch_info.get("memory_mb", 2048))
    spec = EcsSpec(
        cpu=cpu,
        memory_mb=memory,
        image=config.image,
        launch_type=launch_info.get("launch_type") or "FARGATE",
        use_spot=bool(launch_info.get("use_spot", False)),
        instance_type=launch_info.get("instance_type"),
        max_hourly_cost=launch_info.get("max_hourly_cost"),
    )
    return EcsLauncher(config, spec, clients)


def open_runtime(
    *,
    backend: str | None = None,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    settings: SessionSettings | None = None,
    ecs_options: dict[str, Any] | None = None,
    launcher_from: tuple[str, dict[str, Any], SessionSettings | None] | None = None,
) -> Runtime:
    """Open the store and a launcher.

    ``launcher_from`` (backend, launch info, settings), read from an existing session's
    manifest, rebuilds that session's launcher instead of one from the arguments.
    """
    chosen = choose_backend(backend)
    options = {k: v for k, v in (ecs_options or {}).items() if v is not None}
    if chosen == "local" and options:
        raise ConfigError(
            f"{', '.join(sorted(options))} apply to the ECS backend; pass backend='ecs' "
            "or set STARBURST_BACKEND=ecs"
        )
    location, credentials = resolve_location(
        endpoint_url=endpoint_url, bucket=bucket, prefix=prefix, region=region, backend=chosen
    )
    launch_info: dict[str, Any] = {}
    if launcher_from is not None:
        chosen, launch_info, settings = launcher_from
    elif chosen == "ecs":
        launch_info = {**options, "region": location.region}
        if settings is not None:
            launch_info.update(cpu=settings.cpu, memory_mb=settings.memory_mb)
    launcher = make_launcher(chosen, location, launch_info, settings)
    launch_info = launcher.launch_info()
    loop = LoopThread("starburst-io")
    store = S3Store(location, credentials=credentials)
    return Runtime(location, chosen, loop, store, launcher, launch_info)
