"""The IAM policies of the ECS backend, in one place.

* ``task_role_policy``: what the workers' role may do (setup attaches it). Workers read
  their sessions and write only the keys a worker writes (claims, outcomes, markers,
  their registry entry), never payloads or manifests, so one session's workers cannot
  rewrite another session's calls. With a customer KMS key, the two KMS actions SSE-KMS
  needs on that key.
* ``ecs_task_trust``: who may assume the task roles: ECS tasks of this account only
  (``aws:SourceAccount``, ``aws:SourceArn``), not any account's tasks.
* ``client_policy``: what the person (or CI role) running setup, image builds and
  executors needs. docs/aws.md prints this policy and tabulates its actions; a test
  keeps them equal, and checks every AWS call the code makes against it.

Run ``python -m starburst_executor.aws.iam`` to print ``client_policy`` for your values.
"""

from __future__ import annotations

import json
import sys
from typing import Any

EXECUTION_ROLE = "starburst-task-execution"
TASK_ROLE = "starburst-task"
INSTANCE_ROLE = "starburst-ecs-instance"

# Keys under a session that workers create or replace, and those they delete.
WORKER_WRITES = ("claims", "results", "failed", "cancelled", "reexecuted", "workers")
WORKER_DELETES = ("claims", "workers")


def task_role_policy(bucket: str, prefix: str, kms_key_arn: str | None = None) -> dict[str, Any]:
    """Least privilege for workers: their prefix's sessions, and the worker's keys only."""
    sessions = f"arn:aws:s3:::{bucket}/{prefix}/sessions"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadSessions",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": f"{sessions}/*",
        },
        {
            "Sid": "WriteWorkerKeys",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": [f"{sessions}/*/{kind}/*" for kind in WORKER_WRITES],
        },
        {
            "Sid": "ReleaseClaims",
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": [f"{sessions}/*/{kind}/*" for kind in WORKER_DELETES],
        },
        {
            # Also what makes a missing key answer 404 to LIST-based existence checks;
            # object requests carry no s3:prefix, so a HEAD of a missing key is 403
            # (the store reads that as missing after a one-key LIST).
            "Sid": "ListSessions",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": f"arn:aws:s3:::{bucket}",
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
        },
    ]
    if kms_key_arn:
        statements.append(
            {
                "Sid": "SessionKmsKey",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": kms_key_arn,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def ecs_task_trust(account: str) -> dict[str, Any]:
    """ECS tasks of ``account`` may assume the role; the confused deputy is kept out."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": account},
                    "ArnLike": {"aws:SourceArn": f"arn:aws:ecs:*:{account}:*"},
                },
            }
        ],
    }


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

# (Sid, actions) of the client policy whose resource is "*": these APIs take no narrower
# resource for the calls made (Describe*/List*/Create* of new names, pricing, quotas).
_ANY_RESOURCE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Identity", ("sts:GetCallerIdentity",)),
    (
        "Logs",
        (
            "logs:CreateLogGroup",
            "logs:DeleteLogGroup",
            "logs:DescribeLogGroups",
            "logs:GetLogEvents",
            "logs:PutRetentionPolicy",
            "logs:TagResource",
        ),
    ),
    (
        "Ecr",
        (
            "ecr:BatchCheckLayerAvailability",
            "ecr:BatchGetImage",
            "ecr:CompleteLayerUpload",
            "ecr:CreateRepository",
            "ecr:DeleteRepository",
            "ecr:DescribeImages",
            "ecr:DescribeRepositories",
            "ecr:GetAuthorizationToken",
            "ecr:InitiateLayerUpload",
            "ecr:PutImage",
            "ecr:PutLifecyclePolicy",
            "ecr:UploadLayerPart",
        ),
    ),
    (
        "Iam",
        (
            "iam:AddRoleToInstanceProfile",
            "iam:AttachRolePolicy",
            "iam:CreateInstanceProfile",
            "iam:CreateRole",
            "iam:CreateServiceLinkedRole",
            "iam:DeleteInstanceProfile",
            "iam:DeleteRole",
            "iam:DeleteRolePolicy",
            "iam:DetachRolePolicy",
            "iam:GetInstanceProfile",
            "iam:GetRole",
            "iam:GetRolePolicy",
            "iam:ListAttachedRolePolicies",
            "iam:ListRolePolicies",
            "iam:ListRoles",
            "iam:PutRolePolicy",
            "iam:RemoveRoleFromInstanceProfile",
            "iam:TagRole",
            "iam:UpdateAssumeRolePolicy",
        ),
    ),
    (
        "Ec2",
        (
            "ec2:CreateLaunchTemplate",
            "ec2:CreateSecurityGroup",
            "ec2:CreateTags",
            "ec2:DeleteLaunchTemplate",
            "ec2:DeleteSecurityGroup",
            "ec2:DescribeImages",
            "ec2:DescribeInstanceTypes",
            "ec2:DescribeLaunchTemplates",
            "ec2:DescribeRouteTables",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSpotPriceHistory",
            "ec2:DescribeSubnets",
            "ec2:DescribeVpcs",
            "ec2:RunInstances",
        ),
    ),
    ("Ssm", ("ssm:GetParameter",)),
    (
        "AutoScaling",
        (
            "autoscaling:CreateAutoScalingGroup",
            "autoscaling:CreateOrUpdateTags",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:DescribeAutoScalingGroups",
        ),
    ),
    (
        "Ecs",
        (
            "ecs:CreateCapacityProvider",
            "ecs:CreateCluster",
            "ecs:DeleteCapacityProvider",
            "ecs:DeleteCluster",
            "ecs:DeregisterTaskDefinition",
            "ecs:DescribeCapacityProviders",
            "ecs:DescribeClusters",
            "ecs:DescribeTaskDefinition",
            "ecs:DescribeTasks",
            "ecs:ListTaskDefinitions",
            "ecs:ListTasks",
            "ecs:PutClusterCapacityProviders",
            "ecs:RegisterTaskDefinition",
            "ecs:RunTask",
            "ecs:StopTask",
            "ecs:TagResource",
        ),
    ),
    ("Quotas", ("servicequotas:GetServiceQuota",)),
    ("Pricing", ("pricing:GetProducts",)),
)


def client_policy(
    account: str, bucket: str, prefix: str = "starburst", kms_key_arn: str | None = None
) -> dict[str, Any]:
    """Everything the library calls on the user's behalf, least privilege where AWS allows."""
    roles = f"arn:aws:iam::{account}:role"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "SessionData",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject"],
            "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
        },
        {
            "Sid": "Bucket",
            "Effect": "Allow",
            "Action": [
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:ListBucket",
                "s3:PutBucketOwnershipControls",
                "s3:PutBucketPublicAccessBlock",
                "s3:PutEncryptionConfiguration",
                "s3:PutLifecycleConfiguration",
            ],
            "Resource": f"arn:aws:s3:::{bucket}",
        },
        {
            "Sid": "PassTaskRoles",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": [f"{roles}/{EXECUTION_ROLE}", f"{roles}/{TASK_ROLE}"],
            "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        },
        {
            "Sid": "PassInstanceRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": f"{roles}/{INSTANCE_ROLE}",
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
    ]
    statements += [
        {"Sid": sid, "Effect": "Allow", "Action": list(actions), "Resource": "*"}
        for sid, actions in _ANY_RESOURCE
    ]
    if kms_key_arn:
        statements.append(
            {
                "Sid": "SessionKmsKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": kms_key_arn,
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


# SDK operations whose IAM action has another name (the rest map one to one).
_ACTION_OF_CALL = {
    "s3:HeadBucket": "s3:ListBucket",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:HeadObject": "s3:GetObject",
    "s3:DeleteObjects": "s3:DeleteObject",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
}
_PREFIX_OF_SERVICE = {"service-quotas": "servicequotas"}


def action_for(call: str) -> str:
    """The IAM action an SDK call (``"service:Operation"``, as ``AwsClients.calls``
    records it) needs."""
    service, operation = call.split(":", 1)
    plain = f"{_PREFIX_OF_SERVICE.get(service, service)}:{operation}"
    return _ACTION_OF_CALL.get(plain, plain)


def policy_actions(policy: dict[str, Any]) -> set[str]:
    """Every action a policy grants."""
    out: set[str] = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out


def main(argv: list[str]) -> int:
    """``python -m starburst_executor.aws.iam [ACCOUNT [BUCKET [PREFIX]]]``"""
    account, bucket, prefix = [*argv, "<account>", "<bucket>", "starburst"][: len(argv) + 3][:3]
    print(json.dumps(client_policy(account, bucket, prefix), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
