"""``starburst image build``: the worker image from the client's environment, pushed once per tag.

::

    capture_lock() + build_wheel()  (envlock)  ──▶ tag py<minor>-<hash of lock + wheel>
    ECR has the tag? ──yes──▶ nothing to do
          │ no
          ▼
    build context: Dockerfile, requirements.lock, lock.json, install.sh, wheels/<this>.whl
    docker login (password on stdin)
    [docker buildx create --driver docker-container]   only for several platforms at once,
                                                       which the default driver cannot build
    docker buildx build --platform <what the capacity needs> --push

Platforms: linux/amd64 (Fargate runs x86), plus linux/arm64 when a Graviton
instance type is configured. Docker runs through two seams (``CommandRunner``,
``CommandProbe``) so the exact commands can be checked without an engine.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..envlock import EnvLock, Wheel, build_wheel, capture_lock, image_tag
from ..errors import ConfigError, StarburstError
from .clients import AwsClients, translate
from .settings import AwsConfig
from .sizes import architecture_for

AMD64, ARM64 = "linux/amd64", "linux/arm64"
PLATFORMS = (AMD64, ARM64)
BUILDER = "starburst-builder"
CommandRunner = Callable[[Sequence[str], bytes | None], None]
CommandProbe = Callable[[Sequence[str]], bool]

# One install step, run by the Dockerfile and by the tests that build a virtualenv
# from the same context: what they prove is what the image does.
INSTALL_SH = """\
#!/bin/sh
# Installs the worker's environment: the client's lock, then this package's wheel.
set -eu
cd "$(dirname "$0")"
python -c 'import sys; want = "{python}"; have = "%d.%d" % sys.version_info[:2]; \
sys.exit(None if have == want else f"the lock is for Python {{want}}, this is {{have}}")'
python -m pip install --no-input -r requirements.lock wheels/{wheel}
"""


def run_command(argv: Sequence[str], stdin: bytes | None) -> None:
    """Run a docker command; a failure is a clear error with its output."""
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{argv[0]} is not installed: install Docker with buildx (`starburst doctor`)"
        ) from err
    if proc.returncode != 0:
        raise StarburstError(
            f"`{' '.join(argv[:3])} ...` failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()[-800:]}"
        )


def probe_command(argv: Sequence[str]) -> bool:
    """True when the command exits 0 (a missing program is False)."""
    try:
        return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0
    except OSError:
        return False


@dataclass(frozen=True)
class BuildPlan:
    """What an image built from this environment holds, and its tag."""

    lock: EnvLock
    wheel: Wheel
    tag: str


def plan_image(requirements: str | None = None) -> BuildPlan:
    lock, wheel = capture_lock(requirements), build_wheel()
    return BuildPlan(lock, wheel, image_tag(lock, wheel))


def build_context(dest: Path, plan: BuildPlan) -> Path:
    """Lay out the docker build context: everything the image is installed from."""
    package_dir = Path(__file__).resolve().parents[1]
    dockerfile = package_dir / "worker" / "Dockerfile"
    if not dockerfile.exists():
        raise ConfigError(f"the worker Dockerfile is missing ({dockerfile}); reinstall the package")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(dockerfile, dest / "Dockerfile")
    (dest / "requirements.lock").write_text(plan.lock.text())
    (dest / "lock.json").write_text(
        json.dumps({**plan.lock.to_json(), "tag": plan.tag, "wheel": plan.wheel.filename}, indent=2)
    )
    (dest / "install.sh").write_text(
        INSTALL_SH.format(python=plan.lock.python, wheel=plan.wheel.filename)
    )
    (dest / "wheels").mkdir(exist_ok=True)
    (dest / "wheels" / plan.wheel.filename).write_bytes(plan.wheel.data)
    return dest


def platforms_needed(config: AwsConfig, instance_types: Iterable[str] = ()) -> tuple[str, ...]:
    """linux/amd64 for Fargate, plus linux/arm64 when a Graviton type is configured."""
    types = [*config.capacity_providers, *instance_types]
    if any(architecture_for(t) == "ARM64" for t in types):
        return PLATFORMS
    return (AMD64,)


def parse_platforms(text: str) -> tuple[str, ...]:
    """``amd64``, ``arm64``, ``both`` or a comma-separated ``linux/...`` list."""
    aliases = {"amd64": (AMD64,), "arm64": (ARM64,), "both": PLATFORMS}
    if text in aliases:
        return aliases[text]
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in chosen if p not in PLATFORMS]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown platform {text!r}: use amd64, arm64, both, "
            f"or a list of {', '.join(PLATFORMS)}"
        )
    return tuple(p for p in PLATFORMS if p in chosen)


def docker_commands(
    image: str,
    context: Path,
    platforms: Sequence[str],
    python: str,
    *,
    builder_exists: bool,
) -> list[list[str]]:
    """The buildx commands for ``platforms``: several at once need a docker-container
    builder (the default ``docker`` driver builds one platform at a time)."""
    commands: list[list[str]] = []
    several = len(platforms) > 1
    if several and not builder_exists:
        create = ["docker", "buildx", "create", "--name", BUILDER]
        commands.append([*create, "--driver", "docker-container", "--bootstrap"])
    build = ["docker", "buildx", "build"]
    if several:
        build += ["--builder", BUILDER]
    build += ["--platform", ",".join(platforms), "--provenance=false"]
    build += ["--build-arg", f"PYTHON_VERSION={python}", "--tag", image, "--push", str(context)]
    commands.append(build)
    return commands


@dataclass
class ImageBuild:
    """What ``build_image`` did or would do."""

    image: str
    tag: str
    skipped: bool
    plan: BuildPlan
    platforms: tuple[str, ...] = ()
    commands: list[list[str]] = field(default_factory=list)


def repository_uri(config: AwsConfig) -> str:
    config.require("ecr_repository", "account_id")
    return f"{config.account_id}.dkr.ecr.{config.region}.amazonaws.com/{config.ecr_repository}"


def ecr_has_tag(config: AwsConfig, clients: AwsClients, tag: str) -> bool:
    ecr = clients("ecr")
    try:
        found = ecr.describe_images(
            repositoryName=config.ecr_repository, imageIds=[{"imageTag": tag}]
        ).get("imageDetails", [])
    except ecr.exceptions.ImageNotFoundException:
        return False
    except Exception as err:
        raise translate(err, "ecr:DescribeImages", config.ecr_repository) from err
    return bool(found)


def build_image(
    config: AwsConfig,
    clients: AwsClients,
    *,
    requirements: str | None = None,
    context_dir: Path,
    runner: CommandRunner = run_command,
    probe: CommandProbe = probe_command,
    dry_run: bool = False,
    platforms: Sequence[str] | None = None,
) -> ImageBuild:
    """Build and push the worker image of this environment unless ECR holds its tag."""
    repository = repository_uri(config)
    plan = plan_image(requirements)
    chosen = tuple(platforms) if platforms else platforms_needed(config)
    image = f"{repository}:{plan.tag}"
    if ecr_has_tag(config, clients, plan.tag):
        return ImageBuild(image, plan.tag, skipped=True, plan=plan, platforms=chosen)
    build_context(context_dir, plan)
    ecr = clients("ecr")
    try:
        auth = ecr.get_authorization_token()["authorizationData"][0]
    except Exception as err:
        raise translate(err, "ecr:GetAuthorizationToken", config.ecr_repository) from err
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    login = ["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]]
    builder_exists = len(chosen) < 2 or probe(["docker", "buildx", "inspect", BUILDER])
    build = docker_commands(
        image, context_dir, chosen, plan.lock.python, builder_exists=builder_exists
    )
    result = ImageBuild(image, plan.tag, False, plan, chosen, commands=[login, *build])
    if not dry_run:
        runner(login, password.encode())
        for command in build:
            runner(command, None)
    return result


def require_image(config: AwsConfig, clients: AwsClients) -> str:
    """The worker image an ECS session without ``image=`` uses, or a one-line error.

    A configured image in the configured ECR repository must have its tag there; with
    none configured, the image of this environment's lock is used when ECR has it.
    """
    if config.image:
        repository, _, tag = config.image.rpartition(":")
        ours = bool(config.account_id and config.ecr_repository) and repository == (
            repository_uri(config)
        )
        if ours and not ecr_has_tag(config, clients, tag):
            raise ConfigError(
                f"the worker image {config.image} is missing from ECR repository "
                f"{config.ecr_repository}: build it with `starburst image build`"
            )
        return config.image
    if not (config.account_id and config.ecr_repository):
        return ""  # make_launcher says what to do: run setup, or pass image=
    plan = plan_image()
    if ecr_has_tag(config, clients, plan.tag):
        return f"{repository_uri(config)}:{plan.tag}"
    raise ConfigError(
        f"no worker image for this environment: ECR repository {config.ecr_repository} has "
        f"no tag {plan.tag} (Python {plan.lock.python}, {len(plan.lock.pins)} locked "
        "packages); build it with `starburst image build`, or pass image='<uri:tag>'"
    )
