"""The worker image's inputs without Docker: the lock, the wheel, the tag, the commands."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import zipfile
from pathlib import Path

import cloudpickle
import pytest
from helpers import starburst

from starburst_executor._version import __version__
from starburst_executor.aws.image import (
    BUILDER,
    build_context,
    docker_commands,
    parse_platforms,
    plan_image,
    platforms_needed,
)
from starburst_executor.aws.settings import AwsConfig
from starburst_executor.doctor import check_docker
from starburst_executor.envlock import EnvLock, Wheel, build_wheel, capture_lock, image_tag
from starburst_executor.errors import ConfigError

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst-worker:py311-0123456789abcdef"
CONTEXT = Path("/tmp/ctx")


def test_amd64_only_uses_the_default_builder():
    assert docker_commands(IMAGE, CONTEXT, ["linux/amd64"], "3.11", builder_exists=False) == [
        [
            "docker",
            "buildx",
            "build",
            "--platform",
            "linux/amd64",
            "--provenance=false",
            "--build-arg",
            "PYTHON_VERSION=3.11",
            "--tag",
            IMAGE,
            "--push",
            "/tmp/ctx",
        ]
    ]


def test_arm64_only_uses_the_default_builder():
    assert docker_commands(IMAGE, CONTEXT, ["linux/arm64"], "3.12", builder_exists=False) == [
        [
            "docker",
            "buildx",
            "build",
            "--platform",
            "linux/arm64",
            "--provenance=false",
            "--build-arg",
            "PYTHON_VERSION=3.12",
            "--tag",
            IMAGE,
            "--push",
            "/tmp/ctx",
        ]
    ]


def test_both_platforms_create_a_docker_container_builder_when_missing():
    both = ["linux/amd64", "linux/arm64"]
    build = [
        "docker",
        "buildx",
        "build",
        "--builder",
        BUILDER,
        "--platform",
        "linux/amd64,linux/arm64",
        "--provenance=false",
        "--build-arg",
        "PYTHON_VERSION=3.11",
        "--tag",
        IMAGE,
        "--push",
        "/tmp/ctx",
    ]
    create = [
        "docker",
        "buildx",
        "create",
        "--name",
        "starburst-builder",
        "--driver",
        "docker-container",
        "--bootstrap",
    ]
    assert docker_commands(IMAGE, CONTEXT, both, "3.11", builder_exists=False) == [create, build]
    assert docker_commands(IMAGE, CONTEXT, both, "3.11", builder_exists=True) == [build]


def test_platforms_follow_the_configured_capacity():
    fargate_only = AwsConfig(region="us-east-1")
    x86 = AwsConfig(region="us-east-1", capacity_providers={"c7i.xlarge": "cp-1"})
    graviton = AwsConfig(region="us-east-1", capacity_providers={"c7g.xlarge": "cp-2"})
    assert platforms_needed(fargate_only) == ("linux/amd64",)
    assert platforms_needed(x86) == ("linux/amd64",)
    assert platforms_needed(graviton) == ("linux/amd64", "linux/arm64")
    assert platforms_needed(fargate_only, ["m7gd.large"]) == ("linux/amd64", "linux/arm64")
    assert parse_platforms("arm64") == ("linux/arm64",)
    assert parse_platforms("both") == ("linux/amd64", "linux/arm64")
    assert parse_platforms("linux/arm64,linux/amd64") == ("linux/amd64", "linux/arm64")
    with pytest.raises(ConfigError, match="unknown platform 'linux/s390x'"):
        parse_platforms("linux/s390x")


def test_the_lock_pins_every_installed_distribution_at_its_version():
    lock = capture_lock()
    pins = dict(pin.split("==") for pin in lock.pins)
    assert pins["cloudpickle"] == cloudpickle.__version__
    assert pins["boto3"] == importlib.metadata.version("boto3")
    assert pins["pytest"] == importlib.metadata.version("pytest")
    assert "starburst-executor" not in pins and "pip" not in pins
    reasons = {item.name: item.reason for item in lock.left_out}
    assert "wheel" in reasons["starburst-executor"]
    assert lock.python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert lock.text().splitlines()[1] == f"# python {lock.python}"


def test_requirements_narrow_the_lock_to_what_they_need(tmp_path):
    lock = capture_lock("xmltodict\nnot-installed-here>=1.0  # kept as written\n")
    names = {pin.split("==")[0].split(">=")[0] for pin in lock.pins}
    # What was asked for, what the package needs (boto3 and its own needs), and no more.
    assert {"xmltodict", "boto3", "botocore", "jmespath", "cloudpickle", "aiobotocore"} <= names
    assert "not-installed-here>=1.0" in lock.pins
    assert "pytest" not in names and "moto" not in names
    assert f"cloudpickle=={cloudpickle.__version__}" in lock.pins
    with pytest.raises(ConfigError, match="line 2"):
        capture_lock("xmltodict\n-e ./mylib\n")


def test_an_editable_install_is_left_out_and_said_why(tmp_path, monkeypatch):
    info = tmp_path / "site" / "mytool-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mytool\nVersion: 1.2\n")
    (info / "direct_url.json").write_text(
        json.dumps({"url": "file:///home/me/mytool", "dir_info": {"editable": True}})
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    lock = capture_lock()
    assert not any(pin.startswith("mytool==") for pin in lock.pins)
    (entry,) = [item for item in lock.left_out if item.name == "mytool"]
    assert entry.version == "1.2"
    assert "editable install (file:///home/me/mytool)" in entry.reason
    assert "travel with each session as code" in entry.reason


def test_the_wheel_is_reproducible_and_holds_the_running_code():
    first, second = build_wheel(), build_wheel()
    assert first.data == second.data and first.filename.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(__import__("io").BytesIO(first.data)) as archive:
        names = set(archive.namelist())
        runner = archive.read("starburst_executor/worker/runner.py")
    assert "starburst_executor/worker/code.py" in names
    assert f"starburst_executor-{__version__}.dist-info/RECORD" in names
    assert not any("__pycache__" in n for n in names)
    assert (
        runner == (Path(__file__).parents[1] / "starburst_executor/worker/runner.py").read_bytes()
    )


def test_the_tag_follows_the_lock_and_the_wheel():
    lock = EnvLock(python="3.11", pins=("cloudpickle==3.1.1",))
    wheel = Wheel("w.whl", b"one")
    tag = image_tag(lock, wheel)
    assert tag.startswith("py311-") and tag == image_tag(lock, Wheel("w.whl", b"one"))
    assert image_tag(EnvLock(python="3.11", pins=("cloudpickle==3.1.2",)), wheel) != tag
    assert image_tag(lock, Wheel("w.whl", b"two")) != tag  # the library's code changed
    assert image_tag(EnvLock(python="3.12", pins=lock.pins), wheel).startswith("py312-")


def test_the_build_context_holds_everything_the_dockerfile_installs(tmp_path):
    plan = plan_image("xmltodict\n")
    context = build_context(tmp_path / "ctx", plan)
    assert (context / "requirements.lock").read_text() == plan.lock.text()
    assert (context / "wheels" / plan.wheel.filename).read_bytes() == plan.wheel.data
    assert json.loads((context / "lock.json").read_text())["tag"] == plan.tag
    dockerfile = (context / "Dockerfile").read_text()
    assert "RUN sh /opt/starburst/context/install.sh" in dockerfile
    install = (context / "install.sh").read_text()
    assert f"-r requirements.lock wheels/{plan.wheel.filename}" in install


def test_image_show_prints_the_lock_the_tag_and_what_was_left_out():
    result = starburst("image", "show")
    assert result.returncode == 0, result.stderr
    plan = plan_image()
    assert f"tag: {plan.tag}" in result.stdout
    assert f"  cloudpickle=={cloudpickle.__version__}" in result.stdout
    assert "starburst-executor" in result.stdout.split("left out")[1]
    data = json.loads(starburst("image", "show", "--json").stdout)
    assert data["tag"] == plan.tag and data["pins"] == list(plan.lock.pins)


def test_doctor_names_each_missing_docker_part_with_its_fix(tmp_path):
    def which(name: str) -> str | None:
        return "/usr/bin/docker"

    missing = check_docker(need_arm64=False, which=lambda _: None)
    assert [(c.name, c.level) for c in missing] == [("docker", "warn")]
    down = check_docker(need_arm64=False, which=which, probe=lambda argv: False)
    assert down[-1].name == "docker daemon" and "systemctl start docker" in down[-1].fix
    no_buildx = check_docker(need_arm64=False, which=which, probe=lambda argv: "info" in argv)
    assert no_buildx[-1].name == "docker buildx" and "buildx" in no_buildx[-1].fix
    ready = check_docker(
        need_arm64=True,
        which=which,
        probe=lambda argv: True,
        machine="x86_64",
        binfmt=tmp_path / "qemu-aarch64",
    )
    assert ready[-1].name == "arm64 emulation" and ready[-1].level == "warn"
    assert "tonistiigi/binfmt --install arm64" in ready[-1].fix
    (tmp_path / "qemu-aarch64").write_text("enabled\n")
    registered = check_docker(
        need_arm64=True,
        which=which,
        probe=lambda argv: True,
        machine="x86_64",
        binfmt=tmp_path / "qemu-aarch64",
    )
    assert registered[-1].level == "ok"
    on_arm = check_docker(need_arm64=True, which=which, probe=lambda argv: True, machine="aarch64")
    assert [c.name for c in on_arm] == ["docker", "docker daemon", "docker buildx"]
