"""``StarburstExecutor``: a drop-in for ``ProcessPoolExecutor``, one worker per task.

::

    submit ──PUT tasks/<t>──▶ S3 ◀──claim, GET payload, PUT result── worker (one per task)
       │                       ▲                                         ▲
       └─ queue ─▶ dispatcher ─┼── starts at most max_workers workers ───┘
                     │         │
                     └─ on each worker's exit: GET results/<t> ─▶ resolve the future,
                        or fail it with WorkerDied (exit status, logs) if there is none

Changes from the standard library's process pool, on purpose:

* the call is pickled (cloudpickle) at ``submit``: what cannot be pickled fails
  there, and lambdas, closures and ``__main__`` functions work;
* a worker that dies fails only its own future (``WorkerDied``, a
  ``BrokenProcessPool``); the executor keeps going instead of becoming broken (an
  initializer that raises does break it, as in the standard library);
* the session lives in S3, so ``DetachedExecutor.attach`` can find the work if the
  client dies; a clean ``shutdown(wait=True)`` deletes it.

As in the standard library, a script that ends without ``shutdown`` runs every
submitted call first (a ``threading`` exit hook, before ``atexit`` callbacks).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from typing_extensions import ParamSpec, Unpack

from ._base import SessionExecutor
from ._core.futures import TaskFuture
from .config import ENV_TAKEOVER, SessionOptions, check_options, session_settings
from .errors import BrokenExecutor, ConfigError, ObjectNotFound, StarburstError, WorkerDied
from .launch.base import ExitStatus, TaskWorker

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("starburst_executor")

EXIT_POLL_INTERVAL = 0.005
EXIT_WAIT = 30.0  # at shutdown, for workers whose outcome was read as they exited
EXITING_PRUNE = 64  # past this many such workers, those that have exited are forgotten


class StarburstExecutor(SessionExecutor):
    """Runs each call in a worker of its own, at most ``max_workers`` at once.

    Args:
        max_workers: calls running at once (default: CPU count); the rest queue here.
        mp_context: accepted for signature compatibility; must be None.
        initializer, initargs: run in each worker before its call.
        max_tasks_per_child: accepted for compatibility; every worker runs one task.
        cpu, memory: per worker (ECS); recorded for local workers.
        absolute_timeout: seconds until the session's deadline.
        seed: a root seed; each call's ``random`` (and numpy) is seeded from (seed, index).
        backend, ECS options, endpoint_url, bucket, prefix, region, ship_code: as for
            ``DetachedExecutor``.
    """

    _max_batch = 1  # each call's worker starts once its call is stored: no batching

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: object | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        **options: Unpack[SessionOptions],
    ) -> None:
        check_options(type(self).__name__, options, SessionOptions)
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is not None:
            raise ConfigError("mp_context has no meaning for remote workers; leave it None")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        workers = max_workers or (os.cpu_count() or 1)
        self._create_session("ephemeral", session_settings(workers, options), options)
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._cv = threading.Condition()
        self._queue: collections.deque[TaskFuture] = collections.deque()
        self._running: dict[str, tuple[TaskFuture, TaskWorker]] = {}
        self._retries: dict[str, int] = {}
        # Workers whose outcome was read before they exited (they said it was stored):
        # the dispatcher waits for their exit before it ends, so none outlives shutdown.
        self._exiting: list[TaskWorker] = []
        self._unread: set[str] = set()  # said stored, but the read found nothing
        self._stopping = False
        self._finished = False
        self._dispatcher = threading.Thread(
            target=self._dispatch, name=f"starburst-dispatch-{self.session_id}", daemon=True
        )
        self._dispatcher.start()

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture:
        """Store the call in S3 and queue it for a worker of its own."""
        future = self._store_call(fn, args, kwargs, self._cancel_queued)
        # A worker of its own is started for the call: it must be in S3 first. Each
        # call's store error is on its own future: another thread's is not this call's.
        with contextlib.suppress(StarburstError):
            self._pipeline.flush()
        error = future.exception(0) if future.done() and not future.cancelled() else None
        if error is not None:
            raise error
        with self._cv:
            # The initializer may have broken the executor while the call was stored:
            # then it is one of the queued calls that fail (_fail_queued), never started.
            broken = self._broken
            if broken is None:
                self._queue.append(future)
                self._cv.notify_all()
        if broken is not None:
            future._fail(BrokenExecutor(broken))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the standard library: refuse new work, optionally cancel queued calls, wait.

        After a clean wait the session's objects are deleted: every result has been
        delivered to its future. Calling it again does nothing more.

        A script that ends without calling it gets ``shutdown(wait=True)`` at exit, as
        with ``ProcessPoolExecutor``: every submitted call runs first.
        """
        with self._lock:
            self._closed = True
            if self._finished:
                return
        if cancel_futures:
            with self._cv:
                queued = list(self._queue)
            for future in queued:
                future.cancel()
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if wait:
            self._dispatcher.join()
            with self._lock:
                if self._finished:
                    return  # another thread (the exit hook) finished it meanwhile
                self._finished = True
            with contextlib.suppress(StarburstError):
                self._runtime.loop.run(self._session.delete())
            self._close_runtime()

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._interrupt()  # Ctrl-C: stop now, not after every queued call
            return
        self.shutdown(wait=True)

    def _interrupt(self) -> None:
        """Cancel the queued calls, stop this executor's running workers, say so in one
        line; the ``KeyboardInterrupt`` goes on. Used by ``with`` on Ctrl-C."""
        with self._lock:
            self._closed = True
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
            running = [f for f, _ in self._running.values()]
            self._stopping = True
            self._cv.notify_all()
        for future in queued:
            future._mark_cancelled()
        stopped = 0
        with contextlib.suppress(StarburstError, OSError):
            # No grace: the user asked to stop, their calls' results are not wanted.
            stopped = self._workers.stop([], grace=0.5)
        for future in running:
            future._fail(
                concurrent.futures.CancelledError(
                    f"task {future.task_id} was stopped by an interrupt (Ctrl-C)"
                )
            )
        self._dispatcher.join(timeout=5)
        with contextlib.suppress(StarburstError, concurrent.futures.TimeoutError):
            self._runtime.loop.run(self._session.delete(), timeout=5)
        self._close_runtime()
        print(
            f"starburst: interrupted: cancelled {len(queued)} queued call(s), stopped "
            f"{stopped} running worker(s) of session {self.session_id}",
            file=sys.stderr,
            flush=True,
        )

    # -- executor-only -------------------------------------------------------------

    def _at_exit(self, interrupted: bool) -> None:
        if interrupted:
            self._interrupt()
            return
        # As ProcessPoolExecutor at exit: run what was submitted, then stop; a Ctrl-C
        # while exit waits stops the rest instead.
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self._interrupt()

    def _fail_queued(self, message: str) -> None:
        with self._cv:
            queued = list(self._queue)
            self._queue.clear()
        for future in queued:
            future._fail(BrokenExecutor(message))

    def _cancel_queued(self, tid: str) -> bool:
        with self._cv:
            future = next((f for f in self._queue if f.task_id == tid), None)
            if future is None:
                return False
            self._queue.remove(future)
        # Recorded in S3 too, so an attached interpreter sees the task as cancelled.
        with contextlib.suppress(StarburstError):
            self._runtime.loop.run(self._session.cancel(tid))
        return True

    def _dispatch(self) -> None:
        while True:
            with self._cv:
                while self._queue and len(self._running) < self.settings.max_workers:
                    future = self._queue.popleft()
                    if future.set_running_or_notify_cancel():
                        self._start(future, takeover=False)
                if self._stopping and not self._queue and not self._running:
                    break
                if not self._running:
                    self._cv.wait()
                    continue
                running = list(self._running.values())
            try:
                statuses = self._workers.exit_statuses([w for _, w in running])
            except StarburstError as err:
                log.warning("watching the workers of %s failed, retrying: %s", self.session_id, err)
                statuses = [None] * len(running)
            ended = [
                (f, w, s)
                for (f, w), s in zip(running, statuses, strict=True)
                if s and not (s.exiting and f.task_id in self._unread)
            ]
            for future, worker, status in ended:
                if status.exiting and not self._settle_stored(future):
                    self._unread.add(future.task_id)  # then wait for the exit itself
                    continue
                with self._cv:
                    self._running.pop(future.task_id, None)
                if status.exiting:
                    self._exiting.append(worker)
                else:
                    self._settle(future, worker, status)
            if len(self._exiting) > EXITING_PRUNE:
                self._await_exits(0.0)  # forget those that have exited
            if not ended:
                with self._cv:
                    self._cv.wait(EXIT_POLL_INTERVAL)
        self._await_exits(EXIT_WAIT)

    def _settle_stored(self, future: TaskFuture) -> bool:
        """The worker said the outcome is stored: resolve the future with it now."""
        try:
            outcome = self._runtime.loop.run(self._session.read_outcome(future.task_id))
        except StarburstError:
            return False
        future._resolve(outcome)
        return True

    def _await_exits(self, timeout: float) -> None:
        """Until every worker whose outcome was read early has exited (they are on
        their way out: closing the client, process teardown), ``timeout`` at most."""
        deadline = time.monotonic() + timeout
        while self._exiting:
            with contextlib.suppress(StarburstError):
                statuses = self._workers.exit_statuses(self._exiting)
                self._exiting = [
                    w for w, s in zip(self._exiting, statuses, strict=True) if not s or s.exiting
                ]
            if not self._exiting or time.monotonic() >= deadline:
                return
            time.sleep(EXIT_POLL_INTERVAL)

    def _start(self, future: TaskFuture, *, takeover: bool) -> None:
        """Start the one worker of ``future`` (called with ``_cv`` held)."""
        env = self._runtime.location.to_env()
        if takeover:
            env[ENV_TAKEOVER] = "1"
        try:
            worker = self._workers.start_task_worker(future.task_id, env)
        except (OSError, StarburstError) as err:
            future._fail(
                StarburstError(
                    f"cannot start a worker for task {future.task_id} of {self.session_id}: {err}"
                )
            )
            return
        self._running[future.task_id] = (future, worker)

    def _settle(self, future: TaskFuture, worker: TaskWorker, status: ExitStatus) -> None:
        """The worker has exited: its result is in S3, or the worker died first."""
        try:
            outcome = self._runtime.loop.run(self._session.read_outcome(future.task_id))
        except ObjectNotFound:
            pass
        except StarburstError as err:
            future._fail(err)
            return
        else:
            future._resolve(outcome)
            return
        retries = self._retries.get(future.task_id, 0)
        if status.spot_interruption and retries < self.settings.max_retries:
            # Preempted, not broken: run it again, taking over the dead worker's claim.
            self._retries[future.task_id] = retries + 1
            log.warning("task %s was interrupted (Spot); retrying it", future.task_id)
            with self._cv:
                self._start(future, takeover=True)
            return
        hint = status.hint or (
            "it ran out of memory: give workers more `memory`"
            if status.out_of_memory
            else "this can be caused by a segmentation fault, excessive memory use or a kill"
        )
        ended = status.reason
        if status.code is not None and status.code >= 0 and "exit code" not in ended:
            ended += f", exit code {status.code}"  # ECS reasons do not name it; local ones do
        future._fail(
            WorkerDied(
                f"task {future.task_id} of session {self.session_id}: its worker "
                f"{worker.worker_id} ended ({ended}) "
                f"without a result; {hint}. Logs: {status.logs}",
                task_id=future.task_id,
                exit_status=status.code,
                logs=status.logs,
                stop_code=status.stop_code,
                stopped_reason=status.stopped_reason,
                out_of_memory=status.out_of_memory,
            )
        )
