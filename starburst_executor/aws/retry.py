"""Retrying the control-plane answers that mean "not yet", not "no".

botocore retries throttling and 5xx itself. Some AWS answers are transient in a way
only the caller can tell: the ECS service-linked role that is not assumable yet in
an account's first minute with ECS, a cluster "busy" with a capacity-provider update,
a security group still used by instances that are shutting down. ``retry_aws``
retries exactly those, with bounded exponential backoff, and lets everything else
through at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def error_code(err: BaseException) -> tuple[str, str]:
    """``(code, message)`` of an AWS ClientError; empty strings for anything else."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return "", ""
    error = response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))


def matches(err: BaseException, codes: Iterable[str] = (), phrases: Iterable[str] = ()) -> bool:
    """True when the error's code is one of ``codes`` or its message holds a phrase."""
    code, message = error_code(err)
    lowered = message.lower()
    return code in set(codes) or any(p.lower() in lowered for p in phrases)


def retry_aws(
    call: Callable[[], T],
    *,
    transient: Callable[[BaseException], bool],
    attempts: int = 8,
    delay: float = 1.0,
    max_delay: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, again after ``delay``, ``2 * delay``, ... while ``transient(err)``."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as err:
            if attempt == attempts or not transient(err):
                raise
            sleep(min(max_delay, delay * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")  # the loop returns or raises


# The first CreateCluster naming capacity providers in an account races the creation
# of the ECS service-linked role.
SERVICE_LINKED_ROLE_PENDING = ("Unable to assume the service linked role",)
# PutClusterCapacityProviders / DeleteCluster while an update is in flight.
CLUSTER_BUSY_CODES = ("ResourceInUseException", "UpdateInProgressException")
CLUSTER_BUSY_PHRASES = ("cluster is busy", "busy state", "update in progress")
# Teardown: resources still used by instances the ASG is terminating.
STILL_IN_USE_CODES = (
    "DependencyViolation",
    "ClusterContainsContainerInstancesException",
    "ClusterContainsTasksException",
    "ResourceInUse",
    "ResourceInUseException",
    "ScalingActivityInProgress",
    "ScalingActivityInProgressFault",
)
