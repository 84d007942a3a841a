"""ECS made real: every task moto records becomes a local worker process.

moto's ECS (server mode, over HTTP on 127.0.0.1) accepts RunTask but runs nothing.
``EcsHarness`` watches it: each new RUNNING task is started as
``python -m starburst_executor.worker`` with exactly the environment overrides the
launcher sent on top of a minimal base (PATH, HOME, the image's code on PYTHONPATH,
and the keys that stand in for the task role), never this process's environment, so
a variable the launcher forgot fails the test as it would on AWS. StopTask kills the
process; a process that exits makes the harness stop its task, with the stop reason
ECS would give (OutOfMemory, Spot, Host EC2 terminated).

It also plays what AWS does and moto does not: tasks that stop before running
(``fail_starts``: CannotPullContainerError, ResourceInitializationError), a
PROVISIONING delay before a task's process starts, the task metadata endpoint ECS
gives every container (``ECS_CONTAINER_METADATA_URI_V4``), stopped tasks that leave
ListTasks (``forget_stopped``), and, through ``inject``, any control-plane answer,
such as RunTask ``failures[]`` or a transient error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
SPOT_REASON = "Your Spot Task was interrupted."
HOST_TERMINATED_REASON = "Host EC2 (instance i-0123456789abcdef0) terminated."
PULL_ERROR_REASON = (
    "CannotPullContainerError: pull image manifest has been retried 5 time(s): failed to "
    "resolve ref 123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst-worker:test: not found"
)
INIT_ERROR_REASON = (
    "ResourceInitializationError: unable to pull secrets or registry auth: execution "
    "resource retrieval failed: unable to retrieve ecr registry auth"
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# What every container of the worker image has, whatever the launcher sends.
_BASE_ENV = ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR")


def inject(
    client: Any, operation: str, answers: list[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Answer the client's next calls of ``operation`` with ``answers`` instead of AWS.

    Each answer is a parsed response: ``{"Error": {"Code": ..., "Message": ...}}``
    raises that error (status ``"status"``, default 400), anything else is returned as
    the call's result. Once they are used up, calls reach moto again. Returns the
    list of request parameters seen by the injected calls.
    """
    queue = list(answers)
    seen: list[Mapping[str, Any]] = []
    asked: list[Mapping[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def build(params: Mapping[str, Any], **_: Any) -> None:
        asked[:] = [dict(params)]  # the API parameters, before serialisation

    def before(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not queue:
            return None
        seen.append(asked[0] if asked else {})
        answer = dict(queue.pop(0))
        status = int(answer.pop("status", 400 if "Error" in answer else 200))
        answer.setdefault("ResponseMetadata", {"HTTPStatusCode": status, "HTTPHeaders": {}})
        return SimpleNamespace(status_code=status, headers={}, content=b""), answer

    client.meta.events.register(f"before-parameter-build.{service}.{operation}", build)
    client.meta.events.register(f"before-call.{service}.{operation}", before)
    return seen


def record_calls(client: Any, operation: str) -> list[Mapping[str, Any]]:
    """The parameters of every later call of ``operation`` on ``client``."""
    seen: list[Mapping[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def before(params: Mapping[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    client.meta.events.register(f"before-parameter-build.{service}.{operation}", before)
    return seen


def play_times(client: Any, harness: EcsHarness) -> None:
    """``client``'s DescribeTasks gives each task the ``pullStartedAt``, ``startedAt``
    and ``stoppedAt`` AWS would (moto leaves them out): its worker's start and end."""
    service = client.meta.service_model.service_id.hyphenize()

    def after(parsed: dict[str, Any], **_: Any) -> None:
        with harness._lock:
            times = dict(harness.times)
        for task in parsed.get("tasks", []):
            started, stopped = times.get(task.get("taskArn"), (None, None))
            if started is not None:
                task.setdefault("pullStartedAt", started)
                task.setdefault("startedAt", started)
            if stopped is not None:
                task.setdefault("stoppedAt", stopped)

    client.meta.events.register(f"after-call.{service}.DescribeTasks", after)


def forget_stopped(client: Any, harness: EcsHarness) -> None:
    """From now on ``client``'s ListTasks no longer names the tasks that have stopped,
    as AWS forgets a stopped task about an hour after it stops."""
    service = client.meta.service_model.service_id.hyphenize()

    def after(parsed: dict[str, Any], **_: Any) -> None:
        with harness._lock:
            gone = set(harness.stopped)
        parsed["taskArns"] = [a for a in parsed.get("taskArns", []) if a not in gone]

    client.meta.events.register(f"after-call.{service}.ListTasks", after)


class _TaskMetadata(ThreadingHTTPServer):
    """The task metadata endpoint: ``GET /v4/<task id>/task`` names that task's ARN."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TaskMetadataHandler)
        self.arns: dict[str, str] = {}

    def uri(self, arn: str) -> str:
        task_id = arn.rsplit("/", 1)[-1]
        self.arns[task_id] = arn
        return f"http://127.0.0.1:{self.server_address[1]}/v4/{task_id}"


class _TaskMetadataHandler(BaseHTTPRequestHandler):
    server: _TaskMetadata

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        arn = self.server.arns.get(parts[1]) if len(parts) == 3 and parts[2] == "task" else None
        body = json.dumps({"TaskARN": arn}).encode() if arn else b""
        self.send_response(200 if arn else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def manual_transitions(url: str) -> None:
    """Tasks stay where the harness puts them (otherwise they drift to STOPPED)."""
    body = json.dumps(
        {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}
    ).encode()
    request = urllib.request.Request(
        url + "/moto-api/state-manager/set-transition", data=body, method="POST"
    )
    urllib.request.urlopen(request, timeout=10).read()


class EcsHarness:
    def __init__(
        self,
        moto_url: str,
        cluster: str,
        logs_dir: Path,
        task_role: Mapping[str, str] | None = None,
        *,
        provisioning_delay: float = 0.0,
    ) -> None:
        self.ecs = boto3.client(
            "ecs",
            endpoint_url=moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.cluster = cluster
        self.logs_dir = logs_dir
        self.task_role = dict(task_role or {})
        self.provisioning_delay = provisioning_delay
        self._seen: dict[str, float] = {}  # first seen RUNNING, for the PROVISIONING delay
        self._start_failure: str | None = None
        self._start_failures_left: int | None = None
        self.failed_starts: list[str] = []  # tasks stopped before running
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.overrides: dict[str, dict[str, str]] = {}
        self.stop_reasons: dict[str, str] = {}
        self.stopped: set[str] = set()
        self.times: dict[str, tuple[dt.datetime, dt.datetime | None]] = {}  # (start, stop)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._metadata = _TaskMetadata()
        self._metadata_thread = threading.Thread(target=self._metadata.serve_forever, daemon=True)

    def __enter__(self) -> EcsHarness:
        self._metadata_thread.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=30)
        self._metadata.shutdown()
        self._metadata.server_close()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _list(self, status: str) -> list[str]:
        arns: list[str] = []
        token = None
        while True:
            kwargs: dict[str, Any] = {"cluster": self.cluster, "desiredStatus": status}
            if token:
                kwargs["nextToken"] = token
            resp = self.ecs.list_tasks(**kwargs)
            arns += resp.get("taskArns", [])
            token = resp.get("nextToken")
            if not token:
                return arns

    def _run(self) -> None:
        while not self._halt.wait(0.05):
            try:
                self._round()
            except Exception as err:  # keep watching; a test fails on its own terms
                print(f"ecs harness: {err!r}", file=sys.stderr)

    def fail_starts(self, reason: str | None, count: int | None = None) -> None:
        """Stop the next ``count`` new tasks (all, when None) before they run, with
        ``reason``; ``None`` ends it."""
        with self._lock:
            self._start_failure = reason
            self._start_failures_left = count

    def _take_start_failure(self) -> str | None:
        with self._lock:
            reason = self._start_failure
            if reason is None:
                return None
            if self._start_failures_left is not None:
                self._start_failures_left -= 1
                if self._start_failures_left <= 0:
                    self._start_failure = None
            return reason

    def _round(self) -> None:
        running = self._list("RUNNING")
        now = time.monotonic()
        for arn in running:
            self._seen.setdefault(arn, now)
        new = [
            a
            for a in running
            if a not in self.procs
            and a not in self.stopped
            and now - self._seen[a] >= self.provisioning_delay
        ]
        for start in range(0, len(new), 100):
            tasks = self.ecs.describe_tasks(cluster=self.cluster, tasks=new[start : start + 100])
            for task in tasks["tasks"]:
                self._start(task)
        for arn in self._list("STOPPED"):
            proc = self.procs.get(arn)
            if arn not in self.stopped and proc is not None and proc.poll() is None:
                # StopTask: SIGTERM, then SIGKILL (ECS waits stopTimeout; we do not).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self._stopped(arn)
        with self._lock:
            exited = [
                a for a, p in self.procs.items() if a not in self.stopped and p.poll() is not None
            ]
        for arn in exited:
            reason = self.stop_reasons.get(arn, "Essential container in task exited")
            self.ecs.stop_task(cluster=self.cluster, task=arn, reason=reason)
            self._stopped(arn)

    def _stopped(self, arn: str) -> None:
        with self._lock:
            if arn in self.times and self.times[arn][1] is None:
                self.times[arn] = (self.times[arn][0], _now())
            self.stopped.add(arn)

    def base_env(self) -> dict[str, str]:
        """The image's environment: no test settings, only what a container has."""
        env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
        env["AWS_CONFIG_FILE"] = os.devnull
        env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        return {**env, **self.task_role}

    def _start(self, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        env_list = task["overrides"]["containerOverrides"][0].get("environment", [])
        overrides = {e["name"]: e["value"] for e in env_list}
        reason = self._take_start_failure()
        if reason is not None:
            with self._lock:
                self.overrides[arn] = overrides
                self.failed_starts.append(arn)
                self.stopped.add(arn)
            self.ecs.stop_task(cluster=self.cluster, task=arn, reason=reason)
            return
        log = open(self.logs_dir / f"{arn.rsplit('/', 1)[-1]}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "starburst_executor.worker"],
            env={
                **self.base_env(),
                "ECS_CONTAINER_METADATA_URI_V4": self._metadata.uri(arn),  # ECS sets it
                **overrides,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        with self._lock:
            self.procs[arn] = proc
            self.overrides[arn] = overrides
            self.times[arn] = (_now(), None)

    def kill(self, arn: str, reason: str | None = None) -> None:
        """Kill a task's worker the way ECS would (OOM, Spot); its task then stops."""
        if reason:
            self.stop_reasons[arn] = reason
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[arn].pid, signal.SIGKILL)

    def live(self) -> list[str]:
        with self._lock:
            return [a for a, p in self.procs.items() if p.poll() is None]

    def wait_for_tasks(self, count: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.live()
            if len(live) >= count:
                return live
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} ECS workers started")


@contextlib.contextmanager
def harness(
    moto_url: str,
    cluster: str,
    logs_dir: Path,
    task_role: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[EcsHarness]:
    with EcsHarness(moto_url, cluster, logs_dir, task_role, **options) as h:
        yield h
