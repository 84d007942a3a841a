"""ECS workers: Fargate, Fargate Spot and EC2 capacity providers (with Spot).

::

    launch(n) ──▶ task definition (reused when cpu, memory, image, arch, roles match)
              ──▶ RunTask in batches of 10 (one clientToken each, so a retried call
                  whose response was lost starts nothing twice), paced by a token
                  bucket (burst 100, 20/s), within the Fargate vCPU quota (On-Demand
                  L-3032A538, Spot L-36FBB829), tagged and startedBy=session
              ──▶ but first: when the session's last workers all stopped before running
                  (CannotPullContainerError, ResourceInitializationError), raise
                  WorkersCannotStart instead of launching the same failure again
    live_count ─▶ ListTasks(startedBy=session, desiredStatus=RUNNING)
    stop ───────▶ StopTask on the session's tasks only (tag checked)
    exit_statuses ─▶ DescribeTasks, 100 at a time: stopCode, stoppedReason, exit code

Launch parameters carry ids and locations only (environment overrides, at most
8,192 characters); payloads stay in S3.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

from .._core.layout import ecs_worker_id
from ..aws.clients import AwsClients, translate
from ..aws.cost import Rate, actual_cost, ec2_rate, fargate_rate, recorded_tasks
from ..aws.logs import read_events
from ..aws.settings import AwsConfig
from ..config import ENV_SESSION, ENV_SPOT_WATCH, ENV_TASK, ENV_WORKER_LOG, TASK_ID_FIELD
from ..errors import (
    ConfigError,
    CostLimitExceeded,
    StarburstError,
    WorkersCannotStart,
)
from ..launch_spec import LaunchSpec
from .base import CRASH_LOOP_STARTS, ExitStatus, TaskWorker

log = logging.getLogger("starburst_executor")

CONTAINER = "worker"
FAMILY = "starburst-worker"
SESSION_TAG = "starburst-session"
MAX_OVERRIDES = 8192
RUN_TASK_BATCH = 10
FARGATE_VCPU_QUOTA = ("fargate", "L-3032A538")  # On-Demand vCPUs
FARGATE_SPOT_VCPU_QUOTA = ("fargate", "L-36FBB829")  # Spot vCPUs: a quota of its own
# Stops that happen before the container ever runs, and what to do about each.
START_FAILURES = {
    "CannotPullContainerError": (
        "the worker image cannot be pulled: check the image URI and tag exist "
        "(`starburst image build`), that the execution role may read ECR "
        "(ecr:GetAuthorizationToken, ecr:BatchGetImage, ecr:GetDownloadUrlForLayer) and "
        "that the subnets reach ECR (a public IP, a NAT gateway or VPC endpoints)"
    ),
    "ResourceInitializationError": (
        "ECS could not prepare the task (pull secrets, logs or the network): check that "
        "the execution role may write to the log group and that the subnets have a route "
        "to ECR, CloudWatch Logs and S3 (a public IP, a NAT gateway or VPC endpoints)"
    ),
    "CannotStartContainerError": (
        "the container could not start: check the image's entrypoint and architecture "
        "(an arm64 image on x86_64 workers, or the reverse)"
    ),
    "TaskFailedToStart": (
        "ECS could not start the task: read the stopped reason and the worker logs"
    ),
}
# EC2 Spot reclaim without draining: the task stops with this, and no SIGTERM first.
HOST_TERMINATED_RE = re.compile(r"Host EC2 \(instance [^)]*\) terminated")


def start_failure(reason: str) -> str | None:
    """The fix for a stop that happened before the container ran, else None."""
    return next((fix for key, fix in START_FAILURES.items() if key in reason), None)


class TokenBucket:
    """Client-side pacing of RunTask: ``burst`` tasks at once, ``rate`` per second after."""

    def __init__(self, burst: float = 100, rate: float = 20) -> None:
        self.burst, self.rate = burst, rate
        self.tokens = burst
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def wait_time(self, n: int) -> float:
        """Seconds until ``n`` tokens are available (0 when they are); takes them if so."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return 0.0
            return (n - self.tokens) / self.rate

    def take(self, n: int) -> None:
        while (delay := self.wait_time(n)) > 0:
            time.sleep(delay)  # pacing an API budget, not waiting on a result


def quota_window(quota_vcpu: float | None, cpu: float, running: int, wanted: int) -> int:
    """How many of ``wanted`` new tasks fit under the vCPU quota beside ``running`` ones."""
    if quota_vcpu is None:
        return wanted
    room = int(quota_vcpu // cpu) - running
    return max(0, min(wanted, room))


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides = {
        "containerOverrides": [
            {"name": CONTAINER, "environment": [{"name": k, "value": v} for k, v in env.items()]}
        ]
    }
    size = len(json.dumps(overrides))
    if size > MAX_OVERRIDES:
        raise ConfigError(
            f"launch overrides are {size} characters, over ECS's {MAX_OVERRIDES}; "
            "they should carry ids and locations only"
        )
    return overrides


def _stop_status(task: Mapping[str, Any], logs: str) -> ExitStatus:
    containers = task.get("containers") or [{}]
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    stop_code = task.get("stopCode")
    reason = task.get("stoppedReason") or ""
    container_reason = container.get("reason") or ""
    oom = "OutOfMemory" in reason or "OutOfMemory" in container_reason
    # A reclaimed EC2 Spot host is preemption like a Fargate Spot interruption: retryable.
    spot = (
        stop_code == "SpotInterruption"
        or "Spot Task was interrupted" in reason
        or HOST_TERMINATED_RE.search(reason) is not None
    )
    summary = "; ".join(p for p in (stop_code, reason, container_reason) if p)
    fix = start_failure(f"{stop_code or ''} {reason} {container_reason}")
    return ExitStatus(
        code=container.get("exitCode"),
        reason=summary or "stopped",
        logs=logs,
        stop_code=stop_code,
        stopped_reason=reason,
        out_of_memory=oom,
        spot_interruption=spot,
        hint=fix or "",
    )


class EcsLauncher:
    """Starts and stops one session's workers as ECS tasks."""

    name = "ecs"

    def __init__(self, config: AwsConfig, spec: LaunchSpec, clients: AwsClients) -> None:
        config.require("cluster", "subnets", "execution_role_arn", "task_role_arn")
        self.config = config
        self.spec = spec
        self.clients = clients
        self.run_task_pacing = TokenBucket()
        self._task_definition: str | None = None
        self._quota: float | Literal["unknown"] | None = "unknown"
        self._describe_cache: dict[str, Mapping[str, Any]] = {}
        self._described_at = 0.0
        self._rate: Rate | None = None
        self._lock = threading.Lock()
        # Stopped tasks never change again: described once, kept by ARN.
        self._stopped: dict[str, Mapping[str, Any]] = {}

    def _ecs(self, method: str, what: str, **params: Any) -> Any:
        """One ECS call, its failure translated (``what`` names the object it concerns)."""
        try:
            return getattr(self.clients("ecs"), method)(**params)
        except StarburstError:
            raise
        except Exception as err:
            action = "".join(part.title() for part in method.split("_"))
            raise translate(err, f"ecs:{action}", what) from err

    # -- task definition -----------------------------------------------------------

    def _wanted_definition(self) -> dict[str, Any]:
        spec, cfg = self.spec, self.config
        definition: dict[str, Any] = {
            "family": FAMILY,
            # awsvpc tasks on EC2 get no public IP (RunTask refuses ENABLED), so in a
            # default VPC they could not reach S3: EC2 tasks share the instance's network.
            "networkMode": "awsvpc" if spec.launch_type == "FARGATE" else "bridge",
            "requiresCompatibilities": [spec.launch_type],
            "cpu": str(spec.cpu_units),
            "memory": str(spec.memory_mb),
            "executionRoleArn": cfg.execution_role_arn,
            "taskRoleArn": cfg.task_role_arn,
            "runtimePlatform": {
                "cpuArchitecture": spec.architecture,
                "operatingSystemFamily": "LINUX",
            },
            "containerDefinitions": [
                {
                    "name": CONTAINER,
                    "image": spec.image,
                    "essential": True,
                    "memory": spec.memory_mb,
                    "stopTimeout": 120,  # the Spot notice: time to finish or hand back
                    "logConfiguration": {
                        "logDriver": "awslogs",
                        "options": {
                            "awslogs-group": cfg.log_group,
                            "awslogs-region": self.clients.region,
                            "awslogs-stream-prefix": cfg.log_stream_prefix,
                        },
                    },
                }
            ],
            "tags": [{"key": "starburst", "value": "worker"}],
        }
        return definition

    @staticmethod
    def _matches(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
        container = (existing.get("containerDefinitions") or [{}])[0]
        platform = existing.get("runtimePlatform") or {}
        return (
            str(existing.get("cpu")) == wanted["cpu"]
            and existing.get("networkMode") == wanted["networkMode"]
            and str(existing.get("memory")) == wanted["memory"]
            and container.get("image") == wanted["containerDefinitions"][0]["image"]
            and platform.get("cpuArchitecture", "X86_64")
            == wanted["runtimePlatform"]["cpuArchitecture"]
            and existing.get("executionRoleArn") == wanted["executionRoleArn"]
            and existing.get("taskRoleArn") == wanted["taskRoleArn"]
            and wanted["requiresCompatibilities"][0] in existing.get("requiresCompatibilities", [])
        )

    def task_definition(self) -> str:
        """An active revision that matches the spec, registered only when none does."""
        with self._lock:
            if self._task_definition:
                return self._task_definition
            wanted = self._wanted_definition()
            arns = self._ecs(
                "list_task_definitions", FAMILY, familyPrefix=FAMILY, status="ACTIVE", sort="DESC"
            ).get("taskDefinitionArns", [])
            for arn in arns[:20]:
                existing = self._ecs("describe_task_definition", arn, taskDefinition=arn)
                if self._matches(existing["taskDefinition"], wanted):
                    self._task_definition = str(arn)
                    return self._task_definition
            registered = self._ecs("register_task_definition", FAMILY, **wanted)["taskDefinition"]
            self._task_definition = str(registered["taskDefinitionArn"])
            return self._task_definition

    # -- quota ----------------------------------------------------------------------

    def vcpu_quota(self) -> float | None:
        """The account's Fargate vCPU quota for this spec (Spot and On-Demand have one
        each), or None when it cannot be read."""
        if self.spec.launch_type != "FARGATE":
            return None
        if self._quota == "unknown":
            service, code = FARGATE_SPOT_VCPU_QUOTA if self.spec.use_spot else FARGATE_VCPU_QUOTA
            try:
                quota = self.clients("service-quotas", attempts=2).get_service_quota(
                    ServiceCode=service, QuotaCode=code
                )
                self._quota = float(quota["Quota"]["Value"])
            except Exception as err:
                log.warning("cannot read the Fargate vCPU quota (%s); launching without it", err)
                self._quota = None
        return self._quota

    # -- launching ------------------------------------------------------------------

    def _extra_env(self) -> dict[str, str]:
        """Where the worker's log goes (its task id filled in by the worker, which
        registers it), and, on EC2, that the worker watches the instance's Spot notice
        itself (harmless on an On-Demand instance, whose notice never comes)."""
        env = {ENV_WORKER_LOG: self.log_stream(TASK_ID_FIELD)}
        if self.spec.launch_type == "EC2":
            env[ENV_SPOT_WATCH] = "1"
        return env

    def _run_params(self, session_id: str, count: int, env: Mapping[str, str]) -> dict[str, Any]:
        spec, cfg = self.spec, self.config
        params: dict[str, Any] = {
            "cluster": cfg.cluster,
            "taskDefinition": self.task_definition(),
            "count": count,
            # One per batch: botocore's retries of this call reuse it, so a call whose
            # response was lost is answered with its first tasks instead of new ones.
            "clientToken": uuid.uuid4().hex,
            "startedBy": session_id,
            "tags": [{"key": SESSION_TAG, "value": session_id}],
            "enableECSManagedTags": True,
            "overrides": _env_overrides({**env, ENV_SESSION: session_id, **self._extra_env()}),
        }
        if spec.launch_type == "FARGATE":
            params["networkConfiguration"] = {
                "awsvpcConfiguration": {
                    "subnets": list(cfg.subnets),
                    "securityGroups": list(cfg.security_groups),
                    "assignPublicIp": "ENABLED",
                }
            }
            provider = "FARGATE_SPOT" if spec.use_spot else "FARGATE"
        else:
            assert spec.instance_type is not None
            provider = cfg.capacity_providers.get(spec.instance_type, "")
            if not provider:
                raise ConfigError(
                    f"no EC2 capacity provider for {spec.instance_type}; run "
                    f"`starburst setup --ec2 {spec.instance_type}`"
                )
        params["capacityProviderStrategy"] = [{"capacityProvider": provider, "weight": 1}]
        return params

    def _run(self, session_id: str, count: int, env: Mapping[str, str]) -> list[str]:
        """RunTask in batches of at most 10, paced; returns the task ARNs started."""
        arns: list[str] = []
        remaining = count
        failures_left = 5
        while remaining > 0:
            batch = min(RUN_TASK_BATCH, remaining)
            self.run_task_pacing.take(batch)
            resp = self._ecs(
                "run_task", self.config.cluster, **self._run_params(session_id, batch, env)
            )
            started = [t["taskArn"] for t in resp.get("tasks", [])]
            arns += started
            remaining -= len(started)
            if resp.get("failures") and not started:
                failures_left -= 1
                reasons = "; ".join(str(f.get("reason")) for f in resp["failures"])
                if failures_left == 0:
                    raise StarburstError(
                        f"ECS could not start workers for {session_id}: {reasons}; "
                        "check capacity, quotas and the cluster"
                    )
                time.sleep(2 ** (5 - failures_left))  # capacity backoff between attempts
        return arns

    # -- cost --------------------------------------------------------------------------

    def rate(self) -> Rate:
        """The hourly price of one worker of this spec."""
        if self._rate is None:
            spec = self.spec
            if spec.launch_type == "FARGATE":
                self._rate = fargate_rate(
                    spec.cpu,
                    spec.memory_mb,
                    spot=spec.use_spot,
                    arm=spec.architecture == "ARM64",
                    clients=self.clients,
                )
            else:
                assert spec.instance_type is not None
                self._rate = ec2_rate(
                    self.clients, spec.instance_type, spec.cpu, spot=spec.use_spot
                )
        return self._rate

    def _cost_window(self, session_id: str, running: int, wanted: int) -> int:
        cap = self.spec.max_hourly_cost
        per_worker = self.rate().per_worker_hour
        if cap is None or per_worker <= 0:
            return wanted
        allowed = max(0, min(wanted, int(cap // per_worker) - running))
        if wanted and not allowed:
            raise CostLimitExceeded(
                f"session {session_id}: {running} workers at ${per_worker:.4f}/h each already "
                f"reach max_hourly_cost=${cap:.2f}; raise it or wait for workers to finish"
            )
        return allowed

    def cost(
        self, session_id: str, registry: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, object]:
        """Rate, running workers, the hourly estimate and the cost so far: ECS's times
        for the tasks it lists, the session's own record for those it has forgotten."""
        rate = self.rate()
        running = self._session_tasks(session_id)
        stopped = self._session_tasks(session_id, "STOPPED")
        billed = [
            *self.describe(running + stopped),
            *recorded_tasks(registry, {*running, *stopped}),
        ]
        return {
            "rate_per_worker_hour": rate.per_worker_hour,
            "rate_source": rate.source,
            "running_workers": len(running),
            "estimate_per_hour": rate.estimate(len(running)),
            "actual_to_date": actual_cost(billed, rate, fargate=self.spec.launch_type == "FARGATE"),
        }

    def check_starts(self, session_id: str) -> None:
        """Raise ``WorkersCannotStart`` when the session's last ``CRASH_LOOP_STARTS``
        workers all stopped before running: another launch would only fail the same way."""
        arns = self._session_tasks(session_id, "STOPPED")
        fresh = [a for a in arns if a not in self._stopped]
        for task in self.describe(fresh):
            self._stopped[task["taskArn"]] = task
        stopped = [self._stopped[a] for a in arns if a in self._stopped]
        if len(stopped) < CRASH_LOOP_STARTS:
            return
        stopped.sort(key=lambda t: str(t.get("stoppedAt") or t.get("createdAt") or ""))
        last = stopped[-CRASH_LOOP_STARTS:]
        statuses = [_stop_status(t, "") for t in last]
        if not all(s.hint for s in statuses):
            return
        newest = last[-1]
        reason = statuses[-1].stopped_reason or statuses[-1].reason
        raise WorkersCannotStart(
            f"session {session_id}: the last {CRASH_LOOP_STARTS} ECS workers stopped before "
            f"running ({reason}); {statuses[-1].hint}. Launching stopped; the logs of the "
            f"last one: {self.log_stream(str(newest['taskArn']))}",
            stopped_reason=reason,
        )

    def launch(
        self, session_id: str, count: int, env: Mapping[str, str]
    ) -> list[dict[str, object]]:
        if count:
            self.check_starts(session_id)
        running = self.live_count(session_id)
        count = quota_window(self.vcpu_quota(), self.spec.cpu, running, count)
        count = self._cost_window(session_id, running, count)
        arns = self._run(session_id, count, env) if count else []
        now = time.time()
        return [
            {
                "worker_id": ecs_worker_id(arn),
                "session_id": session_id,
                "state": "starting",
                "ecs_task_arn": arn,
                "logs": self.log_stream(arn),
                "updated": now,
            }
            for arn in arns
        ]

    def log_stream(self, task_arn: str) -> str:
        """The awslogs stream ECS creates: ``<prefix>/<container>/<task id>``."""
        task_id = task_arn.rsplit("/", 1)[-1]
        return f"{self.config.log_group}:{self.config.log_stream_prefix}/{CONTAINER}/{task_id}"

    def read_log(self, location: str, position: Any) -> tuple[str, Any]:
        """CloudWatch events of ``"<group>:<stream>"`` after the token ``position``."""
        lines, token = read_events(self.clients, location, position)
        return "".join(line + "\n" for line in lines), token

    # -- watching and stopping ---------------------------------------------------------

    def _session_tasks(self, session_id: str, status: str = "RUNNING") -> list[str]:
        pages = (
            self.clients("ecs")
            .get_paginator("list_tasks")
            .paginate(cluster=self.config.cluster, startedBy=session_id, desiredStatus=status)
        )
        try:
            return [arn for page in pages for arn in page.get("taskArns", [])]
        except Exception as err:
            raise translate(err, "ecs:ListTasks", self.config.cluster) from err

    def adopt(self, session_id: str, registry: Sequence[Mapping[str, object]]) -> None:
        """Nothing to do: ECS itself knows the session's tasks (``startedBy``)."""

    def live_count(self, session_id: str) -> int:
        return len(self._session_tasks(session_id))

    def describe(self, arns: Sequence[str]) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        for start in range(0, len(arns), 100):
            resp = self._ecs(
                "describe_tasks",
                self.config.cluster,
                cluster=self.config.cluster,
                tasks=list(arns[start : start + 100]),
                include=["TAGS"],
            )
            out += resp.get("tasks", [])
        return out

    def retire(self, session_id: str, count: int, busy: Collection[str] = ()) -> int:
        # StopTask sends SIGTERM; stopTimeout (120 s) lets the task finish or hand back.
        # Idle workers first: they exit at once, a busy one only once its task ends.
        tasks = self._session_tasks(session_id)
        victims = sorted(tasks, key=lambda arn: ecs_worker_id(arn) in busy)[:count]
        for arn in victims:
            self._ecs(
                "stop_task",
                arn,
                cluster=self.config.cluster,
                task=arn,
                reason=f"scaled down {session_id}",
            )
        return len(victims)

    def stop(
        self,
        session_id: str,
        registry: Sequence[Mapping[str, object]],
        *,
        grace: float | None = None,
    ) -> int:
        # StopTask sends SIGTERM, then SIGKILL after the container's stop timeout: ECS
        # owns the grace period, so ``grace`` has no effect here.
        arns = self._session_tasks(session_id)
        stopped = 0
        for task in self.describe(arns):
            tags = {t.get("key"): t.get("value") for t in task.get("tags", [])}
            if tags.get(SESSION_TAG) != session_id:
                continue  # never another session's task
            self._ecs(
                "stop_task",
                task["taskArn"],
                cluster=self.config.cluster,
                task=task["taskArn"],
                reason=f"starburst cleanup of {session_id}",
            )
            stopped += 1
        return stopped

    def start_task_worker(
        self, session_id: str, task_id: str, env: Mapping[str, str]
    ) -> TaskWorker:
        quota = self.vcpu_quota()
        if self.spec.max_hourly_cost is not None or quota is not None:
            running = self.live_count(session_id)
            if not quota_window(quota, self.spec.cpu, running, 1):
                raise StarburstError(
                    f"task {task_id} of {session_id}: {running} workers of {self.spec.cpu:g} "
                    f"vCPU already fill the Fargate vCPU quota ({quota:g}); lower max_workers "
                    "or ask AWS to raise the quota (Service Quotas, fargate)"
                )
            self._cost_window(session_id, running, 1)
        arns = self._run(session_id, 1, {**env, ENV_TASK: task_id})
        if not arns:
            raise StarburstError(f"ECS started no worker for {task_id} of {session_id}")
        arn = arns[0]
        worker_id = ecs_worker_id(arn)
        return TaskWorker(session_id, task_id, worker_id, self.log_stream(arn), arn)

    def exit_statuses(self, workers: Sequence[TaskWorker]) -> list[ExitStatus | None]:
        """DescribeTasks for all of them, 100 at a time, at most once a second."""
        now = time.monotonic()
        if now - self._described_at >= 1.0:
            self._described_at = now
            for task in self.describe([w.handle for w in workers]):
                self._describe_cache[task["taskArn"]] = task
        out: list[ExitStatus | None] = []
        for worker in workers:
            described = self._describe_cache.get(worker.handle)
            if described is None or described.get("lastStatus") != "STOPPED":
                out.append(None)
            else:
                out.append(_stop_status(described, worker.logs))
        return out
