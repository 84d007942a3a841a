"""``TaskFuture``: a real ``concurrent.futures.Future`` that knows its task.

Only its executor resolves it (through ``_resolve``), with the Future's own
setters, so ``as_completed``, ``wait``, ``add_done_callback`` and
``asyncio.wrap_future`` behave exactly as with the standard library.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from ..errors import SubmitConflict
from .codec import Outcome


class TaskFuture(concurrent.futures.Future[Any]):
    """A future for one remote task.

    Attributes:
        task_id: the task's id within its session (``t000000042``).
        session_id: the session the task belongs to.
    """

    def __init__(
        self, session_id: str, task_id: str, canceller: Callable[[str], bool] | None = None
    ) -> None:
        super().__init__()
        self.session_id = session_id
        self.task_id = task_id
        self._canceller = canceller
        self._outcome: Outcome | None = None
        self._call = ""  # the nonce of the payload this client stored ("": attached)
        # Serialises cancel-then-notify: Future.cancel() answers True for a future that
        # is already cancelled, so without it two cancellers could both notify waiters
        # and the second set_running_or_notify_cancel() would raise.
        self._cancel_lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.session_id}/{self.task_id} {self._state.lower()}>"

    @property
    def stdout(self) -> str | None:
        """What the task printed to stdout, once it has finished (None before)."""
        return self._outcome.stdout if self._outcome else None

    @property
    def stderr(self) -> str | None:
        """What the task printed to stderr, warnings included, once finished."""
        return self._outcome.stderr if self._outcome else None

    @property
    def worker_id(self) -> str | None:
        return self._outcome.worker_id if self._outcome else None

    @property
    def attempt(self) -> int | None:
        """How many times a worker started this task (more than 1 after a takeover)."""
        return self._outcome.attempt if self._outcome else None

    def cancel(self) -> bool:
        """Cancel the task for every worker, if none has claimed it yet."""
        if self.done():
            return self.cancelled()
        if self.running():
            return False
        if self._canceller is not None and not self._canceller(self.task_id):
            return False
        return self._mark_cancelled()

    # Executor-only methods below.

    def _mark_cancelled(self) -> bool:
        """Cancel and notify waiters exactly once, whatever other threads do meanwhile."""
        with self._cancel_lock:
            if not super().cancel():
                return self.cancelled()
            # Checked and changed under the Future's own (re-entrant) lock: a dispatcher
            # may notify the cancel itself in between.
            with self._condition:
                if self._state == concurrent.futures._base.CANCELLED:
                    # Wake as_completed/wait waiters, as executors do for a cancelled future.
                    self.set_running_or_notify_cancel()
            return True

    def _resolve(self, outcome: Outcome) -> None:
        """Set the result or exception from a decoded outcome (executor only)."""
        if self.done():
            return
        if outcome.call and self._call and outcome.call != self._call:
            # Another client's call ran under this id (two clients submitted to one
            # session at once, in batches that overlap): ours was never run.
            self._fail(
                SubmitConflict(
                    f"task {self.task_id} of session {self.session_id} ran another "
                    "client's call: two clients submitted to this session at once and "
                    "this call was not run; submit from one client at a time (attach "
                    "again to see the other client's tasks)"
                )
            )
            return
        self._outcome = outcome
        try:
            if outcome.kind == "ok":
                try:
                    value = outcome.result()
                except Exception as err:
                    self.set_exception(err)
                else:
                    self.set_result(value)
            elif outcome.kind == "error":
                self.set_exception(outcome.exception())
            elif not self._mark_cancelled():
                # Cancelled elsewhere (another client, the CLI) while we saw it running.
                self.set_exception(
                    concurrent.futures.CancelledError(f"task {self.task_id} was cancelled")
                )
        except concurrent.futures.InvalidStateError:
            pass  # cancelled locally in the meantime

    def _fail(self, exc: BaseException) -> None:
        """Fail the future with a client-side error (executor only)."""
        if not self.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.set_exception(exc)
