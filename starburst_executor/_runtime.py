"""Choosing where sessions live and how workers start, from arguments and environment.

Backend: the ``backend`` argument, then ``STARBURST_BACKEND``, then ``"local"``.

Store, first that applies: explicit ``endpoint_url``/``bucket`` arguments;
``STARBURST_S3_ENDPOINT``/``STARBURST_BUCKET``; for the ECS backend, the bucket
``starburst setup`` saved (on AWS S3); otherwise the embedded local server.

Workers: one ``LaunchSpec``, built once by ``launch_spec`` when a session is created
(argument, then environment, then saved setup, then default, field by field),
recorded in the manifest, and turned into a launcher by ``make_launcher`` alone (for
an attached session, from its manifest).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ._core.loop import LoopThread
from .config import (
    DEFAULT_PREFIX,
    DEFAULT_REGION,
    LOCAL_BUCKET,
    StoreLocation,
    backend_from_env,
    encryption_from_env,
    parse_memory_mb,
    resolve_region,
    starburst_home,
    user_location_overrides,
)
from .errors import ConfigError
from .launch.base import Launcher
from .launch.local import LocalLauncher
from .launch_spec import BACKENDS, ECS_ONLY, Backend, LaunchSpec
from .store.local_server import LocalServer, read_credentials
from .store.s3 import S3Store, refuse_fast


class Runtime:
    """A store, an event loop to drive it, and (once the spec is known) a launcher."""

    def __init__(self, location: StoreLocation, credentials: tuple[str, str] | None = None) -> None:
        self.location = location
        self.loop = LoopThread("starburst-io")
        self.store = S3Store(location, credentials=credentials)
        self._launcher: Launcher | None = None

    @property
    def launcher(self) -> Launcher:
        if self._launcher is None:
            raise RuntimeError("the runtime has no launcher yet: call start_launcher first")
        return self._launcher

    @launcher.setter
    def launcher(self, launcher: Launcher) -> None:
        self._launcher = launcher

    @property
    def spec(self) -> LaunchSpec:
        """How this runtime's workers launch (image and placement resolved)."""
        return self.launcher.spec

    def probe(self) -> None:
        """Fail at once if an explicit endpoint refuses connections (``refuse_fast``):
        before a client's first request, not a worker's, which rides a restart through."""
        refuse_fast(self.location)

    def start_launcher(self, spec: LaunchSpec) -> Launcher:
        self._launcher = make_launcher(spec, self.location)
        return self._launcher

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.store.close(), timeout=10)
        self.loop.close()
        if isinstance(self._launcher, LocalLauncher):
            self._launcher.close()  # its worker template; the workers it forked run on


def choose_backend(backend: str | None) -> Backend:
    chosen = backend or backend_from_env() or "local"
    if chosen not in BACKENDS:
        raise ConfigError(f"unknown backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
    return "ecs" if chosen == "ecs" else "local"


def resolve_location(
    *,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    backend: str = "local",
) -> tuple[StoreLocation, tuple[str, str] | None]:
    """The store location and, for the embedded server, its generated credentials."""
    env_endpoint, env_bucket, env_prefix = user_location_overrides()
    endpoint = endpoint_url or env_endpoint
    chosen_bucket = bucket or env_bucket
    chosen_prefix = prefix or env_prefix
    saved = None
    if backend == "ecs":
        from .aws.settings import load_config

        saved = load_config()
    chosen_region = resolve_region(region, saved.region if saved else None) or DEFAULT_REGION
    if endpoint is None and chosen_bucket is None and backend == "ecs":
        from .aws.settings import AwsConfig

        saved = saved or AwsConfig(region=chosen_region)
        saved.require("bucket")
        sse, kms_key = encryption_from_env()
        # One precedence for every field: argument, then environment, then saved setup.
        location = StoreLocation(
            bucket=saved.bucket,
            prefix=chosen_prefix or saved.prefix,
            region=chosen_region,
            expected_bucket_owner=saved.account_id or None,
            sse=sse,
            sse_kms_key_id=kms_key,
        )
        return location, None
    chosen_prefix = chosen_prefix or DEFAULT_PREFIX
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


def launch_spec(backend: Backend, options: Mapping[str, Any], region: str) -> LaunchSpec:
    """The spec a new session's options give: each field from its argument, else
    ``LaunchSpec``'s default; ``region`` is the store location's (one precedence).

    Placement left empty (image, cluster, networking) is what ``starburst setup``
    saved; ``make_launcher`` fills it in, and the manifest records the result.
    """
    given = {k: v for k, v in options.items() if v is not None}
    ecs_only = [name for name in ECS_ONLY if name in given]
    if backend == "local" and ecs_only:
        raise ConfigError(
            f"{', '.join(ecs_only)} apply to the ECS backend; pass backend='ecs' "
            "or set STARBURST_BACKEND=ecs"
        )
    values: dict[str, Any] = {k: given[k] for k in (*ecs_only, "cpu") if k in given}
    for name in ("subnets", "security_groups"):
        if name in values:
            values[name] = tuple(values[name])
    if "memory" in given:
        values["memory_mb"] = parse_memory_mb(given["memory"])
    return LaunchSpec(backend=backend, region=region, **values)


def make_launcher(spec: LaunchSpec, location: StoreLocation) -> Launcher:
    """The one launcher factory: the launcher ``spec`` describes, for ``location``."""
    if spec.backend == "local":
        return LocalLauncher(
            starburst_home() / "logs", spec=spec, strip_aws_env=location.local_home is not None
        )
    from .aws.clients import AwsClients
    from .aws.settings import AwsConfig, load_config
    from .launch.ecs import EcsLauncher

    stored = load_config()
    placed = spec.cluster and spec.subnets and spec.security_groups and spec.image
    if stored is not None and stored.region != spec.region and not placed:
        # The saved cluster, networking and image exist in the saved region only.
        raise ConfigError(
            f"workers would launch in {spec.region}, but `starburst setup` was run for "
            f"{stored.region}: pass region={stored.region!r}, or run `starburst setup "
            f"--region {spec.region}` first"
        )
    saved = stored or AwsConfig(region=spec.region)
    config = saved.with_overrides(
        region=spec.region,
        cluster=spec.cluster or None,
        subnets=spec.subnets or None,
        security_groups=spec.security_groups or None,
        image=spec.image or None,
    )
    clients = AwsClients(spec.region)
    if not spec.image:
        from .aws.image import require_image

        # First use on ECS: a missing image is one line naming it and the build command.
        config = replace(config, image=require_image(config, clients))
    if not config.image:
        raise ConfigError("no worker image: run `starburst image build` or pass image='<uri:tag>'")
    resolved = replace(
        spec,
        image=config.image,
        cluster=config.cluster,
        subnets=config.subnets,
        security_groups=config.security_groups,
    )
    return EcsLauncher(config, resolved, clients)


def open_store(
    *,
    backend: str | None = None,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
    probe: bool = True,
) -> Runtime:
    """Open the store ``backend`` and the location arguments choose; no launcher yet
    (an attached session's comes from its manifest). With ``probe``, an explicit
    endpoint that refuses connections fails here (``refuse_fast``)."""
    location, credentials = resolve_location(
        endpoint_url=endpoint_url,
        bucket=bucket,
        prefix=prefix,
        region=region,
        backend=choose_backend(backend),
    )
    if probe:
        refuse_fast(location)
    return Runtime(location, credentials)


def open_runtime(options: Mapping[str, Any]) -> Runtime:
    """Store and launcher for a new session with the executor's ``options``."""
    backend = choose_backend(options.get("backend"))
    # Every option is checked before the store is opened (or the local server started).
    spec = launch_spec(backend, options, DEFAULT_REGION)
    runtime = open_store(
        backend=backend,
        endpoint_url=options.get("endpoint_url"),
        bucket=options.get("bucket"),
        prefix=options.get("prefix"),
        region=options.get("region"),
        probe=False,  # the session's creation contacts the store, and probes first
    )
    try:
        runtime.start_launcher(replace(spec, region=runtime.location.region))
    except BaseException:
        runtime.close()
        raise
    return runtime
