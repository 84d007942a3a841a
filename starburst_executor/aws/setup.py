"""``starburst setup`` and ``starburst teardown``: the AWS resources the ECS backend uses.

Setup is idempotent: each step looks first and creates only what is missing,
recording what it created in the saved configuration. Teardown removes exactly
what setup recorded, newest first, and nothing else. ``dry_run`` only looks.

    account ─▶ ECS service-linked role (kept by teardown: the account's, not ours)
            ─▶ S3 bucket (SSE-S3, public access blocked, owner enforced, old sessions expire)
            ─▶ CloudWatch log group (retention) ─▶ ECR repository (lifecycle policy)
            ─▶ IAM: task execution role, task role scoped to <bucket>/<prefix>/*
            ─▶ default VPC subnets + security group (no ingress)
            ─▶ ECS cluster (FARGATE, FARGATE_SPOT), retried while the new
               service-linked role is not yet assumable
            ─▶ per EC2 instance type asked: instance profile, launch template (Spot when
               asked; ECS-optimized AMI, arm64 for Graviton), auto-scaling group 0..N,
               capacity provider with managed scaling
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from ..errors import ConfigError, StarburstError
from .clients import AwsClients, translate
from .iam import (
    EC2_TRUST,
    EXECUTION_ROLE,
    INSTANCE_ROLE,
    TASK_ROLE,
    ecs_task_trust,
    task_role_policy,
)
from .retry import (
    CLUSTER_BUSY_CODES,
    CLUSTER_BUSY_PHRASES,
    SERVICE_LINKED_ROLE_PENDING,
    STILL_IN_USE_CODES,
    matches,
    retry_aws,
)
from .settings import AwsConfig

SECURITY_GROUP = "starburst-workers"
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"
ECS_SERVICE_LINKED_PATH = "/aws-service-role/ecs.amazonaws.com/"
# The ECS-optimized Amazon Linux 2023 AMIs (not the Windows or AL2 ones).
AL2023_ECS_AMI_NAME = "al2023-ami-ecs-hvm-*"
EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
INSTANCE_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"


@dataclass(frozen=True)
class Step:
    """One line of the plan: what, and whether it exists or is (to be) created."""

    kind: str
    name: str
    action: str  # "exists", "create", "created", "update", "updated", "delete", "deleted", "kept"
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.action:<8} {self.kind:<22} {self.name}{extra}"


def _cluster_busy(err: BaseException) -> bool:
    return matches(err, CLUSTER_BUSY_CODES, CLUSTER_BUSY_PHRASES)


def _cluster_not_ready(err: BaseException) -> bool:
    return matches(err, phrases=SERVICE_LINKED_ROLE_PENDING) or _cluster_busy(err)


def _still_in_use(err: BaseException) -> bool:
    return matches(err, STILL_IN_USE_CODES, CLUSTER_BUSY_PHRASES)


def choose_ecs_ami(images: Sequence[dict[str, Any]], *, arm: bool) -> str | None:
    """The newest Amazon Linux 2023 ECS-optimized image of the architecture, or None.

    A looser match ("ecs" in the name) can pick a Windows ECS AMI, whose instances
    never join a Linux cluster.
    """
    arch = "arm64" if arm else "x86_64"
    fitting = [
        i
        for i in images
        if (i.get("Name") or "").startswith("al2023-ami-ecs-hvm-")
        and i.get("Architecture", arch) == arch
        and "windows" not in str(i.get("Platform") or i.get("PlatformDetails") or "").lower()
    ]
    if not fitting:
        return None
    return str(max(fitting, key=lambda i: i.get("CreationDate", ""))["ImageId"])


def user_data(cluster: str) -> str:
    """ECS agent settings for the instances. Spot draining makes a reclaimed instance's
    tasks get SIGTERM (and stopTimeout to hand back) instead of dying unannounced."""
    lines = [
        "#!/bin/bash",
        f"echo ECS_CLUSTER={cluster} >> /etc/ecs/ecs.config",
        "echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config",
    ]
    return base64.b64encode(("\n".join(lines) + "\n").encode()).decode()


INLINE_POLICY = "starburst-session-data"


def _policy(document: object) -> object:
    """A policy document in one form for comparing: IAM returns it parsed (or URL-encoded
    JSON from some SDKs), setup holds it as a dict."""
    if isinstance(document, str):
        from urllib.parse import unquote

        try:
            document = json.loads(unquote(document))
        except ValueError:
            return document
    return json.loads(json.dumps(document, sort_keys=True))


class Setup:
    """Plans and applies setup against one account and region."""

    def __init__(
        self, clients: AwsClients, *, dry_run: bool = False, retry_delay: float = 1.0
    ) -> None:
        self.c = clients
        self.dry_run = dry_run
        self.retry_delay = retry_delay
        self.steps: list[Step] = []
        self.created: list[dict[str, str]] = []
        self._account = ""

    def _step(
        self, kind: str, name: str, exists: bool, create: Callable[[], Any], detail: str = ""
    ) -> None:
        if exists:
            self.steps.append(Step(kind, name, "exists", detail))
            return
        if self.dry_run:
            self.steps.append(Step(kind, name, "create", detail))
            return
        # Recorded before creating: a step that fails half-way is still torn down.
        self.created.append({"kind": kind, "name": name})
        try:
            create()
        except StarburstError:
            raise
        except Exception as err:
            raise translate(err, f"creating {kind}", name) from err
        self.steps.append(Step(kind, name, "created", detail))

    # -- each resource ----------------------------------------------------------------

    def account(self) -> str:
        try:
            return str(self.c("sts").get_caller_identity()["Account"])
        except Exception as err:
            raise translate(err, "sts:GetCallerIdentity", "your credentials") from err

    def bucket(self, bucket: str, prefix: str, account: str, expiry_days: int) -> None:
        from botocore.exceptions import ClientError

        s3 = self.c("s3")
        exists = True
        try:
            s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=account)
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code"))
            if code in {"403", "AccessDenied"}:
                raise ConfigError(
                    f"bucket {bucket} exists but is not owned by account {account}; "
                    "choose another name with --bucket"
                ) from err
            exists = False

        def create() -> None:
            kwargs: dict[str, Any] = {"Bucket": bucket}
            if self.c.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.c.region}
            s3.create_bucket(**kwargs)
            s3.put_bucket_encryption(
                Bucket=bucket,
                ExpectedBucketOwner=account,
                ServerSideEncryptionConfiguration={
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
            )
            s3.put_public_access_block(
                Bucket=bucket,
                ExpectedBucketOwner=account,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            s3.put_bucket_ownership_controls(
                Bucket=bucket,
                ExpectedBucketOwner=account,
                OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            )
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket,
                ExpectedBucketOwner=account,
                LifecycleConfiguration={"Rules": [_expiry_rule(prefix, expiry_days)]},
            )

        self._step("s3-bucket", bucket, exists, create, f"sessions expire after {expiry_days} days")
        if exists:
            self._lifecycle(bucket, prefix, account, expiry_days)

    def _lifecycle(self, bucket: str, prefix: str, account: str, expiry_days: int) -> None:
        """The expiry rule on a bucket setup did not create: the backstop for sessions
        nobody cleaned up. Other rules of the bucket are kept."""
        s3 = self.c("s3")
        rules = _lifecycle_rules(s3, bucket, account)
        present = any(r.get("ID") == EXPIRY_RULE_ID for r in rules)

        def add() -> None:
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket,
                ExpectedBucketOwner=account,
                LifecycleConfiguration={"Rules": [*rules, _expiry_rule(prefix, expiry_days)]},
            )

        self._step(
            "s3-lifecycle", bucket, present, add, f"sessions expire after {expiry_days} days"
        )

    def log_group(self, name: str, retention_days: int) -> None:
        logs = self.c("logs")
        groups = logs.describe_log_groups(logGroupNamePrefix=name).get("logGroups", [])
        exists = any(g["logGroupName"] == name for g in groups)

        def create() -> None:
            logs.create_log_group(logGroupName=name, tags={"starburst": "workers"})
            logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)

        self._step("log-group", name, exists, create, f"retention {retention_days} days")

    def repository(self, name: str) -> None:
        ecr = self.c("ecr")
        try:
            ecr.describe_repositories(repositoryNames=[name])
            exists = True
        except ecr.exceptions.RepositoryNotFoundException:
            exists = False
        policy = {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": "keep the 20 newest worker images",
                    "selection": {
                        "tagStatus": "any",
                        "countType": "imageCountMoreThan",
                        "countNumber": 20,
                    },
                    "action": {"type": "expire"},
                }
            ]
        }

        def create() -> None:
            ecr.create_repository(
                repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
            )
            ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(policy))

        self._step("ecr-repository", name, exists, create)

    def role(
        self,
        name: str,
        trust: dict[str, Any],
        managed: Sequence[str],
        inline: dict[str, Any] | None,
    ) -> str:
        iam = self.c("iam")
        try:
            arn = str(iam.get_role(RoleName=name)["Role"]["Arn"])
            exists = True
        except iam.exceptions.NoSuchEntityException:
            arn, exists = f"arn:aws:iam::{self._account}:role/{name}", False

        def create() -> None:
            iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=json.dumps(trust),
                Tags=[{"Key": "starburst", "Value": "setup"}],
            )
            for policy in managed:
                iam.attach_role_policy(RoleName=name, PolicyArn=policy)
            if inline is not None:
                iam.put_role_policy(
                    RoleName=name,
                    PolicyName=INLINE_POLICY,
                    PolicyDocument=json.dumps(inline),
                )

        if exists:
            self._update_role(name, trust, managed, inline)
        else:
            self._step("iam-role", name, exists, create)
        return arn

    def _update_role(
        self,
        name: str,
        trust: dict[str, Any],
        managed: Sequence[str],
        inline: dict[str, Any] | None,
    ) -> None:
        """Bring a role an earlier setup made up to what this release grants (a trust
        condition, a KMS key, a narrower data policy); policies a user attached stay."""
        iam = self.c("iam")
        changes: list[Callable[[], Any]] = []
        what: list[str] = []
        try:
            current = iam.get_role(RoleName=name)["Role"].get("AssumeRolePolicyDocument")
            if _policy(current) != _policy(trust):
                what.append("trust policy")
                changes.append(
                    lambda: iam.update_assume_role_policy(
                        RoleName=name, PolicyDocument=json.dumps(trust)
                    )
                )
            pages = iam.get_paginator("list_attached_role_policies").paginate(RoleName=name)
            attached = {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}
            for policy in managed:
                if policy not in attached:
                    what.append(policy.rsplit("/", 1)[-1])
                    changes.append(partial(iam.attach_role_policy, RoleName=name, PolicyArn=policy))
            if inline is not None:
                try:
                    document = iam.get_role_policy(RoleName=name, PolicyName=INLINE_POLICY)[
                        "PolicyDocument"
                    ]
                except iam.exceptions.NoSuchEntityException:
                    document = None
                if _policy(document) != _policy(inline):
                    what.append(INLINE_POLICY)
                    changes.append(
                        lambda: iam.put_role_policy(
                            RoleName=name,
                            PolicyName=INLINE_POLICY,
                            PolicyDocument=json.dumps(inline),
                        )
                    )
        except StarburstError:
            raise
        except Exception as err:
            raise translate(err, "reading iam-role", name) from err
        if not changes:
            self.steps.append(Step("iam-role", name, "exists"))
            return
        if self.dry_run:
            self.steps.append(Step("iam-role", name, "update", ", ".join(what)))
            return
        try:
            for change in changes:
                change()
        except Exception as err:
            raise translate(err, "updating iam-role", name) from err
        self.steps.append(Step("iam-role", name, "updated", ", ".join(what)))

    def check_routes(self, subnets: Sequence[str]) -> None:
        """Subnets given with --subnets must let workers out: S3, ECR and CloudWatch
        Logs are reached through a default route to an internet or NAT gateway."""
        ec2 = self.c("ec2")
        described = ec2.describe_subnets(SubnetIds=list(subnets))["Subnets"]
        for subnet in described:
            sid, vpc = subnet["SubnetId"], subnet["VpcId"]
            tables = ec2.describe_route_tables(
                Filters=[{"Name": "association.subnet-id", "Values": [sid]}]
            )["RouteTables"] or [
                t
                for t in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])[
                    "RouteTables"
                ]
                if any(a.get("Main") for a in t.get("Associations", []))
            ]
            routes = [r for t in tables for r in t.get("Routes", [])]
            out = any(
                r.get("DestinationCidrBlock") == "0.0.0.0/0"
                and (
                    str(r.get("GatewayId", "")).startswith("igw-")
                    or str(r.get("NatGatewayId", "")).startswith("nat-")
                )
                for r in routes
            )
            if not out:
                raise ConfigError(
                    f"subnet {sid} has no route out (no 0.0.0.0/0 route to an internet or "
                    "NAT gateway): workers could not reach S3, ECR or CloudWatch Logs; pass "
                    "public subnets or ones behind a NAT gateway to --subnets"
                )

    def network(self) -> tuple[list[str], str]:
        ec2 = self.c("ec2")
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise ConfigError(
                "this region has no default VPC; pass --subnets and --security-groups"
            )
        vpc = vpcs[0]["VpcId"]
        subnets = [
            s["SubnetId"]
            for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
        ]
        groups = ec2.describe_security_groups(
            Filters=[
                {"Name": "group-name", "Values": [SECURITY_GROUP]},
                {"Name": "vpc-id", "Values": [vpc]},
            ]
        )["SecurityGroups"]
        holder = {"id": groups[0]["GroupId"] if groups else ""}

        def create() -> None:
            holder["id"] = ec2.create_security_group(
                GroupName=SECURITY_GROUP,
                Description="starburst workers: outbound only",
                VpcId=vpc,
            )["GroupId"]

        self._step("security-group", SECURITY_GROUP, bool(groups), create, f"in {vpc}")
        if holder["id"] and not groups and not self.dry_run:
            self.created[-1]["id"] = holder["id"]
        return subnets, holder["id"]

    def service_linked_role(self) -> None:
        """ECS's own role in the account, which a cluster with capacity providers needs.

        Created when missing ("already taken" is success: another tool won the race)
        and never deleted: other ECS use in the account relies on it.
        """
        iam = self.c("iam")
        try:
            # Found by its path, which AWS fixes per service, rather than by its name.
            pages = iam.get_paginator("list_roles").paginate(PathPrefix=ECS_SERVICE_LINKED_PATH)
            exists = any(page.get("Roles") for page in pages)
        except Exception as err:
            raise translate(err, "iam:ListRoles", ECS_SERVICE_LINKED_ROLE) from err
        kind, detail = "service-linked-role", "ecs.amazonaws.com; teardown keeps it"
        if exists or self.dry_run:
            self.steps.append(
                Step(kind, ECS_SERVICE_LINKED_ROLE, "exists" if exists else "create", detail)
            )
            return
        try:
            iam.create_service_linked_role(AWSServiceName="ecs.amazonaws.com")
        except Exception as err:
            if not matches(err, phrases=("has been taken", "already exists")):
                raise translate(err, "iam:CreateServiceLinkedRole", "ecs.amazonaws.com") from err
        self.steps.append(Step(kind, ECS_SERVICE_LINKED_ROLE, "created", detail))

    def cluster(self, name: str) -> None:
        ecs = self.c("ecs")
        found = ecs.describe_clusters(clusters=[name]).get("clusters", [])
        exists = any(c.get("status") == "ACTIVE" for c in found)

        def create() -> None:
            retry_aws(
                lambda: ecs.create_cluster(
                    clusterName=name,
                    capacityProviders=["FARGATE", "FARGATE_SPOT"],
                    tags=[{"key": "starburst", "value": "setup"}],
                ),
                transient=_cluster_not_ready,
                delay=self.retry_delay,
            )

        self._step("ecs-cluster", name, exists, create, "FARGATE, FARGATE_SPOT")

    # -- the whole plan ------------------------------------------------------------------

    def run(
        self,
        base: AwsConfig,
        *,
        bucket: str | None = None,
        expiry_days: int = 30,
        log_retention_days: int = 30,
        ec2_instance_types: Sequence[str] = (),
        ec2_spot: bool = False,
        ec2_max: int = 10,
        kms_key_arn: str | None = None,
        subnets: Sequence[str] = (),
        security_groups: Sequence[str] = (),
    ) -> AwsConfig:
        """Create what is missing. ``subnets`` and ``security_groups`` replace the default
        VPC's (an account without one needs them) and are checked for a route out."""
        if bool(subnets) != bool(security_groups):
            raise ConfigError("pass --subnets and --security-groups together (comma-separated ids)")
        self._account = self.account()
        chosen_bucket = bucket or base.bucket or f"starburst-{self._account}-{self.c.region}"
        self.bucket(chosen_bucket, base.prefix, self._account, expiry_days)
        self.log_group(base.log_group, log_retention_days)
        self.repository(base.ecr_repository)
        trust = ecs_task_trust(self._account)
        execution = self.role(EXECUTION_ROLE, trust, [EXECUTION_POLICY], None)
        task = self.role(
            TASK_ROLE, trust, [], task_role_policy(chosen_bucket, base.prefix, kms_key_arn)
        )
        if subnets:
            self.check_routes(subnets)
            chosen_subnets, groups = list(subnets), tuple(security_groups)
        elif base.subnets and base.security_groups:
            chosen_subnets, groups = list(base.subnets), base.security_groups
        else:
            chosen_subnets, made = self.network()
            groups = (made,) if made else ()
        group = groups[0] if groups else ""
        self.service_linked_role()
        self.cluster(base.cluster)
        providers = dict(base.capacity_providers)
        for instance_type in ec2_instance_types:
            providers[instance_type] = self.capacity_provider(
                base.cluster, instance_type, chosen_subnets, group, spot=ec2_spot, max_size=ec2_max
            )
        if ec2_instance_types and not self.dry_run:
            ecs = self.c("ecs")
            retry_aws(
                lambda: ecs.put_cluster_capacity_providers(
                    cluster=base.cluster,
                    capacityProviders=["FARGATE", "FARGATE_SPOT", *sorted(set(providers.values()))],
                    defaultCapacityProviderStrategy=[],
                ),
                transient=_cluster_not_ready,
                delay=self.retry_delay,
            )
        return replace(
            base,
            region=self.c.region,
            account_id=self._account,
            bucket=chosen_bucket,
            subnets=tuple(chosen_subnets),
            security_groups=groups,
            execution_role_arn=execution,
            task_role_arn=task,
            created=[*base.created, *self.created],
            capacity_providers=providers,
        )

    def _ecs_ami(self, instance_type: str) -> str:
        from .sizes import architecture_for

        arm = architecture_for(instance_type) == "ARM64"
        name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/" + (
            "arm64/recommended/image_id" if arm else "recommended/image_id"
        )
        try:
            return str(self.c("ssm", attempts=2).get_parameter(Name=name)["Parameter"]["Value"])
        except Exception:
            images = self.c("ec2").describe_images(
                Owners=["amazon"],
                Filters=[
                    {"Name": "name", "Values": [AL2023_ECS_AMI_NAME]},
                    {"Name": "architecture", "Values": ["arm64" if arm else "x86_64"]},
                ],
            )["Images"]
            chosen = choose_ecs_ami(images, arm=arm)
            if chosen is None:
                raise ConfigError(
                    f"no Amazon Linux 2023 ECS-optimized AMI found for {instance_type} in "
                    f"{self.c.region}; check the region, or that ssm:GetParameter is allowed "
                    "on /aws/service/ecs/*"
                ) from None
            return chosen

    def capacity_provider(
        self,
        cluster: str,
        instance_type: str,
        subnets: Sequence[str],
        group: str,
        *,
        spot: bool,
        max_size: int,
    ) -> str:
        """Instance profile, launch template (Spot when asked), auto-scaling group and
        the ECS capacity provider that scales it, for one instance type."""
        name = f"starburst-{instance_type.replace('.', '-')}"
        iam, ec2, asg, ecs = self.c("iam"), self.c("ec2"), self.c("autoscaling"), self.c("ecs")
        self.role(INSTANCE_ROLE, EC2_TRUST, [INSTANCE_POLICY], None)
        try:
            iam.get_instance_profile(InstanceProfileName=INSTANCE_ROLE)
            has_profile = True
        except iam.exceptions.NoSuchEntityException:
            has_profile = False

        def make_profile() -> None:
            iam.create_instance_profile(InstanceProfileName=INSTANCE_ROLE)
            iam.add_role_to_instance_profile(
                InstanceProfileName=INSTANCE_ROLE, RoleName=INSTANCE_ROLE
            )

        self._step("instance-profile", INSTANCE_ROLE, has_profile, make_profile)
        templates = ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]
        ).get("LaunchTemplates", [])

        def make_template() -> None:
            data: dict[str, Any] = {
                "ImageId": self._ecs_ami(instance_type),
                "InstanceType": instance_type,
                "IamInstanceProfile": {"Name": INSTANCE_ROLE},
                # EC2 tasks use the instance's network (bridge mode): a public address
                # here is their way to S3 and ECR in a default VPC, which has no NAT.
                "NetworkInterfaces": [
                    {
                        "DeviceIndex": 0,
                        "AssociatePublicIpAddress": True,
                        "Groups": [group],
                        "DeleteOnTermination": True,
                    }
                ],
                "UserData": user_data(cluster),
                # IMDSv2 only; a hop limit of 2 lets a bridge-networked worker read the
                # Spot interruption notice (one hop more than the host).
                "MetadataOptions": {
                    "HttpTokens": "required",
                    "HttpPutResponseHopLimit": 2,
                    "HttpEndpoint": "enabled",
                },
            }
            if spot:
                data["InstanceMarketOptions"] = {"MarketType": "spot"}
            ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)

        self._step("launch-template", name, bool(templates), make_template, "Spot" if spot else "")
        groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]

        def make_group() -> None:
            asg.create_auto_scaling_group(
                AutoScalingGroupName=name,
                LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
                MinSize=0,
                MaxSize=max_size,
                DesiredCapacity=0,
                VPCZoneIdentifier=",".join(subnets),
                Tags=[{"Key": "starburst", "Value": "setup", "PropagateAtLaunch": True}],
            )

        self._step("auto-scaling-group", name, bool(groups), make_group, f"0..{max_size}")
        found = ecs.describe_capacity_providers(capacityProviders=[name]).get(
            "capacityProviders", []
        )
        exists = any(p.get("status") == "ACTIVE" for p in found)

        def make_provider() -> None:
            arn = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
                "AutoScalingGroups"
            ][0]["AutoScalingGroupARN"]
            ecs.create_capacity_provider(
                name=name,
                autoScalingGroupProvider={
                    "autoScalingGroupArn": arn,
                    "managedScaling": {"status": "ENABLED", "targetCapacity": 100},
                    "managedTerminationProtection": "DISABLED",
                },
            )

        self._step("capacity-provider", name, exists, make_provider, instance_type)
        return name


EXPIRY_RULE_ID = "starburst-expire-old-sessions"


def _expiry_rule(prefix: str, days: int) -> dict[str, Any]:
    return {
        "ID": EXPIRY_RULE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": f"{prefix}/sessions/"},
        "Expiration": {"Days": days},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    }


def _lifecycle_rules(s3: Any, bucket: str, account: str | None) -> list[dict[str, Any]]:
    from botocore.exceptions import ClientError

    owner = {"ExpectedBucketOwner": account} if account else {}
    try:
        rules: list[dict[str, Any]] = s3.get_bucket_lifecycle_configuration(
            Bucket=bucket, **owner
        ).get("Rules", [])
    except ClientError as err:
        if "NoSuchLifecycleConfiguration" in str(err.response.get("Error", {}).get("Code")):
            return []
        raise
    return rules


def teardown(
    config: AwsConfig,
    clients: AwsClients,
    *,
    dry_run: bool = False,
    delete_data: bool = False,
    retry_delay: float = 5.0,
) -> list[Step]:
    """Remove what setup recorded in ``config.created``, newest first; only that.

    Deleting an auto-scaling group is asynchronous (its instances terminate over
    minutes), and the cluster and the security group cannot go while instances use
    them: teardown waits for the group to be gone and retries what is still in use.
    """
    steps: list[Step] = []
    for item in reversed(config.created):
        kind, name = item["kind"], item["name"]
        if dry_run:
            steps.append(Step(kind, name, "delete"))
            continue
        try:
            kept = _delete(clients, config, kind, name, item, delete_data, retry_delay)
        except StarburstError:
            raise
        except Exception as err:
            if _missing(err):
                kept = ""  # already gone (or a failed setup never made it)
            else:
                raise translate(err, f"deleting {kind}", name) from err
        steps.append(Step(kind, name, "kept" if kept else "deleted", kept or ""))
    return steps


def _missing(err: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(err, ClientError):
        return False
    code = str(err.response.get("Error", {}).get("Code", ""))
    return "NotFound" in code or "NoSuch" in code or code in {"404", "ClusterNotFoundException"}


def _wait_for_group_gone(c: AwsClients, name: str, retry_delay: float) -> None:
    """ForceDelete returns at once; the group (and its instances) go minutes later."""
    asg = c("autoscaling")
    deadline = time.monotonic() + max(900.0, retry_delay * 4)
    while asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]:
        if time.monotonic() > deadline:
            raise StarburstError(
                f"auto-scaling group {name} is still deleting its instances after 15 "
                "minutes; rerun `starburst teardown` later"
            )
        time.sleep(retry_delay)  # waiting on AWS's asynchronous deletion


def _task_definitions(c: AwsClients) -> list[str]:
    arns: list[str] = []
    for page in (
        c("ecs").get_paginator("list_task_definitions").paginate(familyPrefix="starburst-worker")
    ):
        arns += page.get("taskDefinitionArns", [])
    return arns


def _delete(
    c: AwsClients,
    config: AwsConfig,
    kind: str,
    name: str,
    item: dict[str, str],
    delete_data: bool,
    retry_delay: float,
) -> str:
    """Delete one resource; returns why it was kept, or "" when deleted."""

    def patiently(call: Callable[[], object]) -> None:
        # Ten attempts from retry_delay doubling: instances take minutes to terminate.
        retry_aws(call, transient=_still_in_use, attempts=10, delay=retry_delay)

    if kind == "s3-bucket":
        s3 = c("s3")
        owner = {"ExpectedBucketOwner": config.account_id} if config.account_id else {}
        listing = s3.list_objects_v2(Bucket=name, MaxKeys=1, **owner)
        if listing.get("KeyCount", 0):
            if not delete_data:
                return "not empty: holds session data; rerun with --delete-data to remove it"
            paginator = s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=name, **owner):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True}, **owner)
        s3.delete_bucket(Bucket=name, **owner)
    elif kind == "s3-lifecycle":  # on a bucket of the user's: remove our rule only
        s3 = c("s3")
        owner = {"ExpectedBucketOwner": config.account_id} if config.account_id else {}
        rules = _lifecycle_rules(s3, name, config.account_id or None)
        others = [r for r in rules if r.get("ID") != EXPIRY_RULE_ID]
        if others:
            s3.put_bucket_lifecycle_configuration(
                Bucket=name, LifecycleConfiguration={"Rules": others}, **owner
            )
        else:
            s3.delete_bucket_lifecycle(Bucket=name, **owner)
    elif kind == "log-group":
        c("logs").delete_log_group(logGroupName=name)
    elif kind == "ecr-repository":
        c("ecr").delete_repository(repositoryName=name, force=True)
    elif kind == "iam-role":
        iam = c("iam")
        for page in iam.get_paginator("list_attached_role_policies").paginate(RoleName=name):
            for policy in page.get("AttachedPolicies", []):
                iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        for page in iam.get_paginator("list_role_policies").paginate(RoleName=name):
            for policy_name in page.get("PolicyNames", []):
                iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        iam.delete_role(RoleName=name)
    elif kind == "security-group":
        ec2 = c("ec2")
        patiently(lambda: ec2.delete_security_group(GroupId=item["id"]))
    elif kind == "capacity-provider":
        ecs = c("ecs")
        with contextlib.suppress(Exception):  # detach from the cluster first
            ecs.put_cluster_capacity_providers(
                cluster=config.cluster,
                capacityProviders=["FARGATE", "FARGATE_SPOT"],
                defaultCapacityProviderStrategy=[],
            )
        patiently(lambda: ecs.delete_capacity_provider(capacityProvider=name))
    elif kind == "auto-scaling-group":
        asg = c("autoscaling")
        patiently(
            lambda: asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
        )
        _wait_for_group_gone(c, name, retry_delay)
    elif kind == "launch-template":
        c("ec2").delete_launch_template(LaunchTemplateName=name)
    elif kind == "instance-profile":
        iam = c("iam")
        for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=name, RoleName=role["RoleName"]
            )
        iam.delete_instance_profile(InstanceProfileName=name)
    elif kind == "ecs-cluster":
        ecs = c("ecs")
        for arn in _task_definitions(c):
            ecs.deregister_task_definition(taskDefinition=arn)
        patiently(lambda: ecs.delete_cluster(cluster=name))
    else:
        return f"unknown kind {kind}; remove it by hand"
    return ""
