"""ECS made real: every task moto records becomes a local worker process.

moto's ECS (server mode, over HTTP on 127.0.0.1) accepts RunTask but runs nothing.
``EcsHarness`` watches it: each new RUNNING task is started as
``python -m starburst_executor.worker`` with exactly the environment overrides the
launcher sent (on top of this process's environment, which stands in for the task
role and the image); StopTask kills the process; a process that exits makes the
harness stop its task, with the stop reason ECS would give (OutOfMemory, Spot).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

OOM_REASON = "OutOfMemoryError: Container killed due to memory usage"
SPOT_REASON = "Your Spot Task was interrupted."


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
    def __init__(self, moto_url: str, cluster: str, logs_dir: Path) -> None:
        self.ecs = boto3.client(
            "ecs",
            endpoint_url=moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.cluster = cluster
        self.logs_dir = logs_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.overrides: dict[str, dict[str, str]] = {}
        self.stop_reasons: dict[str, str] = {}
        self.stopped: set[str] = set()
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EcsHarness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(timeout=30)
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

    def _round(self) -> None:
        running = self._list("RUNNING")
        new = [a for a in running if a not in self.procs and a not in self.stopped]
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
            self.stopped.add(arn)
        with self._lock:
            exited = [
                a for a, p in self.procs.items() if a not in self.stopped and p.poll() is not None
            ]
        for arn in exited:
            reason = self.stop_reasons.get(arn, "Essential container in task exited")
            self.ecs.stop_task(cluster=self.cluster, task=arn, reason=reason)
            self.stopped.add(arn)

    def _start(self, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        env_list = task["overrides"]["containerOverrides"][0].get("environment", [])
        overrides = {e["name"]: e["value"] for e in env_list}
        log = open(self.logs_dir / f"{arn.rsplit('/', 1)[-1]}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "starburst_executor.worker"],
            env={**os.environ, **overrides},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        with self._lock:
            self.procs[arn] = proc
            self.overrides[arn] = overrides

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
def harness(moto_url: str, cluster: str, logs_dir: Path) -> Iterator[EcsHarness]:
    with EcsHarness(moto_url, cluster, logs_dir) as h:
        yield h
