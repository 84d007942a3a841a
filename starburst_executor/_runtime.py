"""Choosing where sessions live and how workers start, from arguments and environment.

Precedence for the store: explicit ``endpoint_url``/``bucket`` arguments, then
``STARBURST_S3_ENDPOINT``/``STARBURST_BUCKET``, then the embedded local server.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ._core.loop import LoopThread
from .config import LOCAL_BUCKET, StoreLocation, starburst_home, user_location_overrides
from .errors import ConfigError
from .launch.base import Launcher
from .launch.local import LocalLauncher
from .store.local_server import LocalServer
from .store.s3 import S3Store

BACKENDS = ("local",)


@dataclass
class Runtime:
    """A store, an event loop to drive it, and a launcher."""

    location: StoreLocation
    backend: str
    loop: LoopThread
    store: S3Store
    launcher: Launcher

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.store.close(), timeout=10)
        self.loop.close()


def resolve_location(
    *,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
) -> tuple[StoreLocation, tuple[str, str] | None]:
    """The store location and, for the embedded server, its generated credentials."""
    env_endpoint, env_bucket, env_prefix, env_region = user_location_overrides()
    endpoint = endpoint_url or env_endpoint
    chosen_prefix = prefix or env_prefix
    chosen_region = region or env_region
    if endpoint is None and bucket is None and env_bucket is None:
        server = LocalServer()
        info = server.ensure_running()
        from .store.local_server import read_credentials

        location = StoreLocation(
            bucket=LOCAL_BUCKET,
            prefix=chosen_prefix,
            endpoint_url=info.endpoint_url,
            region=chosen_region,
            local_home=str(info.home),
        )
        return location, read_credentials(info.home)
    chosen_bucket = bucket or env_bucket
    if not chosen_bucket:
        raise ConfigError(
            f"endpoint {endpoint} was given without a bucket; pass bucket=... "
            "or set STARBURST_BUCKET"
        )
    location = StoreLocation(
        bucket=chosen_bucket, prefix=chosen_prefix, endpoint_url=endpoint, region=chosen_region
    )
    return location, None


def open_runtime(
    *,
    backend: str | None = None,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
) -> Runtime:
    chosen = backend or "local"
    if chosen not in BACKENDS:
        raise ConfigError(
            f"unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)} "
            "(the ECS backend is not available in this release)"
        )
    location, credentials = resolve_location(
        endpoint_url=endpoint_url, bucket=bucket, prefix=prefix, region=region
    )
    loop = LoopThread("starburst-io")
    store = S3Store(location, credentials=credentials)
    launcher = LocalLauncher(
        starburst_home() / "logs", strip_aws_env=location.local_home is not None
    )
    return Runtime(location, chosen, loop, store, launcher)
