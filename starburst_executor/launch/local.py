"""Local workers: subprocesses running the same entrypoint as the container image.

Each worker is ``python -m starburst_executor.worker`` in its own process group
(so it outlives a detached client), configured only by the environment
variables the ECS launcher would pass. Its output goes to
``<STARBURST_HOME>/logs/<session>/<worker>.log``.

Workers (one per call for ``StarburstExecutor``, a session's pool for
``DetachedExecutor``) are forked from a template process that has already imported the
worker (``worker/forkserver.py``): a worker then costs a fork, not an interpreter start
and the SDK's imports. The process's launchers share templates (``_acquire_template``).
``STARBURST_FORKSERVER=0`` starts them as subprocesses instead.
A worker is told apart from a reused pid by its output: the session's log folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._core.layout import new_worker_id
from .._procs import pid_alive, writers_under, writes_under
from ..config import (
    ENV_ECS_METADATA,
    ENV_SESSION,
    ENV_TASK,
    ENV_WORKER,
    EXIT_CANNOT_START,
    forkserver_enabled,
)
from ..errors import StarburstError, WorkersCannotStart
from ..launch_spec import LaunchSpec
from .base import CRASH_LOOP_STARTS, ExitStatus, TaskWorker

STOP_GRACE = 5.0
FORK_REPLY_TIMEOUT = 60.0
LOG_TAIL_LINES = 12  # of a failed worker's log, quoted in WorkersCannotStart
LOG_TAIL_BYTES = 16384  # ... read from this far before its end


class ForkServer:
    """The client's end of one template process (see ``worker/forkserver.py``)."""

    def __init__(self, env: dict[str, str], cwd: str, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(log, "ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "starburst_executor.worker.forkserver"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the client's terminal must not reach it
            )
        self._lock = threading.Lock()
        # A worker is its pid and that pid's fork count here: the template is shared, and
        # a handle an executor kept must not take a later worker with its pid for its own.
        self._pids: queue.Queue[tuple[int, int]] = queue.Queue()
        self._forks: dict[int, int] = {}  # pid -> its fork count, the newest worker's
        self._exits: dict[tuple[int, int], int] = {}  # until its handle reads it
        self._stored: set[tuple[int, int]] = set()  # said its outcome is stored
        self._reader = threading.Thread(target=self._read, name="starburst-forkserver", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if "pid" in message:
                # A reused pid: what its earlier holder reported came before this reply
                # (the template reaps a worker, and reports it, before it forks again).
                pid = int(message["pid"])
                self._forks[pid] = self._forks.get(pid, 0) + 1
                self._pids.put((pid, self._forks[pid]))
            elif "stored" in message:  # from the worker itself (worker/forkserver.py)
                pid = int(message["stored"])
                self._stored.add((pid, self._forks.get(pid, 0)))
            else:
                pid = int(message["exited"])
                self._exits[(pid, self._forks.get(pid, 0))] = int(message["code"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, env: Mapping[str, str], log: Path) -> ForkedWorker:
        request = json.dumps({"env": dict(env), "log": str(log)}).encode() + b"\n"
        with self._lock:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(request)
                self.proc.stdin.flush()
                pid, forks = self._pids.get(timeout=FORK_REPLY_TIMEOUT)
            except (OSError, queue.Empty) as err:
                # A late reply would answer the next request: this template is done
                # (not alive, so its launchers' next worker gets a new one).
                with contextlib.suppress(OSError):
                    self.proc.kill()
                raise StarburstError(f"the worker template process did not fork: {err}") from err
        return ForkedWorker(pid, forks, self)

    def stored(self, pid: int, forks: int) -> bool:
        return (pid, forks) in self._stored

    def take_exit(self, pid: int, forks: int) -> tuple[int | None, bool]:
        """The worker's exit code (None while it runs) and whether it said its outcome
        is stored; both forgotten here once it exited (its handle keeps them)."""
        code = self._exits.pop((pid, forks), None)
        if code is None and not self.alive() and not pid_alive(pid):
            code = -signal.SIGKILL  # the template died before reporting it; it is gone
        if code is None:
            return None, False
        # Its "stored" came before its exit on the same pipe: it is here if it was said.
        stored = (pid, forks) in self._stored
        self._stored.discard((pid, forks))
        return code, stored

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # the template exits; its workers run on
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_GRACE)


# The templates this process's launchers share, by what a template's state depends on:
# its import path, and the settings its SDK session and interpreter may have read at its
# start (a forked worker's environment is otherwise its own: worker/forkserver.py
# replaces it). Starting one costs about 0.4 s of CPU: a process that creates executor
# after executor pays it once. A template no launcher uses lingers, for the next
# executor, until one with another key starts; it exits by itself with this process
# (its request pipe closes).
_TemplateKey = tuple[str, str, str, str, tuple[tuple[str, str], ...]]
_templates: dict[_TemplateKey, ForkServer] = {}
_template_users: dict[_TemplateKey, int] = {}
_templates_lock = threading.Lock()


def _template_reads(name: str) -> bool:
    """Whether a template's state may depend on the variable ``name``: its SDK session
    (AWS settings, proxies, the home of ~/.aws) and its interpreter."""
    upper = name.upper()
    return (
        upper.startswith(("AWS_", "PYTHON", "LC_"))
        or upper.endswith("_PROXY")
        or upper in ("HOME", "LANG", "TZ")
    )


def _forget_templates() -> None:
    # A forked child must not talk to its parent's templates: their replies go to the
    # parent's reader threads. The child starts its own when it needs one.
    global _templates_lock
    _templates.clear()
    _template_users.clear()
    _templates_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_templates)


def _acquire_template(key: _TemplateKey, env: dict[str, str], log: Path) -> ForkServer:
    """The live template for ``key`` (started when there is none), counted as in use."""
    with _templates_lock:
        for other in [k for k, n in _template_users.items() if n == 0 and k != key]:
            _templates.pop(other).close()  # idle, and another setup came: let it go
            del _template_users[other]
        server = _templates.get(key)
        if server is None or not server.alive():
            server = _templates[key] = ForkServer(env, key[2], log)
        _template_users[key] = _template_users.get(key, 0) + 1
        return server


def _release_template(key: _TemplateKey) -> None:
    with _templates_lock:
        if _template_users.get(key, 0) > 0:
            _template_users[key] -= 1


class ForkedWorker:
    """A worker forked by the template: its exit code comes from the template."""

    def __init__(self, pid: int, forks: int, server: ForkServer) -> None:
        self.pid = pid
        self._forks = forks
        self._server = server
        self._code: int | None = None
        self._stored = False

    def poll(self) -> int | None:
        if self._code is None:
            self._code, self._stored = self._server.take_exit(self.pid, self._forks)
        return self._code

    def stored(self) -> bool:
        """The worker said its task's outcome is stored (it is exiting)."""
        return self._stored or self._server.stored(self.pid, self._forks)


class LocalLauncher:
    """Runs workers as local subprocesses."""

    name = "local"

    def __init__(
        self,
        logs_root: Path,
        *,
        strip_aws_env: bool,
        spec: LaunchSpec | None = None,
        python: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``python`` runs the workers (default: this interpreter); ``environ`` is the
        environment they start from before the launcher's variables (default: this
        process's; ``{}`` gives them only what a container would get)."""
        self.spec = spec or LaunchSpec()
        self.logs_root = logs_root
        self._strip_aws_env = strip_aws_env
        self._python = python or sys.executable
        self._environ = environ
        self._procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._forked: dict[str, list[ForkedWorker]] = {}
        self._adopted: dict[str, set[int]] = {}
        # The session's newest pool workers: all failing at start is a crash loop (_cannot_start).
        self._recent: dict[str, deque[tuple[Any, Path]]] = {}
        self._worker_ids: dict[int, str] = {}  # pid -> worker id, to spare busy ones
        self._fork_server: ForkServer | None = None
        self._fork_key: _TemplateKey | None = None
        self._fork_pid = 0  # the process that took it: a forked child's registry is empty
        self._fork_lock = threading.Lock()

    def _serves(self, pid: int, session_id: str) -> bool:
        """True when ``pid`` is a live worker of ``session_id`` (guards against pid reuse)."""
        return writes_under(pid, self.logs_root / session_id)

    def _can_fork(self) -> bool:
        # The template is this interpreter with this environment: a launcher told to
        # use another Python or a clean environment starts plain subprocesses.
        return forkserver_enabled() and self._python == sys.executable and self._environ is None

    def _start(self, session_id: str, env: Mapping[str, str]) -> tuple[str, Any, Path]:
        """A worker forked from the template when possible, else a subprocess."""
        if self._can_fork():
            with contextlib.suppress(StarburstError, OSError):  # else: a plain subprocess
                return self._fork(session_id, env)
        return self._spawn(session_id, env)

    def log_path(self, session_id: str, worker_id: str) -> Path:
        return self.logs_root / session_id / f"{worker_id}.log"

    def session_logs(self, session_id: str) -> list[Path]:
        """The log files of the session's local workers, oldest first."""
        folder = self.logs_root / session_id
        if not folder.is_dir():
            return []
        return sorted(folder.glob("w-*.log"), key=lambda p: p.stat().st_mtime)

    def _base_env(self) -> dict[str, str]:
        base = dict(os.environ if self._environ is None else self._environ)
        # A client that itself runs in an ECS task: its task is not the local workers'.
        base.pop(ENV_ECS_METADATA, None)
        if self._strip_aws_env:
            # The embedded server has its own generated keys; never hand workers the user's.
            base = {k: v for k, v in base.items() if not k.startswith("AWS_")}
        return base

    def _spawn(
        self, session_id: str, env: Mapping[str, str]
    ) -> tuple[str, subprocess.Popen[bytes], Path]:
        base = self._base_env()
        base.update(env)
        worker_id = new_worker_id()
        path = self.log_path(session_id, worker_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                [self._python, "-m", "starburst_executor.worker"],
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

    def _forkserver(self, base: dict[str, str]) -> ForkServer:
        """The template for this interpreter, import path, working directory and the
        settings a template reads (``_template_reads``), shared with this process's
        other launchers; another is used when it died or one of those changed."""
        key: _TemplateKey = (
            sys.executable,
            base.get("PYTHONPATH", ""),
            os.getcwd(),
            str(self.logs_root),
            tuple(sorted((k, v) for k, v in base.items() if _template_reads(k))),
        )
        with self._fork_lock:
            server = self._fork_server
            if server is None or not server.alive() or self._fork_key != key:
                # Taken before ours is let go, so that taking it cannot close ours.
                server = _acquire_template(key, base, self.logs_root / "forkserver.log")
                self._let_template_go()
                self._fork_server, self._fork_key, self._fork_pid = server, key, os.getpid()
            return server

    def _fork(self, session_id: str, env: Mapping[str, str]) -> tuple[str, ForkedWorker, Path]:
        base = self._base_env()
        worker_id = new_worker_id()
        path = self.log_path(session_id, worker_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        full = {
            **base,
            **env,
            ENV_SESSION: session_id,
            ENV_WORKER: worker_id,
            "STARBURST_WORKER_LOG": str(path),
        }
        worker = self._forkserver(base).spawn(full, path)
        self._forked.setdefault(session_id, []).append(worker)
        return worker_id, worker, path

    def _cannot_start(self, session_id: str) -> bool:
        """The session's last ``CRASH_LOOP_STARTS`` pool workers all failed before
        serving (``EXIT_CANNOT_START``: not a store outage, not a task's crash, which
        fails only its task): the next one would fail the same way."""
        recent = self._recent.get(session_id, ())
        return len(recent) == CRASH_LOOP_STARTS and all(
            handle.poll() == EXIT_CANNOT_START for handle, _ in recent
        )

    def launch(
        self, session_id: str, count: int, env: Mapping[str, str]
    ) -> list[dict[str, object]]:
        if count and self._cannot_start(session_id):
            if self.live_count(session_id):
                return []  # the live workers serve on; new ones would only fail again
            # Forgotten once reported: a later submit, after the fix, gets fresh workers.
            recent = self._recent.pop(session_id, None)  # stop() may have popped it
            log = recent[-1][1] if recent else self.logs_root / session_id
            raise WorkersCannotStart(
                f"session {session_id}: the last {CRASH_LOOP_STARTS} local workers could "
                f"not start (exit code {EXIT_CANNOT_START}) and launching stopped; the end "
                f"of the last one's log ({log}) says why:\n{_tail(log)}\n"
                "Fix that, then submit again.",
                stopped_reason=f"exit code {EXIT_CANNOT_START}",
            )
        entries: list[dict[str, object]] = []
        recent = self._recent.setdefault(session_id, deque(maxlen=CRASH_LOOP_STARTS))
        for _ in range(count):
            worker_id, proc, path = self._start(session_id, env)
            recent.append((proc, path))
            self._worker_ids[proc.pid] = worker_id
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
        worker_id, proc, path = self._start(session_id, {**env, ENV_TASK: task_id})
        return TaskWorker(session_id, task_id, worker_id, str(path), proc)

    def exit_statuses(self, workers: Sequence[TaskWorker]) -> list[ExitStatus | None]:
        return [self._exit_status(w) for w in workers]

    def _exit_status(self, worker: TaskWorker) -> ExitStatus | None:
        proc: subprocess.Popen[bytes] | ForkedWorker = worker.handle
        code = proc.poll()
        if code is None:
            if isinstance(proc, ForkedWorker) and proc.stored():
                return ExitStatus(None, "its outcome is stored; exiting", worker.logs, exiting=True)
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
            ) and self._serves(pid, session_id):
                self._adopted.setdefault(session_id, set()).add(pid)
                self._worker_ids[pid] = str(entry.get("worker_id", ""))

    def _pids(self, session_id: str) -> set[int]:
        procs = self._procs.get(session_id, [])
        self._procs[session_id] = [p for p in procs if p.poll() is None]
        own = {p.pid for p in self._procs[session_id]} | self._forked_pids(session_id)
        adopted = {pid for pid in self._adopted.get(session_id, set()) if pid_alive(pid)}
        self._adopted[session_id] = adopted
        return own | adopted

    def _forked_pids(self, session_id: str) -> set[int]:
        """Live forked workers: the template has not reported them reaped, so their pids
        cannot have been reused (their environ in /proc is the template's: no check)."""
        forked = [w for w in self._forked.get(session_id, []) if w.poll() is None]
        self._forked[session_id] = forked
        return {w.pid for w in forked}

    def live_count(self, session_id: str) -> int:
        return len(self._pids(session_id))

    def read_log(self, location: str, position: Any) -> tuple[str, Any]:
        start = int(position or 0)
        try:
            with open(location, "rb") as f:
                f.seek(start)
                chunk = f.read()
        except FileNotFoundError:
            return "", start
        return chunk.decode(errors="replace"), start + len(chunk)

    def cost(
        self, session_id: str, registry: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, object]:
        return {
            "rate_per_worker_hour": 0.0,
            "rate_source": "local workers",
            "running_workers": self.live_count(session_id),
            "estimate_per_hour": 0.0,
            "actual_to_date": 0.0,
        }

    def retire(self, session_id: str, count: int, busy: Collection[str] = ()) -> int:
        # SIGTERM: the worker finishes its current task, then exits. Idle ones first:
        # they exit at once, a busy one only once its task ends.
        victims = sorted(
            self._pids(session_id), key=lambda pid: (self._worker_ids.get(pid) in busy, pid)
        )[:count]
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
        forked = self._forked_pids(session_id)
        pids = {p for p in self._pids(session_id) if p in forked or self._serves(p, session_id)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        self._wait_gone(pids, STOP_GRACE if grace is None else grace)
        for pid in pids:
            if self._reap(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        # A killed process is gone only once the kernel has run its exit, which a loaded
        # machine delays: none may outlive the stop (``shutdown(wait=True)`` says so).
        self._wait_gone(pids, STOP_GRACE)
        # Also when no worker was left to stop: one that exited on the stop request may
        # have left its task process (or what its task started) behind.
        self._stop_task_processes(session_id, STOP_GRACE if grace is None else grace)
        for proc in self._procs.pop(session_id, []):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE)  # reaps; they were SIGKILLed above if need be
        self._adopted.pop(session_id, None)
        self._recent.pop(session_id, None)
        return len(pids)

    def _stop_task_processes(self, session_id: str, grace: float) -> None:
        """Wait for the stopped workers' task processes to be gone: they run in sessions
        of their own (a signal to a worker's group misses them) and die with their
        worker (``PR_SET_PDEATHSIG``), which a loaded machine runs late. None may
        outlive the stop: what is still there after ``grace`` is killed."""
        folder = self.logs_root / session_id
        for wait, last in ((grace, False), (STOP_GRACE, True)):
            left = writers_under(folder)  # one scan of /proc; then only these are polled
            deadline = time.monotonic() + wait
            while left and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the processes with a bounded deadline
                left = [pid for pid in left if writes_under(pid, folder)]
            if not left or last:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _wait_gone(self, pids: Collection[int], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(self._reap(pid) for pid in pids):
            time.sleep(0.05)  # polling the processes with a bounded deadline

    def _reap(self, pid: int) -> bool:
        """True while ``pid`` is still running (reaps it if it is our child)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return pid_alive(pid)

    def _let_template_go(self) -> None:
        if self._fork_key is not None and self._fork_pid == os.getpid():
            _release_template(self._fork_key)
        self._fork_server = self._fork_key = None

    def close(self) -> None:
        """Let the worker template go (the next launcher may use it; workers it forked
        run on either way)."""
        self._let_template_go()


def _tail(log: Path) -> str:
    """The last lines of a worker's log, indented for quoting in an error."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError as err:
        return f"    (unreadable: {err})"
    return "\n".join(f"    {line}" for line in lines) or "    (empty)"
