"""Local workers: subprocesses running the same entrypoint as the container image.

Each worker is ``python -m starburst_executor.worker`` in its own process group
(so it outlives a detached client), configured only by the environment
variables the ECS launcher would pass. Its output goes to
``<STARBURST_HOME>/logs/<session>/<worker>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._core.layout import new_worker_id
from .._procs import pid_alive
from ..config import ENV_SESSION, ENV_TASK, ENV_WORKER
from .base import ExitStatus, TaskWorker

STOP_GRACE = 5.0


def _serves(pid: int, session_id: str) -> bool:
    """True when ``pid`` is a live worker of ``session_id`` (guards against pid reuse)."""
    if not pid_alive(pid):
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ENV_SESSION}={session_id}".encode() in environ


class LocalLauncher:
    """Runs workers as local subprocesses."""

    name = "local"

    def __init__(self, logs_root: Path, *, strip_aws_env: bool) -> None:
        self.logs_root = logs_root
        self._strip_aws_env = strip_aws_env
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._adopted: dict[str, set[int]] = {}

    def log_path(self, session_id: str, worker_id: str) -> Path:
        return self.logs_root / session_id / f"{worker_id}.log"

    def session_logs(self, session_id: str) -> list[Path]:
        """The log files of the session's local workers, oldest first."""
        folder = self.logs_root / session_id
        if not folder.is_dir():
            return []
        return sorted(folder.glob("w-*.log"), key=lambda p: p.stat().st_mtime)

    def _spawn(
        self, session_id: str, env: Mapping[str, str]
    ) -> tuple[str, subprocess.Popen[bytes], Path]:
        base = dict(os.environ)
        if self._strip_aws_env:
            # The embedded server has its own generated keys; never hand workers the user's.
            base = {k: v for k, v in base.items() if not k.startswith("AWS_")}
        base.update(env)
        worker_id = new_worker_id()
        path = self.log_path(session_id, worker_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "starburst_executor.worker"],
                env={
                    **base,
                    ENV_SESSION: session_id,
                    ENV_WORKER: worker_id,
                    "STARBURST_WORKER_LOG": str(path),
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.setdefault(session_id, []).append(proc)
        return worker_id, proc, path

    def launch(
        self, session_id: str, count: int, env: Mapping[str, str]
    ) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for _ in range(count):
            worker_id, proc, path = self._spawn(session_id, env)
            entries.append(
                {
                    "worker_id": worker_id,
                    "session_id": session_id,
                    "state": "starting",
                    "pid": proc.pid,
                    "host": socket.gethostname(),
                    "logs": str(path),
                    "updated": time.time(),
                }
            )
        return entries

    def start_task_worker(
        self, session_id: str, task_id: str, env: Mapping[str, str]
    ) -> TaskWorker:
        worker_id, proc, path = self._spawn(session_id, {**env, ENV_TASK: task_id})
        return TaskWorker(session_id, task_id, worker_id, str(path), proc)

    def exit_statuses(self, workers: Sequence[TaskWorker]) -> list[ExitStatus | None]:
        return [self._exit_status(w) for w in workers]

    def _exit_status(self, worker: TaskWorker) -> ExitStatus | None:
        proc: subprocess.Popen[bytes] = worker.handle
        code = proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            reason = f"killed by {name}"
        else:
            reason = f"exit code {code}"
        # A kernel OOM kill is a SIGKILL too; locally the two cannot be told apart.
        return ExitStatus(code, reason, worker.logs)

    def adopt(self, session_id: str, registry: Sequence[Mapping[str, object]]) -> None:
        host = socket.gethostname()
        for entry in registry:
            pid = entry.get("pid")
            if (
                entry.get("host") == host
                and entry.get("state") in {"starting", "running"}
                and isinstance(pid, int)
            ) and _serves(pid, session_id):
                self._adopted.setdefault(session_id, set()).add(pid)

    def _pids(self, session_id: str) -> set[int]:
        procs = self._procs.get(session_id, [])
        self._procs[session_id] = [p for p in procs if p.poll() is None]
        own = {p.pid for p in self._procs[session_id]}
        adopted = {pid for pid in self._adopted.get(session_id, set()) if pid_alive(pid)}
        self._adopted[session_id] = adopted
        return own | adopted

    def live_count(self, session_id: str) -> int:
        return len(self._pids(session_id))

    def launch_info(self) -> dict[str, Any]:
        return {}  # local workers need nothing recorded to be found again

    def cost(self, session_id: str) -> dict[str, object]:
        return {
            "rate_per_worker_hour": 0.0,
            "rate_source": "local workers",
            "running_workers": self.live_count(session_id),
            "estimate_per_hour": 0.0,
            "actual_to_date": 0.0,
        }

    def retire(self, session_id: str, count: int) -> int:
        # SIGTERM: the worker finishes its current task, then exits.
        victims = sorted(self._pids(session_id))[:count]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        return len(victims)

    def stop(
        self,
        session_id: str,
        registry: Sequence[Mapping[str, object]],
        *,
        grace: float | None = None,
    ) -> int:
        self.adopt(session_id, registry)
        pids = {pid for pid in self._pids(session_id) if _serves(pid, session_id)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + (STOP_GRACE if grace is None else grace)
        while time.monotonic() < deadline and any(self._reap(pid) for pid in pids):
            time.sleep(0.05)
        for pid in pids:
            if self._reap(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        for proc in self._procs.pop(session_id, []):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE)  # reaps; they were SIGKILLed above if need be
        self._adopted.pop(session_id, None)
        return len(pids)

    def _reap(self, pid: int) -> bool:
        """True while ``pid`` is still running (reaps it if it is our child)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return pid_alive(pid)
