"""The launcher interface: the only way the core starts or stops workers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..launch_spec import LaunchSpec

# Workers in a row that failed before launching stops (``WorkersCannotStart``): another
# launch would only fail the same way.
CRASH_LOOP_STARTS = 3


@dataclass(frozen=True)
class ExitStatus:
    """How a task worker ended: its exit code (negative: killed by that signal)."""

    code: int | None
    reason: str
    logs: str
    stop_code: str | None = None
    stopped_reason: str = ""
    out_of_memory: bool = False
    spot_interruption: bool = False
    hint: str = ""  # what to do, when the stop reason tells (e.g. the image cannot be pulled)
    # Not ended yet: the worker said its task's outcome is stored and it is exiting.
    exiting: bool = False


@dataclass
class TaskWorker:
    """A worker started for exactly one task (ephemeral mode)."""

    session_id: str
    task_id: str
    worker_id: str
    logs: str
    handle: Any


class Launcher(Protocol):
    """Starts and stops the worker processes of sessions."""

    name: str
    spec: LaunchSpec  # what the session's manifest records to rebuild this launcher

    def launch(
        self, session_id: str, count: int, env: Mapping[str, str]
    ) -> list[dict[str, object]]:
        """Start ``count`` workers for the session with ``env``.

        Returns one worker-registry entry per worker (``worker_id``, ``state`` =
        ``"starting"`` and where it runs), which the caller records in the session so
        another interpreter counts the worker before it has registered itself.
        """
        ...

    def adopt(self, session_id: str, registry: Sequence[Mapping[str, object]]) -> None:
        """Take note of workers started by another interpreter (after ``attach``)."""
        ...

    def live_count(self, session_id: str) -> int:
        """How many of the session's workers this launcher knows to be alive."""
        ...

    def read_log(self, location: str, position: Any) -> tuple[str, Any]:
        """New text of a worker's log (a registry entry's ``logs``) since ``position``
        (None: the start); returns it and the position to pass next time."""
        ...

    def cost(
        self, session_id: str, registry: Sequence[Mapping[str, Any]] = ()
    ) -> dict[str, object]:
        """Rate per worker-hour, running workers, hourly estimate and cost so far
        (``registry``: the session's workers as they recorded themselves)."""
        ...

    def retire(self, session_id: str, count: int, busy: Collection[str] = ()) -> int:
        """Ask ``count`` of the session's workers to stop (they finish their task first),
        those not in ``busy`` (worker ids running a task) first."""
        ...

    def stop(
        self,
        session_id: str,
        registry: Sequence[Mapping[str, object]],
        *,
        grace: float | None = None,
    ) -> int:
        """Stop the session's workers, and only those; returns how many were stopped.

        ``grace``: seconds a worker gets to finish or hand back its task before it is
        killed (None: the launcher's default; ECS uses the container's stop timeout).
        """
        ...

    def start_task_worker(
        self, session_id: str, task_id: str, env: Mapping[str, str]
    ) -> TaskWorker:
        """Start one worker that runs exactly ``task_id`` and exits."""
        ...

    def exit_statuses(self, workers: Sequence[TaskWorker]) -> list[ExitStatus | None]:
        """For each task worker: None while it runs, how it ended once it has (or an
        ``exiting`` status once it said its task's outcome is stored)."""
        ...


@dataclass(frozen=True)
class SessionWorkers:
    """One session's workers, through the launcher that starts them: the launcher's
    methods bound to the session. An executor serves one session and holds this; the
    CLI, which serves many, calls the launcher itself."""

    launcher: Launcher
    session_id: str

    def launch(self, count: int, env: Mapping[str, str]) -> list[dict[str, object]]:
        return self.launcher.launch(self.session_id, count, env)

    def adopt(self, registry: Sequence[Mapping[str, object]]) -> None:
        self.launcher.adopt(self.session_id, registry)

    def live_count(self) -> int:
        return self.launcher.live_count(self.session_id)

    def read_log(self, location: str, position: Any) -> tuple[str, Any]:
        return self.launcher.read_log(location, position)

    def cost(self, registry: Sequence[Mapping[str, Any]] = ()) -> dict[str, object]:
        return self.launcher.cost(self.session_id, registry)

    def retire(self, count: int, busy: Collection[str] = ()) -> int:
        return self.launcher.retire(self.session_id, count, busy)

    def stop(self, registry: Sequence[Mapping[str, object]], *, grace: float | None = None) -> int:
        return self.launcher.stop(self.session_id, registry, grace=grace)

    def start_task_worker(self, task_id: str, env: Mapping[str, str]) -> TaskWorker:
        return self.launcher.start_task_worker(self.session_id, task_id, env)

    def exit_statuses(self, workers: Sequence[TaskWorker]) -> list[ExitStatus | None]:
        return self.launcher.exit_statuses(workers)
