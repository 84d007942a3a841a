"""The ECS backend against moto's ECS, with real worker processes (see ecs_harness)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time

import boto3
import pytest
import tasks
from ecs_harness import (
    HOST_TERMINATED_REASON,
    INIT_ERROR_REASON,
    OOM_REASON,
    PULL_ERROR_REASON,
    SPOT_REASON,
    forget_stopped,
    harness,
    inject,
    manual_transitions,
    play_times,
    record_calls,
)
from helpers import starburst, wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor.aws.settings import load_config
from starburst_executor.aws.sizes import architecture_for
from starburst_executor.errors import WorkerDied
from starburst_executor.launch.ecs import quota_window

pytestmark = pytest.mark.ecs
TIMEOUT = 180
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst-worker:test"


@pytest.fixture(scope="session")
def moto_url():  # type: ignore[no-untyped-def]
    from moto.server import ThreadedMotoServer

    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"  # AWS managed policies exist
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    manual_transitions(url)
    yield url
    server.stop()


@pytest.fixture
def aws_env(moto_url, monkeypatch, tmp_path, starburst_home):  # type: ignore[no-untyped-def]
    """Control plane on moto; the data plane on the embedded SeaweedFS server."""
    monkeypatch.setenv("STARBURST_AWS_ENDPOINT", moto_url)
    monkeypatch.setenv("STARBURST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return moto_url


def _active_clusters(ecs) -> list[str]:  # type: ignore[no-untyped-def]
    arns = ecs.list_clusters()["clusterArns"]
    found = ecs.describe_clusters(clusters=arns)["clusters"] if arns else []
    return [c["clusterName"] for c in found if c["status"] == "ACTIVE"]  # deleted = INACTIVE


def _inventory(url: str) -> dict[str, list[str]]:
    kw = {"endpoint_url": url, "region_name": "us-east-1"}
    iam = boto3.client("iam", **kw)
    ec2 = boto3.client("ec2", **kw)
    return {
        "buckets": [b["Name"] for b in boto3.client("s3", **kw).list_buckets()["Buckets"]],
        "clusters": _active_clusters(boto3.client("ecs", **kw)),
        "roles": [r["RoleName"] for r in iam.list_roles()["Roles"] if "starburst" in r["RoleName"]],
        "log_groups": [
            g["logGroupName"]
            for g in boto3.client("logs", **kw).describe_log_groups()["logGroups"]
            if "starburst" in g["logGroupName"]
        ],
        "repositories": [
            r["repositoryName"]
            for r in boto3.client("ecr", **kw).describe_repositories()["repositories"]
        ],
        "security_groups": [
            g["GroupName"]
            for g in ec2.describe_security_groups()["SecurityGroups"]
            if g["GroupName"].startswith("starburst")
        ],
        "launch_templates": [
            t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]
        ],
        "auto_scaling_groups": [
            g["AutoScalingGroupName"]
            for g in boto3.client("autoscaling", **kw).describe_auto_scaling_groups()[
                "AutoScalingGroups"
            ]
        ],
        "instance_profiles": [
            p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]
        ],
        "capacity_providers": [
            p["name"]
            # moto needs the names; these are the ones the tests ask setup for
            for p in boto3.client("ecs", **kw).describe_capacity_providers(
                capacityProviders=["starburst-c7g-xlarge"]
            )["capacityProviders"]
            if p["name"].startswith("starburst") and p.get("status") == "ACTIVE"
        ],
    }


def test_setup_is_idempotent_and_teardown_leaves_nothing(aws_env):
    before = _inventory(aws_env)
    plan = json.loads(starburst("setup", "--dry-run", "--json").stdout)
    assert {s["action"] for s in plan["steps"]} == {"create"}
    assert _inventory(aws_env) == before  # a dry run creates nothing

    first = starburst("setup", "--json")
    assert first.returncode == 0, first.stderr
    steps = json.loads(first.stdout)["steps"]
    assert {s["kind"] for s in steps} >= {
        "s3-bucket",
        "log-group",
        "ecr-repository",
        "iam-role",
        "security-group",
        "ecs-cluster",
    }
    assert all(s["action"] == "created" for s in steps)
    config = load_config()
    assert config is not None and config.bucket.startswith("starburst-123456789012")
    assert config.execution_role_arn.endswith("starburst-task-execution")
    assert config.subnets and config.security_groups

    second = json.loads(starburst("setup", "--json").stdout)["steps"]
    assert all(s["action"] == "exists" for s in second)  # idempotent

    kw = {"endpoint_url": aws_env, "region_name": "us-east-1"}
    s3 = boto3.client("s3", **kw)
    enc = s3.get_bucket_encryption(Bucket=config.bucket)
    assert (
        enc["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"][
            "SSEAlgorithm"
        ]
        == "AES256"
    )
    assert s3.get_public_access_block(Bucket=config.bucket)["PublicAccessBlockConfiguration"][
        "BlockPublicPolicy"
    ]
    policy = boto3.client("iam", **kw).get_role_policy(
        RoleName="starburst-task", PolicyName="starburst-session-data"
    )["PolicyDocument"]
    text = json.dumps(policy)
    assert f"arn:aws:s3:::{config.bucket}/starburst/sessions/*" in text and '"s3:*"' not in text

    down = starburst("teardown", "--json")
    assert down.returncode == 0, down.stderr
    assert _inventory(aws_env) == before


def test_setup_brings_roles_of_an_earlier_setup_up_to_date(aws_env):
    """Roles an earlier release made (a trust policy without aws:SourceAccount, a wider
    data policy, a managed policy missing) are updated in place; a user's own
    attachments stay."""
    assert starburst("setup", "--json").returncode == 0
    iam = boto3.client("iam", endpoint_url=aws_env, region_name="us-east-1")
    wanted_trust = iam.get_role(RoleName="starburst-task")["Role"]["AssumeRolePolicyDocument"]
    data_policy = {"RoleName": "starburst-task", "PolicyName": "starburst-session-data"}
    wanted_data = iam.get_role_policy(**data_policy)
    old_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.update_assume_role_policy(RoleName="starburst-task", PolicyDocument=json.dumps(old_trust))
    wide = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_role_policy(
        RoleName="starburst-task",
        PolicyName="starburst-session-data",
        PolicyDocument=json.dumps(wide),
    )
    managed = iam.list_attached_role_policies(RoleName="starburst-task-execution")
    arn = managed["AttachedPolicies"][0]["PolicyArn"]
    iam.detach_role_policy(RoleName="starburst-task-execution", PolicyArn=arn)
    users = iam.create_policy(PolicyName="users-own", PolicyDocument=json.dumps(wide))
    iam.attach_role_policy(RoleName="starburst-task", PolicyArn=users["Policy"]["Arn"])

    plan = {
        s["name"]: s for s in json.loads(starburst("setup", "--dry-run", "--json").stdout)["steps"]
    }
    assert plan["starburst-task"]["action"] == "update"
    assert plan["starburst-task-execution"]["action"] == "update"
    assert "sts:AssumeRole" not in json.dumps(plan)  # a plan names what changes, briefly
    done = starburst("setup", "--json")
    assert done.returncode == 0, done.stderr
    steps = {s["name"]: s for s in json.loads(done.stdout)["steps"]}
    assert steps["starburst-task"]["action"] == "updated"
    assert "trust policy" in steps["starburst-task"]["detail"]
    assert "starburst-session-data" in steps["starburst-task"]["detail"]
    assert steps["starburst-task-execution"]["action"] == "updated"
    role = iam.get_role(RoleName="starburst-task")["Role"]
    assert role["AssumeRolePolicyDocument"] == wanted_trust
    data = iam.get_role_policy(**data_policy)
    assert data["PolicyDocument"] == wanted_data["PolicyDocument"]
    attached = iam.list_attached_role_policies(RoleName="starburst-task-execution")
    assert arn in [p["PolicyArn"] for p in attached["AttachedPolicies"]]
    kept = iam.list_attached_role_policies(RoleName="starburst-task")["AttachedPolicies"]
    assert users["Policy"]["Arn"] in [p["PolicyArn"] for p in kept]  # the user's stays
    again = json.loads(starburst("setup", "--json").stdout)["steps"]
    assert all(s["action"] == "exists" for s in again)
    iam.detach_role_policy(RoleName="starburst-task", PolicyArn=users["Policy"]["Arn"])
    iam.delete_policy(PolicyArn=users["Policy"]["Arn"])
    assert starburst("teardown", "--delete-data").returncode == 0


def test_setup_adds_the_expiry_rule_to_an_existing_bucket_and_teardown_removes_it(aws_env):
    """The lifecycle rule is the backstop of session retention, also on a bucket of the
    user's; teardown takes our rule away and leaves the bucket and its other rules."""
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    s3.create_bucket(Bucket="users-own-bucket")
    theirs = {
        "ID": "their-rule",
        "Status": "Enabled",
        "Filter": {"Prefix": "tmp/"},
        "Expiration": {"Days": 1},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket="users-own-bucket", LifecycleConfiguration={"Rules": [theirs]}
    )
    result = starburst("setup", "--bucket", "users-own-bucket", "--expiry-days", "9", "--json")
    assert result.returncode == 0, result.stderr
    steps = {s["kind"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["s3-bucket"]["action"] == "exists"
    assert steps["s3-lifecycle"]["action"] == "created"
    rules = {
        r["ID"]: r
        for r in s3.get_bucket_lifecycle_configuration(Bucket="users-own-bucket")["Rules"]
    }
    assert set(rules) == {"their-rule", "starburst-expire-old-sessions"}
    assert rules["starburst-expire-old-sessions"]["Expiration"] == {"Days": 9}
    again = json.loads(starburst("setup", "--json").stdout)["steps"]
    assert all(s["action"] == "exists" for s in again)

    assert starburst("teardown").returncode == 0
    left = s3.get_bucket_lifecycle_configuration(Bucket="users-own-bucket")["Rules"]
    assert [r["ID"] for r in left] == ["their-rule"]
    assert "users-own-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def _ecs_config(aws_env):  # type: ignore[no-untyped-def]
    result = starburst("setup", "--json")
    assert result.returncode == 0, result.stderr
    config = load_config()
    assert config is not None
    return config


@pytest.fixture
def ecs_session(aws_env, prefix, starburst_home, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    config = _ecs_config(aws_env)
    from starburst_executor.store.local_server import LocalServer, read_credentials

    # Data plane: the embedded SeaweedFS, reached with its keys as the "task role".
    info = LocalServer(starburst_home).ensure_running()
    access, secret = read_credentials(starburst_home)
    monkeypatch.setenv("STARBURST_S3_ENDPOINT", info.endpoint_url)
    monkeypatch.setenv("STARBURST_BUCKET", "starburst")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    logs = tmp_path / "ecs-logs"
    logs.mkdir()
    task_role = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    with harness(aws_env, config.cluster, logs, task_role) as h:
        yield h
    starburst("teardown", "--delete-data")


def test_detached_on_ecs_completes_100_tasks_with_a_worker_stopped_mid_run(ecs_session, tmp_path):
    h = ecs_session
    path = tmp_path / "indices.txt"
    ex = DetachedExecutor(max_workers=3, backend="ecs", image=IMAGE, lease_seconds=3)
    try:
        calls = ex._runtime.launcher.clients.calls  # type: ignore[attr-defined]
        before, began = len(calls), time.monotonic()
        futures = [ex.submit(tasks.append_index, str(path), i) for i in range(100)]
        elapsed = time.monotonic() - began
        list_tasks = [c for c in calls[before:] if c.endswith(":ListTasks")]
        # Not a ListTasks per submit (100): a few per launch while the wanted count grows
        # (3 workers), and the poller's once a second (however slow the submits are).
        assert len(list_tasks) <= 10 + 3 * elapsed and len(list_tasks) < 50, (
            len(list_tasks),
            elapsed,
        )
        live = h.wait_for_tasks(3, timeout=TIMEOUT)
        for arn in live:
            overrides = h.overrides[arn]
            assert overrides["STARBURST_SESSION_ID"] == ex.session_id
            assert not any("SECRET" in k or "KEY" in k for k in overrides)  # ids only
        h.kill(live[0])  # a worker lost mid-run: its claim is taken over after the lease
        results = [f.result(timeout=TIMEOUT) for f in futures]
        assert results == list(range(100))
        assert sorted(set(int(x) for x in path.read_text().split())) == list(range(100))
        assert ex.status().completed == 100
        assert len(h.procs) >= 3
    finally:
        ex.cleanup(force=True)
    # cleanup stopped the session's ECS tasks; the harness kills their processes
    wait_until(
        lambda: (
            not [a for a in h.live() if h.overrides[a]["STARBURST_SESSION_ID"] == ex.session_id]
        ),
        "cleanup to stop the session's ECS workers",
    )


def test_ephemeral_on_ecs_completes_20_and_reports_oom(ecs_session):
    h = ecs_session
    with StarburstExecutor(max_workers=4, backend="ecs", image=IMAGE) as ex:
        assert list(ex.map(tasks.square, range(20), timeout=TIMEOUT)) == [i * i for i in range(20)]
        started = set(h.procs)
        doomed = ex.submit(tasks.sleep_for, 60)
        wait_until(lambda: [a for a in h.live() if a not in started], "the doomed call's task")
        (arn,) = [a for a in h.live() if a not in started]
        assert h.overrides[arn]["STARBURST_TASK_ID"] == doomed.task_id
        h.kill(arn, OOM_REASON)
        with pytest.raises(WorkerDied) as info:
            doomed.result(timeout=TIMEOUT)
        err = info.value
        assert err.out_of_memory and "OutOfMemory" in err.stopped_reason
        assert err.task_id == doomed.task_id and "memory" in str(err)
        assert f"/worker/{arn.rsplit('/', 1)[-1]}" in err.logs
    assert len([a for a in h.procs if a not in started]) == 1


def test_spot_interruption_is_retried(ecs_session, tmp_path):
    h = ecs_session
    marker = tmp_path / "started"
    with StarburstExecutor(max_workers=1, backend="ecs", image=IMAGE, use_spot=True) as ex:
        future = ex.submit(tasks.touch_then_wait, str(marker), str(tmp_path / "release"))
        first = h.wait_for_tasks(1, timeout=TIMEOUT)[0]
        wait_until(marker.exists, "the task to start")
        h.kill(first, SPOT_REASON)
        (tmp_path / "release").write_text("go")
        assert future.result(timeout=TIMEOUT) > 0
        assert len(h.procs) == 2  # the interrupted task ran again on a new worker


def test_task_definition_is_reused_when_it_matches(ecs_session):
    from starburst_executor._runtime import open_runtime

    first = open_runtime({"backend": "ecs", "image": IMAGE})
    second = open_runtime({"backend": "ecs", "image": IMAGE})
    other = open_runtime({"backend": "ecs", "image": IMAGE + "-other"})
    try:
        a = first.launcher.task_definition()  # type: ignore[attr-defined]
        b = second.launcher.task_definition()  # type: ignore[attr-defined]
        c = other.launcher.task_definition()  # type: ignore[attr-defined]
        assert a == b and c != a
    finally:
        for runtime in (first, second, other):
            runtime.close()


def test_graviton_and_quota_window():
    assert architecture_for("c7g.xlarge") == "ARM64"
    assert architecture_for("m7gd.2xlarge") == "ARM64"
    assert architecture_for("c7i.xlarge") == "X86_64"
    assert architecture_for("c8a.large") == "X86_64"
    assert quota_window(None, 4, 10, 7) == 7
    assert quota_window(32, 4, 6, 7) == 2  # 8 fit, 6 running
    assert quota_window(32, 4, 9, 7) == 0


def _push_tag(aws_env, repository: str, tag: str) -> None:  # type: ignore[no-untyped-def]
    boto3.client("ecr", endpoint_url=aws_env, region_name="us-east-1").put_image(
        repositoryName=repository,
        imageManifest=json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "0" * 64},
            }
        ),
        imageManifestMediaType="application/vnd.docker.distribution.manifest.v2+json",
        imageTag=tag,
    )


def test_image_build_context_and_exact_docker_commands(aws_env, tmp_path):
    from dataclasses import replace

    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.aws.image import build_image, plan_image

    config = _ecs_config(aws_env)
    issued: list[tuple[list[str], bytes | None]] = []
    probed: list[list[str]] = []

    def record(argv, stdin):  # type: ignore[no-untyped-def]
        issued.append((list(argv), stdin))

    def no_builder(argv):  # type: ignore[no-untyped-def]
        probed.append(list(argv))
        return False

    context = tmp_path / "context"
    result = build_image(
        config,
        AwsClients("us-east-1"),
        requirements="xmltodict\n",
        context_dir=context,
        runner=record,
        probe=no_builder,
    )
    tag = plan_image("xmltodict\n").tag
    assert result.tag == tag and result.image.endswith(f"/starburst-worker:{tag}")
    assert (context / "Dockerfile").read_text().startswith("# Worker image")
    assert (context / "requirements.lock").read_text() == result.plan.lock.text()
    assert (context / "wheels" / result.plan.wheel.filename).exists()
    (login, password), (build, none) = issued
    assert login[:3] == ["docker", "login", "--username"] and "--password-stdin" in login
    assert password and password.decode() not in " ".join(login + build)  # stdin only
    # Fargate-only capacity: amd64 alone, on the default builder (nothing probed).
    assert build[:5] == ["docker", "buildx", "build", "--platform", "linux/amd64"]
    assert ["--tag", result.image] == build[build.index("--tag") : build.index("--tag") + 2]
    assert build[-1] == str(context) and "--push" in build and none is None
    assert probed == []

    # Graviton capacity: both platforms, through a docker-container builder made first.
    issued.clear()
    graviton = replace(config, capacity_providers={"c7g.xlarge": "starburst-c7g"})
    both = build_image(
        graviton,
        AwsClients("us-east-1"),
        requirements="xmltodict\n",
        context_dir=tmp_path / "c3",
        runner=record,
        probe=no_builder,
    )
    assert both.platforms == ("linux/amd64", "linux/arm64")
    assert probed == [["docker", "buildx", "inspect", "starburst-builder"]]
    commands = [argv for argv, _ in issued]
    assert commands[1][:4] == ["docker", "buildx", "create", "--name"]
    assert "docker-container" in commands[1]
    assert commands[2][3:7] == [
        "--builder",
        "starburst-builder",
        "--platform",
        "linux/amd64,linux/arm64",
    ]

    # Once ECR holds the tag, nothing is built again.
    _push_tag(aws_env, config.ecr_repository, tag)
    issued.clear()
    again = build_image(
        config,
        AwsClients("us-east-1"),
        requirements="xmltodict\n",
        context_dir=tmp_path / "c2",
        runner=record,
    )
    assert again.skipped and not issued
    starburst("teardown", "--delete-data")


def test_first_ecs_use_names_the_missing_image_and_the_command(aws_env, starburst_home):
    from dataclasses import replace

    from starburst_executor._runtime import open_runtime
    from starburst_executor.aws.image import plan_image
    from starburst_executor.aws.settings import save_config
    from starburst_executor.errors import ConfigError

    config = _ecs_config(aws_env)
    try:
        assert not config.image
        tag = plan_image().tag
        with pytest.raises(ConfigError) as missing:
            open_runtime(
                {"backend": "ecs", "endpoint_url": "http://127.0.0.1:1", "bucket": "starburst"}
            )
        message = str(missing.value)
        assert "\n" not in message and tag in message and "`starburst image build`" in message
        _push_tag(aws_env, config.ecr_repository, tag)
        runtime = open_runtime(
            {"backend": "ecs", "endpoint_url": "http://127.0.0.1:1", "bucket": "starburst"}
        )
        try:
            assert runtime.spec.image.endswith(f"/{config.ecr_repository}:{tag}")
        finally:
            runtime.close()
        # A configured image whose tag left ECR (deleted, or another account's config).
        save_config(replace(config, image=runtime.spec.image.replace(tag, "py311-gone")))
        with pytest.raises(
            ConfigError, match=r"py311-gone is missing from ECR.*starburst image build"
        ):
            open_runtime(
                {"backend": "ecs", "endpoint_url": "http://127.0.0.1:1", "bucket": "starburst"}
            )
    finally:
        starburst("teardown", "--delete-data")


def test_cost_rates_and_the_hourly_cap(aws_env, monkeypatch):
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.aws.cost import actual_cost, ec2_rate, fargate_rate
    from starburst_executor.errors import CostLimitExceeded
    from starburst_executor.launch.ecs import EcsLauncher
    from starburst_executor.launch_spec import LaunchSpec

    rate = fargate_rate(4, 8192, spot=False)
    assert rate.per_worker_hour == pytest.approx(4 * 0.04048 + 8 * 0.004445)
    assert fargate_rate(4, 8192, spot=True).per_worker_hour < rate.per_worker_hour
    spot = ec2_rate(AwsClients("us-east-1"), "c7i.xlarge", 4, spot=True)
    assert spot.source == "spot-price-history"  # moto's spot price history
    on_demand = ec2_rate(AwsClients("us-east-1"), "c7i.xlarge", 2, spot=False)
    assert on_demand.source == "static-table"  # moto has no Pricing API: the fallback
    assert on_demand.per_worker_hour == pytest.approx(0.1785 / 2)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    tasks_run = [{"startedAt": start, "stoppedAt": start + dt.timedelta(minutes=30)}] * 2
    assert actual_cost(tasks_run, rate) == pytest.approx(rate.per_worker_hour)

    config = _ecs_config(aws_env)
    capped = EcsLauncher(
        config,
        LaunchSpec(backend="ecs", cpu=1, memory_mb=2048, image=IMAGE, max_hourly_cost=0.01),
        AwsClients("us-east-1"),
    )
    with pytest.raises(CostLimitExceeded, match="max_hourly_cost"):
        capped.launch("session-00000000000000aa", 1, {})
    assert capped.live_count("session-00000000000000aa") == 0  # nothing was launched
    starburst("teardown", "--delete-data")


def test_cost_keeps_counting_workers_that_ecs_has_forgotten(ecs_session):
    h = ecs_session
    ex = DetachedExecutor(max_workers=2, backend="ecs", image=IMAGE, session_timeout=2)
    try:
        futures = [ex.submit(tasks.sleep_for, 0.5) for _ in range(4)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [0.5] * 4
        wait_until(lambda: h.procs and set(h.procs) <= h.stopped, "the workers to idle out")
        registry = ex._runtime.loop.run(ex._session.workers())
        mine = [w for w in registry if w.get("task_arn")]
        # Each worker registered under its own task (from the task metadata endpoint).
        assert {w["task_arn"] for w in mine} == set(h.procs)
        assert all(w["state"] == "exited" and w["started"] <= w["updated"] for w in mine)
        # ... and kept the CloudWatch stream of its task for `starburst logs`.
        streams = {ex._runtime.launcher.log_stream(w["task_arn"]) for w in mine}  # type: ignore[attr-defined]
        assert {w["logs"] for w in mine} == streams == set(ex.worker_logs())
        ecs = ex._runtime.launcher.clients("ecs")  # type: ignore[attr-defined]
        play_times(ecs, h)
        listed = ex.cost()["actual_to_date"]
        forget_stopped(ecs, h)  # as AWS does about an hour after a task stops
        forgotten = ex.cost()["actual_to_date"]
        print(f"cost while ECS lists the tasks {listed}, after it forgot them {forgotten}")
        assert isinstance(listed, float) and listed > 0
        assert forgotten == pytest.approx(listed, rel=0.5)
    finally:
        ex.cleanup(force=True)


def test_scale_on_ecs(ecs_session, tmp_path):
    h = ecs_session
    ex = DetachedExecutor(max_workers=4, backend="ecs", image=IMAGE)
    try:
        release, started = tmp_path / "release", tmp_path / "started"
        busy = ex.submit(tasks.touch_then_wait, str(started), str(release))
        assert ex.scale(2) == 1  # the submit launched one
        h.wait_for_tasks(2, timeout=TIMEOUT)
        assert ex.cost()["running_workers"] == 2
        wait_until(started.exists, "the task to start")
        assert ex.scale(1) == -1  # StopTask for the idle worker, not the busy one
        wait_until(lambda: len(h.live()) == 1, "the idle ECS worker to stop")
        release.write_text("go")
        assert busy.result(timeout=TIMEOUT) == int(started.read_text())
        assert busy.attempt == 1  # not handed back by a stopped worker
        assert ex.scale(0) == -1
        wait_until(lambda: not h.live(), "every ECS worker to stop")
        assert ex._runtime.launcher.live_count(ex.session_id) == 0
    finally:
        ex.cleanup(force=True)


def test_setup_with_ec2_spot_capacity_for_graviton(aws_env):
    before = _inventory(aws_env)
    result = starburst("setup", "--ec2", "c7g.xlarge", "--ec2-spot", "--json")
    assert result.returncode == 0, result.stderr
    kinds = {s["kind"] for s in json.loads(result.stdout)["steps"]}
    assert {"launch-template", "auto-scaling-group", "capacity-provider"} <= kinds
    config = load_config()
    assert config is not None
    assert config.capacity_providers == {"c7g.xlarge": "starburst-c7g-xlarge"}
    kw = {"endpoint_url": aws_env, "region_name": "us-east-1"}
    template = boto3.client("ec2", **kw).describe_launch_template_versions(
        LaunchTemplateName="starburst-c7g-xlarge"
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert template["InstanceType"] == "c7g.xlarge"
    assert template["InstanceMarketOptions"]["MarketType"] == "spot"
    assert template["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is True
    user_data = base64.b64decode(template["UserData"]).decode()
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in user_data
    # IMDSv2 only, reachable from a bridge-networked worker (one hop more).
    assert template["MetadataOptions"]["HttpTokens"] == "required"
    assert template["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    cluster = boto3.client("ecs", **kw).describe_clusters(clusters=[config.cluster])["clusters"][0]
    assert "starburst-c7g-xlarge" in cluster["capacityProviders"]

    from starburst_executor._runtime import open_runtime

    runtime = open_runtime(
        {"backend": "ecs", "image": IMAGE, "launch_type": "EC2", "instance_type": "c7g.xlarge"}
    )
    try:
        launcher = runtime.launcher
        arn = launcher.task_definition()  # type: ignore[attr-defined]
        definition = boto3.client("ecs", **kw).describe_task_definition(taskDefinition=arn)[
            "taskDefinition"
        ]
        assert definition["runtimePlatform"]["cpuArchitecture"] == "ARM64"
        assert definition["networkMode"] == "bridge"  # awsvpc on EC2 has no public IP
        params = launcher._run_params("session-00000000000000bb", 1, {})  # type: ignore[attr-defined]
        assert "networkConfiguration" not in params
        env = params["overrides"]["containerOverrides"][0]["environment"]
        assert {"name": "STARBURST_SPOT_WATCH", "value": "1"} in env  # tests/test_spot.py
        assert params["capacityProviderStrategy"] == [
            {"capacityProvider": "starburst-c7g-xlarge", "weight": 1}
        ]
    finally:
        runtime.close()
    down = starburst("teardown", "--json")
    assert down.returncode == 0, down.stderr
    assert _inventory(aws_env) == before


# -- what real AWS does that moto does not (issue 13) ------------------------------------


def _setup_in_process(aws_env, **kwargs):  # type: ignore[no-untyped-def]
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.aws.settings import AwsConfig, save_config
    from starburst_executor.aws.setup import Setup

    clients = AwsClients("us-east-1")
    setup = Setup(clients, retry_delay=0.01)
    return clients, setup, lambda: save_config(setup.run(AwsConfig(region="us-east-1"), **kwargs))


def test_setup_creates_the_ecs_service_linked_role_and_retries_create_cluster(aws_env):
    from starburst_executor.aws.setup import ECS_SERVICE_LINKED_PATH

    kw = {"endpoint_url": aws_env, "region_name": "us-east-1"}
    iam = boto3.client("iam", **kw)
    for role in iam.list_roles(PathPrefix=ECS_SERVICE_LINKED_PATH)["Roles"]:
        iam.delete_service_linked_role(RoleName=role["RoleName"])  # an account new to ECS
    clients, setup, run = _setup_in_process(aws_env, ec2_instance_types=["c7g.xlarge"])
    pending = (
        "Unable to assume the service linked role. "
        "Please verify that the ECS service linked role exists."
    )
    create = inject(
        clients("ecs"),
        "CreateCluster",
        [{"Error": {"Code": "InvalidParameterException", "Message": pending}}] * 2,
    )
    busy = inject(
        clients("ecs"),
        "PutClusterCapacityProviders",
        [{"Error": {"Code": "ResourceInUseException", "Message": "The cluster is busy."}}],
    )
    run()
    try:
        assert len(create) == 2 and len(busy) == 1  # both answered, then retried
        calls = clients.calls
        assert calls.index("iam:CreateServiceLinkedRole") < calls.index("ecs:CreateCluster")
        assert iam.list_roles(PathPrefix=ECS_SERVICE_LINKED_PATH)["Roles"]
        config = load_config()
        assert config is not None
        cluster = boto3.client("ecs", **kw).describe_clusters(clusters=[config.cluster])
        assert "starburst-c7g-xlarge" in cluster["clusters"][0]["capacityProviders"]
        steps = {s.kind: s.action for s in setup.steps}
        assert steps["service-linked-role"] == "created"
        assert "service-linked-role" not in {c["kind"] for c in config.created}  # kept
    finally:
        starburst("teardown", "--delete-data")


def test_teardown_waits_for_the_group_and_retries_what_is_still_in_use(aws_env):
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.aws.setup import teardown

    before = _inventory(aws_env)
    result = starburst("setup", "--ec2", "c7g.xlarge", "--json")
    assert result.returncode == 0, result.stderr
    config = load_config()
    assert config is not None
    clients = AwsClients("us-east-1")
    deleting = {
        "AutoScalingGroupName": "starburst-c7g-xlarge",
        "Status": "Delete in progress",
        "Instances": [{"InstanceId": "i-0123456789abcdef0", "LifecycleState": "Terminating"}],
    }
    still_there = inject(
        clients("autoscaling"), "DescribeAutoScalingGroups", [{"AutoScalingGroups": [deleting]}] * 2
    )
    in_use = "resource sg-1 has a dependent object"
    group = inject(
        clients("ec2"),
        "DeleteSecurityGroup",
        [{"Error": {"Code": "DependencyViolation", "Message": in_use}}] * 2,
    )
    cluster = inject(
        clients("ecs"),
        "DeleteCluster",
        [
            {
                "Error": {
                    "Code": "ClusterContainsContainerInstancesException",
                    "Message": "The Cluster cannot be deleted while Container Instances "
                    "are active.",
                }
            }
        ],
    )
    steps = teardown(config, clients, delete_data=True, retry_delay=0.01)
    assert all(s.action == "deleted" for s in steps), steps
    assert len(still_there) == 2 and len(group) == 2 and len(cluster) == 1
    # Asked again until the group was gone (injected answers are not in clients.calls).
    assert clients.calls.count("autoscaling:DescribeAutoScalingGroups") == 1
    assert _inventory(aws_env) == before


def test_fargate_sizes_are_checked_against_the_table():
    from starburst_executor.errors import ConfigError, InvalidTaskSize
    from starburst_executor.launch_spec import LaunchSpec

    with pytest.raises(InvalidTaskSize) as info:
        LaunchSpec(backend="ecs", cpu=8, memory_mb=2048, image=IMAGE)
    assert info.value.nearest[0] == (8, 16384)
    assert (1, 2048) in info.value.nearest and (0.25, 2048) in info.value.nearest
    assert "cpu=8 with memory=16384 MB" in str(info.value)
    with pytest.raises(InvalidTaskSize, match=r"nearest valid: cpu=0\.25 with memory=2048"):
        LaunchSpec(backend="ecs", cpu=0.25, memory_mb=3000, image=IMAGE)
    with pytest.raises(ConfigError, match="cpu=4 with memory=30720"):
        LaunchSpec(backend="ecs", cpu=3, memory_mb=40000, image=IMAGE)
    for cpu, memory in ((0.25, 512), (1, 8192), (8, 20480), (16, 122880)):
        LaunchSpec(backend="ecs", cpu=cpu, memory_mb=memory, image=IMAGE)
    LaunchSpec(
        backend="ecs",
        cpu=8,
        memory_mb=2048,
        image=IMAGE,
        launch_type="EC2",
        instance_type="c7i.4xlarge",
    )


def test_ecs_ami_fallback_picks_amazon_linux_2023_not_windows():
    from starburst_executor.aws.setup import choose_ecs_ami, user_data

    def image(image_id: str, name: str, arch: str, date: str, **extra: str) -> dict[str, str]:
        return {
            "ImageId": image_id,
            "Name": name,
            "Architecture": arch,
            "CreationDate": date,
            **extra,
        }

    al2023 = "al2023-ami-ecs-hvm-2023.0."
    images = [
        image("ami-al2023-old", al2023 + "20250101-kernel-6.1-x86_64", "x86_64", "2025-01-01"),
        image("ami-al2023-new", al2023 + "20251101-kernel-6.1-x86_64", "x86_64", "2025-11-01"),
        image(
            "ami-windows",
            "Windows_Server-2022-English-Full-ECS_Optimized-2025.11.20",
            "x86_64",
            "2025-11-20",
            Platform="windows",
        ),
        image("ami-arm", al2023 + "20251120-kernel-6.1-arm64", "arm64", "2025-11-20"),
    ]
    assert choose_ecs_ami(images, arm=False) == "ami-al2023-new"
    assert choose_ecs_ami(images, arm=True) == "ami-arm"
    assert choose_ecs_ami(images[2:3], arm=False) is None

    script = base64.b64decode(user_data("starburst")).decode()
    assert "ECS_CLUSTER=starburst" in script
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in script


def test_run_task_carries_one_client_token_per_batch_and_survives_failures(aws_env):
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.launch.ecs import EcsLauncher
    from starburst_executor.launch_spec import LaunchSpec

    config = _ecs_config(aws_env)
    launcher = EcsLauncher(
        config,
        LaunchSpec(backend="ecs", cpu=1, memory_mb=2048, image=IMAGE),
        AwsClients("us-east-1"),
    )
    session = "session-00000000000000cc"
    try:
        failed = inject(
            launcher.clients("ecs"),
            "RunTask",
            [
                {
                    "tasks": [],
                    "failures": [{"arn": "container-instance/x", "reason": "RESOURCE:CPU"}],
                }
            ],
        )
        sent = record_calls(launcher.clients("ecs"), "RunTask")
        arns = launcher._run(session, 15, {})
        assert len(arns) == 15 and len(failed) == 1  # the capacity failure was retried
        tokens = [c["clientToken"] for c in sent]
        assert len(sent) == 3 and all(tokens) and len(set(tokens)) == 3
        assert all(len(t) <= 64 for t in tokens)
    finally:
        launcher.stop(session, [])
        starburst("teardown", "--delete-data")


def test_spot_quota_and_ephemeral_launches_respect_the_vcpu_quota(aws_env):
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.errors import StarburstError
    from starburst_executor.launch.ecs import EcsLauncher
    from starburst_executor.launch_spec import LaunchSpec

    config = _ecs_config(aws_env)
    spot = EcsLauncher(
        config,
        LaunchSpec(backend="ecs", cpu=1, memory_mb=2048, image=IMAGE, use_spot=True),
        AwsClients("us-east-1"),
    )
    asked = inject(
        spot.clients("service-quotas", attempts=2),
        "GetServiceQuota",
        [{"Quota": {"Value": 1.0}}],
    )
    session = "session-00000000000000dd"
    try:
        assert spot.vcpu_quota() == 1.0
        assert asked[0]["QuotaCode"] == "L-36FBB829"  # Fargate Spot's own quota
        spot.start_task_worker(session, "t-000000000001", {})
        with pytest.raises(StarburstError, match="quota"):
            spot.start_task_worker(session, "t-000000000002", {})
        assert spot.live_count(session) == 1
    finally:
        spot.stop(session, [])
        starburst("teardown", "--delete-data")


def test_workers_start_with_only_the_launchers_environment(ecs_session):
    with StarburstExecutor(max_workers=1, backend="ecs", image=IMAGE) as ex:
        names = ex.submit(tasks.env_names).result(timeout=TIMEOUT)
    assert "STARBURST_SESSION_ID" in names and "STARBURST_BUCKET" in names
    # The test's own settings never reach a worker: only what the launcher sent does.
    assert "STARBURST_AWS_ENDPOINT" not in names and "STARBURST_CONFIG_DIR" not in names
    assert "PYTEST_CURRENT_TEST" not in names


def test_host_ec2_terminated_is_retried_like_a_spot_interruption(ecs_session, tmp_path):
    h = ecs_session
    h.provisioning_delay = 1.0  # tasks run a while after RunTask, as on AWS
    marker = tmp_path / "started"
    with StarburstExecutor(max_workers=1, backend="ecs", image=IMAGE) as ex:
        future = ex.submit(tasks.touch_then_wait, str(marker), str(tmp_path / "release"))
        first = h.wait_for_tasks(1, timeout=TIMEOUT)[0]
        wait_until(marker.exists, "the task to start")
        h.kill(first, HOST_TERMINATED_REASON)
        (tmp_path / "release").write_text("go")
        assert future.result(timeout=TIMEOUT) > 0
        assert len(h.procs) == 2


def test_crash_looping_workers_fail_the_futures_with_the_reason(ecs_session):
    from starburst_executor.errors import WorkersCannotStart

    h = ecs_session
    h.fail_starts(PULL_ERROR_REASON)
    ex = DetachedExecutor(max_workers=2, backend="ecs", image=IMAGE)
    try:
        futures = [ex.submit(tasks.square, i) for i in range(4)]
        for future in futures:
            with pytest.raises(WorkersCannotStart) as info:
                future.result(timeout=TIMEOUT)
        assert "CannotPullContainerError" in info.value.stopped_reason
        assert "starburst image build" in str(info.value)
        assert not h.procs  # no worker ever ran
        attempts = len(h.failed_starts)
        time.sleep(3)  # the poller's maintenance runs every second: it must not relaunch
        assert len(h.failed_starts) == attempts <= 6
    finally:
        ex.cleanup(force=True)


def test_ephemeral_start_failure_names_the_fix(ecs_session):
    h = ecs_session
    h.fail_starts(INIT_ERROR_REASON, count=1)
    with StarburstExecutor(max_workers=1, backend="ecs", image=IMAGE) as ex:
        with pytest.raises(WorkerDied, match="route") as info:
            ex.submit(tasks.square, 3).result(timeout=TIMEOUT)
        assert "ResourceInitializationError" in info.value.stopped_reason
        assert ex.submit(tasks.square, 4).result(timeout=TIMEOUT) == 16


def test_every_aws_call_is_in_the_documented_policy_and_setup_creates_those_roles(aws_env):
    from starburst_executor.aws.iam import (
        action_for,
        client_policy,
        ecs_task_trust,
        policy_actions,
        task_role_policy,
    )
    from starburst_executor.aws.setup import teardown
    from starburst_executor.launch.ecs import EcsLauncher
    from starburst_executor.launch_spec import LaunchSpec

    clients, _, run = _setup_in_process(
        aws_env, ec2_instance_types=["c7i.xlarge"], kms_key_arn="arn:aws:kms:us-east-1:1:key/k"
    )
    run()
    config = load_config()
    assert config is not None
    launcher = EcsLauncher(
        config, LaunchSpec(backend="ecs", cpu=1, memory_mb=2048, image=IMAGE), clients
    )
    session = "session-00000000000000ee"
    launcher.launch(session, 2, {})
    launcher.cost(session)
    launcher.stop(session, [])
    iam = boto3.client("iam", endpoint_url=aws_env, region_name="us-east-1")
    inline = iam.get_role_policy(RoleName="starburst-task", PolicyName="starburst-session-data")
    assert inline["PolicyDocument"] == task_role_policy(
        config.bucket, config.prefix, "arn:aws:kms:us-east-1:1:key/k"
    )
    trust = iam.get_role(RoleName="starburst-task")["Role"]["AssumeRolePolicyDocument"]
    assert trust == ecs_task_trust(config.account_id)
    teardown(config, clients, delete_data=True, retry_delay=0.01)
    allowed = policy_actions(client_policy(config.account_id, config.bucket))
    needed = {action_for(c) for c in clients.calls}
    assert needed - allowed == set()
    assert {"iam:ListRoles", "ecs:RunTask", "ecs:DeleteCluster", "ssm:GetParameter"} <= needed


def test_setup_with_subnets_checks_they_have_a_route_out(aws_env):
    ec2 = boto3.client("ec2", endpoint_url=aws_env, region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="mine", Description="x", VpcId=vpc)["GroupId"]
    closed = starburst("setup", "--subnets", subnet, "--security-groups", group, "--json")
    assert closed.returncode != 0 and "no route out" in closed.stderr and subnet in closed.stderr
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    table = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    ec2.create_route(
        RouteTableId=table["RouteTables"][0]["RouteTableId"],
        DestinationCidrBlock="0.0.0.0/0",
        GatewayId=gateway,
    )
    opened = starburst("setup", "--subnets", subnet, "--security-groups", group, "--json")
    assert opened.returncode == 0, opened.stderr
    config = load_config()
    assert config is not None and config.subnets == (subnet,)
    assert config.security_groups == (group,)
    starburst("teardown", "--delete-data")


def test_fargate_is_priced_in_the_sessions_region_and_billed_from_the_pull(aws_env):
    from starburst_executor.aws.clients import AwsClients
    from starburst_executor.aws.cost import actual_cost, fargate_rate

    def product(usage: str, usd: str) -> str:
        dimension = {"d": {"pricePerUnit": {"USD": usd}}}
        return json.dumps(
            {
                "product": {"attributes": {"usagetype": usage, "regionCode": "eu-central-1"}},
                "terms": {"OnDemand": {"t": {"priceDimensions": dimension}}},
            }
        )

    clients = AwsClients("eu-central-1")
    asked = inject(
        clients("pricing", attempts=2),
        "GetProducts",
        [
            {
                "PriceList": [
                    product("EUC1-Fargate-ARM-vCPU-Hours:perCPU", "0.0372"),
                    product("EUC1-Fargate-vCPU-Hours:perCPU", "0.04656"),
                    product("EUC1-Fargate-GB-Hours", "0.00511"),
                ]
            }
        ],
    )
    rate = fargate_rate(2, 4096, spot=False, clients=clients)
    assert asked[0]["Filters"][0]["Value"] == "eu-central-1"
    assert rate.per_worker_hour == pytest.approx(2 * 0.04656 + 4 * 0.00511)
    assert rate.source == "pricing-api (eu-central-1)"
    # Without the Pricing API the estimate says whose prices it used.
    fallback = fargate_rate(2, 4096, spot=False, clients=AwsClients("eu-central-1"))
    assert fallback.source == "fargate-static (us-east-1 prices)"

    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    short = {
        "pullStartedAt": start,
        "startedAt": start + dt.timedelta(seconds=20),
        "stoppedAt": start + dt.timedelta(seconds=30),
    }
    long = {
        "pullStartedAt": start,
        "startedAt": start + dt.timedelta(minutes=1),
        "stoppedAt": start + dt.timedelta(minutes=31),
    }
    assert actual_cost([short], rate, fargate=True) == pytest.approx(
        rate.per_worker_hour / 60, abs=1e-6
    )
    assert actual_cost([long], rate, fargate=True) == pytest.approx(
        rate.per_worker_hour * 31 / 60, abs=1e-6
    )
