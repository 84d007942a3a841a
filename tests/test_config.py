"""Where settings come from: argument, then environment, then saved setup, then default."""

from __future__ import annotations

import pytest

from starburst_executor._runtime import resolve_location
from starburst_executor.aws.settings import AwsConfig, save_config
from starburst_executor.config import DEFAULT_PREFIX, DEFAULT_REGION


@pytest.fixture
def saved(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STARBURST_CONFIG_DIR", str(tmp_path))
    for name in ("STARBURST_REGION", "STARBURST_PREFIX", "AWS_DEFAULT_REGION"):
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
    for name in ("STARBURST_REGION", "STARBURST_PREFIX", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    location, _ = resolve_location(endpoint_url="http://127.0.0.1:9", bucket="my-bucket")
    assert (location.prefix, location.region) == (DEFAULT_PREFIX, DEFAULT_REGION)
