"""Where settings come from: argument, then environment, then saved setup, then default."""

from __future__ import annotations

import pytest

from starburst_executor._runtime import resolve_location
from starburst_executor.aws.settings import AwsConfig, save_config
from starburst_executor.config import DEFAULT_PREFIX, DEFAULT_REGION


@pytest.fixture
def saved(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STARBURST_CONFIG_DIR", str(tmp_path))
    for name in ("STARBURST_REGION", "STARBURST_PREFIX", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    save_config(AwsConfig(region="eu-west-1", bucket="saved-bucket", prefix="saved-prefix"))


def test_ecs_location_takes_the_saved_setup_when_nothing_else_is_given(saved):
    location, _ = resolve_location(backend="ecs")
    assert (location.bucket, location.prefix, location.region) == (
        "saved-bucket",
        "saved-prefix",
        "eu-west-1",
    )


def test_environment_beats_the_saved_setup(saved, monkeypatch):
    monkeypatch.setenv("STARBURST_PREFIX", "env-prefix")
    monkeypatch.setenv("STARBURST_REGION", "us-west-2")
    location, _ = resolve_location(backend="ecs")
    assert (location.prefix, location.region) == ("env-prefix", "us-west-2")


def test_arguments_beat_the_environment_and_the_saved_setup(saved, monkeypatch):
    monkeypatch.setenv("STARBURST_PREFIX", "env-prefix")
    monkeypatch.setenv("STARBURST_REGION", "us-west-2")
    location, _ = resolve_location(backend="ecs", prefix="arg-prefix", region="ap-south-1")
    assert (location.prefix, location.region) == ("arg-prefix", "ap-south-1")


def test_defaults_apply_to_an_explicit_endpoint(monkeypatch):
    for name in ("STARBURST_REGION", "STARBURST_PREFIX", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    location, _ = resolve_location(endpoint_url="http://127.0.0.1:9", bucket="my-bucket")
    assert (location.prefix, location.region) == (DEFAULT_PREFIX, DEFAULT_REGION)


# -- the launch spec -----------------------------------------------------------------


def _ecs_launcher(options, **location):  # type: ignore[no-untyped-def]
    from starburst_executor._runtime import launch_spec, make_launcher

    loc, _ = resolve_location(backend="ecs", **location)
    return make_launcher(launch_spec("ecs", options, loc.region), loc)


@pytest.fixture
def saved_placement(saved):  # type: ignore[no-untyped-def]
    save_config(
        AwsConfig(
            region="eu-west-1",
            bucket="saved-bucket",
            cluster="saved-cluster",
            subnets=("subnet-saved",),
            security_groups=("sg-saved",),
            image="saved/image:1",
            execution_role_arn="arn:aws:iam::123456789012:role/exec",
            task_role_arn="arn:aws:iam::123456789012:role/task",
        )
    )


def test_the_spec_takes_each_field_from_its_argument_else_the_saved_setup(saved_placement):
    launcher = _ecs_launcher({"cluster": "arg-cluster", "cpu": 2, "memory": "4GB"})
    spec = launcher.spec
    assert (spec.cluster, spec.subnets, spec.security_groups, spec.image) == (
        "arg-cluster",
        ("subnet-saved",),
        ("sg-saved",),
        "saved/image:1",
    )
    assert (spec.cpu, spec.memory_mb, spec.launch_type, spec.use_spot) == (
        2,
        4096,
        "FARGATE",
        False,
    )


def test_a_region_other_than_the_saved_setups_is_refused_naming_both(saved_placement):
    from starburst_executor.errors import ConfigError

    with pytest.raises(ConfigError, match=r"launch in ap-south-1.*run for eu-west-1"):
        _ecs_launcher({}, region="ap-south-1")


def test_the_saved_region_beats_the_aws_sdks_shell_default(saved_placement, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    launcher = _ecs_launcher({})
    assert launcher.spec.region == "eu-west-1"
    assert launcher.clients.region == "eu-west-1"  # type: ignore[attr-defined]
    # Also with a bucket of the user's own: the saved setup still says where ECS is.
    location, _ = resolve_location(backend="ecs", bucket="users-bucket")
    assert location.region == "eu-west-1"
    monkeypatch.setenv("STARBURST_REGION", "eu-west-1")  # ours ranks above the saved setup
    assert _ecs_launcher({}).spec.region == "eu-west-1"


def test_an_explicit_region_reaches_the_launcher(saved_placement, monkeypatch):
    """With placement for that region given, an explicit region is used as is (before,
    the saved setup's region silently won)."""
    launcher = _ecs_launcher(
        {"cluster": "c", "subnets": ["s"], "security_groups": ["g"], "image": "i:1"},
        region="ap-south-1",
    )
    assert launcher.spec.region == "ap-south-1"
    assert launcher.clients.region == "ap-south-1"  # type: ignore[attr-defined]


def test_the_manifest_records_the_spec_and_rebuilds_it(saved_placement):
    from starburst_executor._core.manifest import Manifest
    from starburst_executor.config import SessionSettings

    spec = _ecs_launcher({"use_spot": True, "max_hourly_cost": 2.5}).spec
    manifest = Manifest(
        session_id="session-00000000000000ab",
        mode="detached",
        created=1.0,
        deadline=2.0,
        settings=SessionSettings(max_workers=3),
        fingerprint={},
        launch=spec,
    )
    again = Manifest.from_json(manifest.to_json(), key="k")
    assert again.launch == spec and again.backend == "ecs"


def test_a_manifest_written_before_the_spec_still_loads():
    import json

    from starburst_executor._core.manifest import Manifest

    raw = {
        "schema_version": 1,
        "session_id": "session-00000000000000ac",
        "mode": "detached",
        "backend": "ecs",
        "created": 1.0,
        "deadline": 2.0,
        "settings": {"max_workers": 2, "cpu": 2.0, "memory_mb": 4096},
        "fingerprint": {},
        "launch": {
            "region": "eu-west-1",
            "cluster": "c",
            "subnets": ["s"],
            "security_groups": [],
            "image": "i:1",
            "launch_type": "FARGATE",
            "use_spot": False,
            "instance_type": None,
            "cpu": 2.0,
            "memory_mb": 4096,
            "max_hourly_cost": None,
        },
    }
    manifest = Manifest.from_json(json.dumps(raw).encode(), key="k")
    assert manifest.launch.cpu == 2.0 and manifest.launch.subnets == ("s",)
    assert manifest.backend == "ecs" and manifest.settings.max_workers == 2


@pytest.mark.parametrize("kind", ["DetachedExecutor", "StarburstExecutor"])
def test_an_unknown_option_is_a_type_error_naming_it(kind, starburst_home):
    import starburst_executor

    executor = getattr(starburst_executor, kind)
    with pytest.raises(
        TypeError, match=f"{kind}.. got an unexpected keyword argument 'max_worker'"
    ):
        executor(max_worker=2)
    if kind == "StarburstExecutor":
        with pytest.raises(TypeError, match="'session_timeout'"):
            executor(session_timeout=5)  # a DetachedExecutor option


def test_ecs_options_on_local_workers_are_named(starburst_home):
    from starburst_executor import DetachedExecutor
    from starburst_executor.errors import ConfigError

    with pytest.raises(ConfigError, match="use_spot, cluster apply to the ECS backend"):
        DetachedExecutor(use_spot=True, cluster="c")


def test_a_bad_option_is_refused_before_the_local_server_starts(tmp_path, monkeypatch):
    from starburst_executor import DetachedExecutor
    from starburst_executor.errors import ConfigError

    home = tmp_path / "untouched-home"
    monkeypatch.setenv("STARBURST_HOME", str(home))
    with pytest.raises(ConfigError, match="invalid memory 'lots'"):
        DetachedExecutor(memory="lots")
    with pytest.raises(ConfigError, match="cpu must be > 0"):
        DetachedExecutor(cpu=0)
    with pytest.raises(ConfigError, match="launch_type, use_spot apply to the ECS backend"):
        DetachedExecutor(launch_type="FARGATE", use_spot=False)  # given, even as defaults
    assert not home.exists()  # no server was started, nothing was written


def test_every_keyword_the_executors_took_before_is_still_taken():
    from starburst_executor.config import DetachedOptions, SessionOptions

    shared = {
        "cpu", "memory", "absolute_timeout", "seed", "launch_type", "instance_type",
        "use_spot", "image", "cluster", "subnets", "security_groups", "max_hourly_cost",
        "backend", "endpoint_url", "bucket", "prefix", "region", "ship_code",
    }  # fmt: skip
    detached = shared | {"min_workers", "session_timeout", "lease_seconds", "max_retries"}
    assert SessionOptions.__optional_keys__ == shared
    assert detached <= DetachedOptions.__optional_keys__


def test_the_cli_takes_the_region_aws_configure_saved_when_nothing_else_names_one(
    tmp_path, monkeypatch
):
    import argparse
    import os

    from starburst_executor.cli import _region
    from starburst_executor.errors import ConfigError

    for name in ("STARBURST_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STARBURST_CONFIG_DIR", str(tmp_path / "no-setup"))
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    assert _region(argparse.Namespace(region=None)) == "eu-north-1"
    assert _region(argparse.Namespace(region="sa-east-1")) == "sa-east-1"
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    with pytest.raises(ConfigError, match="no AWS region: pass --region"):
        _region(argparse.Namespace(region=None))
