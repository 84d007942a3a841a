"""``starburst image build``: the worker image, multi-arch, pushed to ECR once per tag.

The tag is a hash of the Python minor version, the user's requirements and the
package version, so an unchanged environment never rebuilds. Docker runs through
one seam (``CommandRunner``) so the exact commands can be checked without an engine.
The ECR password reaches ``docker login`` on standard input, never on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..errors import ConfigError, StarburstError
from .clients import AwsClients, translate
from .settings import AwsConfig

PLATFORMS = ("linux/amd64", "linux/arm64")
CommandRunner = Callable[[Sequence[str], bytes | None], None]


def run_command(argv: Sequence[str], stdin: bytes | None) -> None:
    """Run a docker command; a failure is a clear error with its output."""
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, check=False)
    except FileNotFoundError as err:
        raise ConfigError(f"{argv[0]} is not installed: install Docker with buildx") from err
    if proc.returncode != 0:
        raise StarburstError(
            f"`{' '.join(argv[:3])} ...` failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()[-800:]}"
        )


def python_minor() -> str:
    return ".".join(platform.python_version_tuple()[:2])


def image_tag(requirements: str, python: str | None = None, version: str = __version__) -> str:
    digest = hashlib.sha256(
        f"python={python or python_minor()}\npackage={version}\n{requirements}".encode()
    ).hexdigest()
    return f"py{(python or python_minor()).replace('.', '')}-{digest[:16]}"


def _source_root() -> Path | None:
    """The source tree this package was installed from (editable installs), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "worker_image").is_dir() else None


def build_context(dest: Path, requirements: str) -> Path:
    """Lay out the docker build context: Dockerfile, the package, the requirements."""
    dest.mkdir(parents=True, exist_ok=True)
    root = _source_root()
    package_dir = Path(__file__).resolve().parents[1]
    dockerfile = package_dir / "worker" / "Dockerfile"
    if not dockerfile.exists():
        raise ConfigError(f"the worker Dockerfile is missing ({dockerfile}); reinstall the package")
    shutil.copy(dockerfile, dest / "Dockerfile")
    if root:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(root / name, dest / name)
        shutil.copytree(
            package_dir,
            dest / "starburst_executor",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )
    (dest / "requirements.txt").write_text(requirements)
    return dest


@dataclass
class ImageBuild:
    """What ``build_image`` did or would do."""

    image: str
    tag: str
    skipped: bool
    commands: list[list[str]] = field(default_factory=list)


def build_image(
    config: AwsConfig,
    clients: AwsClients,
    *,
    requirements: str = "",
    context_dir: Path,
    runner: CommandRunner = run_command,
    dry_run: bool = False,
    platforms: Sequence[str] = PLATFORMS,
) -> ImageBuild:
    """Build and push the worker image unless ECR already holds its tag."""
    config.require("ecr_repository", "account_id")
    tag = image_tag(requirements)
    repository = (
        f"{config.account_id}.dkr.ecr.{config.region}.amazonaws.com/{config.ecr_repository}"
    )
    image = f"{repository}:{tag}"
    ecr = clients("ecr")
    try:
        found = ecr.describe_images(
            repositoryName=config.ecr_repository, imageIds=[{"imageTag": tag}]
        ).get("imageDetails", [])
    except ecr.exceptions.ImageNotFoundException:
        found = []
    except Exception as err:
        raise translate(err, "ecr:DescribeImages", config.ecr_repository) from err
    if found:
        return ImageBuild(image, tag, skipped=True)
    build_context(context_dir, requirements)
    try:
        auth = ecr.get_authorization_token()["authorizationData"][0]
    except Exception as err:
        raise translate(err, "ecr:GetAuthorizationToken", config.ecr_repository) from err
    user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
    login = ["docker", "login", "--username", user, "--password-stdin", auth["proxyEndpoint"]]
    build = [
        "docker",
        "buildx",
        "build",
        "--platform",
        ",".join(platforms),
        "--build-arg",
        f"PYTHON_VERSION={python_minor()}",
        "--build-arg",
        f"STARBURST_VERSION={__version__}",
        "--tag",
        image,
        "--push",
        str(context_dir),
    ]
    result = ImageBuild(image, tag, skipped=False, commands=[login, build])
    if not dry_run:
        runner(login, password.encode())
        runner(build, None)
    return result
