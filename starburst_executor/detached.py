"""``DetachedExecutor``: a persistent session whose state lives in S3.

::

    client (any interpreter)                 S3: <prefix>/sessions/<id>/           workers
    ───────────────────────                  ─────────────────────────             ───────
    submit ──PUT tasks/<t>──────────────────▶ tasks/      ◀──LIST new keys───────── poll
                                               claims/     ◀──PUT IfNoneMatch──────  claim
                                                           ◀──GET tasks/<t>───────  run
    poller ◀─LIST results/ + GET new keys──── results/    ◀──PUT IfNoneMatch──────  outcome
    status ◀─LIST tasks, claims, results, markers

The client may ``detach`` (or die) at any point after ``submit`` returned: the
task is in S3 and workers keep going. ``attach(session_id)`` in a new
interpreter lists the tasks and rebuilds one future per task, in submission
order. Differences from ``ProcessPoolExecutor``: arguments that cannot be pickled
fail at ``submit``; lambdas and closures work (cloudpickle); ``cancel()`` cancels
for every worker, and only before a worker has claimed the task.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from typing_extensions import ParamSpec, Self, Unpack

from ._base import SessionExecutor, clock_offset, utc
from ._core.futures import TaskFuture
from ._core.layout import check_session_id
from ._core.poller import ResultPoller
from ._core.session import SessionStatus, SessionStore, list_session_ids
from ._runtime import Runtime, open_store
from .config import DetachedOptions, check_options, session_settings
from .errors import (
    BrokenExecutor,
    SessionExpired,
    SessionNotFound,
    StarburstError,
    WorkersCannotStart,
)
from .launch.base import SessionWorkers

log = logging.getLogger("starburst_executor")

P = ParamSpec("P")
R = TypeVar("R")

OutcomeState = Literal["completed", "failed", "cancelled"]

PROBE_INTERVAL = 1.0  # seconds between looks at the stop marker and deadline before launching


@dataclass(frozen=True)
class TaskOutcome:
    """One entry of ``collect()``: a finished task, failures included."""

    task_id: str
    state: OutcomeState
    value: Any = None
    error: BaseException | None = None
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "completed"

    @classmethod
    def from_future(cls, future: TaskFuture) -> TaskOutcome:
        if future.cancelled():
            return cls(future.task_id, "cancelled")
        out, err = future.stdout or "", future.stderr or ""
        exc = future.exception()
        if exc is not None:
            return cls(future.task_id, "failed", error=exc, stdout=out, stderr=err)
        return cls(future.task_id, "completed", value=future.result(), stdout=out, stderr=err)


@dataclass(frozen=True)
class SessionInfo:
    """One row of ``list_sessions()``."""

    session_id: str
    mode: str
    backend: str
    created: datetime
    deadline: datetime
    last_activity: datetime | None
    status: SessionStatus

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "mode": self.mode,
            "backend": self.backend,
            "created": self.created.isoformat(),
            "deadline": self.deadline.isoformat(),
            "last_activity": self.last_activity.isoformat() if self.last_activity else None,
            **{k: v for k, v in self.status.to_json().items() if k != "session_id"},
        }


class DetachedExecutor(SessionExecutor):
    """A ``concurrent.futures.Executor`` whose session outlives the client.

    Args:
        max_workers: workers serving the session at most (default: CPU count); workers are
            launched while pending tasks outnumber running workers.
        min_workers: workers kept while the session has pending work, however little.
        cpu: vCPUs per worker (ECS); recorded for local workers.
        memory: memory per worker, e.g. ``"8GB"`` (ECS); recorded for local workers.
        session_timeout: a worker exits after this many seconds without work.
        absolute_timeout: seconds from creation to the session deadline; workers exit
            at the deadline unless ``extend()`` moved it.
        lease_seconds: a claim's lease; a task whose worker stopped renewing it is
            taken over by another worker after this long.
        max_retries: how many times a task is taken over before it fails with
            ``WorkerLost``.
        slots: tasks one worker runs at once, each in its own process (default: its
            whole ``cpu``, at least 1); a task that crashes its process fails alone.
        seed: a root seed; each task's ``random`` (and numpy) is seeded from (seed, task
            index), so the same session run twice gives the same numbers.
        backend: ``"local"`` (default: subprocess workers) or ``"ecs"``; also
            ``STARBURST_BACKEND``.
        launch_type, instance_type, use_spot, image, cluster, subnets, security_groups:
            ECS options (``"FARGATE"`` by default; ``"EC2"`` with an instance type, Spot
            with ``use_spot``); the rest defaults to what ``starburst setup`` saved.
        max_hourly_cost: ECS only: launching stops (``CostLimitExceeded``) where the
            running workers would cost more per hour than this, in USD.
        endpoint_url, bucket, prefix, region: an S3-compatible store to use instead of
            the embedded local server (or ``STARBURST_S3_ENDPOINT``/``STARBURST_BUCKET``).
        ship_code: send the user's own modules (outside site-packages: the script's
            folder, the project, editable installs) to the workers with the session
            (default on; ``STARBURST_SHIP_CODE=0`` turns it off).
        initializer, initargs: as for ``ProcessPoolExecutor``: run in the worker before
            each call of this executor; if it raises, the call fails with
            ``InitializerError`` and the executor breaks (``BrokenExecutor``).

    At interpreter exit without ``shutdown``, the executor makes every submitted call
    durable in S3 and detaches; the session keeps running (``attach`` later).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        **options: Unpack[DetachedOptions],
    ) -> None:
        check_options(type(self).__name__, options, DetachedOptions)
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        workers = max_workers if max_workers is not None else (os.cpu_count() or 1)
        self._create_session("detached", session_settings(workers, options), options)
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._start_polling()

    def _start_polling(self, launch_workers: bool = True) -> None:
        self._scale_lock = threading.Lock()
        self._probed = -PROBE_INTERVAL
        self._detached = False
        self._stopped = False
        self._cleaned = False
        self._launch_workers = launch_workers
        self._submit_wanted = 0
        self._poller = ResultPoller(self._session, self._runtime.loop, maintain=self._keep_workers)
        self._poller.track_many(list(self._futures))

    @classmethod
    def attach(
        cls,
        session_id: str,
        *,
        endpoint_url: str | None = None,
        bucket: str | None = None,
        prefix: str | None = None,
        region: str | None = None,
        backend: str | None = None,
        launch_workers: bool = True,
    ) -> Self:
        """Rebuild an executor, with one future per task, for an existing session.

        With ``launch_workers`` (the default) the executor keeps workers running while
        its futures are pending, as the creating executor did; pass False to only look.

        Raises:
            InvalidSessionId: the id does not match ``session-<16 hex digits>``.
            SessionNotFound: no such session at this endpoint, bucket and prefix.
        """
        check_session_id(session_id)
        # The backend argument says where the store is; the manifest says which
        # launcher the session's workers came from.
        runtime = open_store(
            endpoint_url=endpoint_url, bucket=bucket, prefix=prefix, region=region, backend=backend
        )
        try:
            session = SessionStore(runtime.store, runtime.location.prefix, session_id)
            manifest, _ = runtime.loop.run(session.load())
            runtime.start_launcher(manifest.launch)
            tids = runtime.loop.run(session.task_ids())
            registry = runtime.loop.run(session.workers())
            offset = clock_offset(runtime.loop.run(session.server_time()).timestamp())
        except BaseException:
            runtime.close()
            raise
        SessionWorkers(runtime.launcher, session_id).adopt(registry)
        self = cls.__new__(cls)
        futures = [TaskFuture(session_id, t) for t in tids]
        self._init_state(runtime, session, manifest, futures, clock_offset=offset)
        for future in futures:
            future._canceller = self._cancel_task
        self._start_polling(launch_workers)
        return self

    # -- Executor ------------------------------------------------------------------

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskFuture:
        """Pickle the call and queue it for S3; returns its future at once.

        Pickling errors raise here. The call is durable (attach and ``status()`` see
        it; a killed client cannot lose it) once ``flush()``, ``detach()``,
        ``shutdown()`` or the end of a ``with`` block returned; until then at most
        ``starburst_executor._core.submits.BACKLOG`` calls are in the air.
        """
        future = self._store_call(fn, args, kwargs, self._cancel_task)
        # Only while the wanted worker count grows (the first max_workers submits): on
        # ECS a live count is a ListTasks call, too dear for every submit. Replacing dead
        # workers is the poller's once-a-second job.
        outstanding = self._poller.pending_count() + self._pipeline.not_durable()
        wanted = min(self.settings.max_workers, outstanding)
        if wanted > self._submit_wanted:
            self._submit_wanted = wanted
            self._keep_workers(wanted)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; optionally cancel unclaimed tasks; wait for every result.

        After waiting, the session's workers are stopped: none outlives this call. A
        detached executor returns at once: its work goes on without it (``with`` blocks
        may detach). Calling it again does nothing more.
        """
        with self._lock:
            self._closed = True
            futures = list(self._futures)
            if self._detached or self._stopped:
                return
        self._flush_logged()
        if cancel_futures:
            for future in self._cancel_unclaimed(futures):
                future._mark_cancelled()
        if wait:
            concurrent.futures.wait(futures)
            with self._lock:
                if self._detached or self._stopped:
                    return
                self._stopped = True
            self._poller.stop()
            self._stop_workers()

    def _stop_workers(self) -> None:
        """Tell every worker to exit, then stop those of this launcher (idle by now)."""
        loop = self._runtime.loop
        loop.run(self._session.request_stop())
        # Under the scale lock: a top-up in flight ends first, and none starts after
        # (``_stopped``), so the registry read here holds every worker to stop.
        with self._scale_lock:
            registry = loop.run(self._session.workers())
            self._workers.stop(registry)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C leaves the work running: the session is the point of this executor.
            self._detach_interrupted()
            return
        self.shutdown(wait=True)

    def _detach_interrupted(self) -> None:
        sid = self.detach()
        print(
            f"starburst: interrupted; session {sid} keeps running. Attach with "
            f"DetachedExecutor.attach({sid!r}), watch it with `starburst status {sid} "
            f"--watch`, stop it with `starburst cleanup {sid}`",
            file=sys.stderr,
            flush=True,
        )

    def detach(self) -> str:
        """Make every submitted call durable, then let go of the session: workers keep
        going; ``attach`` later. Returns its id; calling it again returns the id again.

        Raises ``SubmitConflict`` (after letting go) when a call could not be stored.
        """
        with self._lock:
            already = self._detached
            self._closed = True
            self._detached = True
        try:
            if not already:
                self._pipeline.flush()
        finally:
            self._poller.stop()
            self._close_runtime()
        return self.session_id

    def _durable(self, future: TaskFuture) -> None:
        # Watched from the moment it can have a result: a poll for a task still in
        # flight to S3 could only come back empty.
        self._poller.track(future)

    def _flush_logged(self) -> None:
        """Flush; a call that could not be stored has its future failed, and is logged
        here because ``shutdown`` and ``with`` do not raise for it."""
        try:
            self._pipeline.flush()
        except StarburstError as err:
            log.error("session %s: %s", self.session_id, err)

    # -- executor-only (exit and a broken initializer) ------------------------------

    def _at_exit(self, interrupted: bool) -> None:
        # Every submitted call is made durable, then the session is left to its workers.
        with self._lock:
            finished = self._detached or self._stopped
        if not finished and interrupted:
            try:
                self._detach_interrupted()
            except StarburstError as err:
                log.error("session %s: %s", self.session_id, err)
        elif not finished:
            log.info(
                "interpreter exit: session %s keeps running; "
                "DetachedExecutor.attach(%r) collects its results",
                self.session_id,
                self.session_id,
            )
            try:
                self.detach()
            except StarburstError as err:  # its future failed too; exit goes on
                log.error("session %s: %s", self.session_id, err)

    def _fail_queued(self, message: str) -> None:
        # Unclaimed tasks are cancelled in S3 first, so no worker runs them.
        for future in self._cancel_unclaimed(self.futures):
            future._fail(BrokenExecutor(message))

    def _require_attached(self) -> None:
        if self._detached:
            raise RuntimeError(
                f"this executor detached from session {self.session_id}; "
                f"use DetachedExecutor.attach({self.session_id!r})"
            )

    # -- session -------------------------------------------------------------------

    def status(self) -> SessionStatus:
        """Counts per state, from S3 (right from any interpreter, never stale). This
        client's submitted calls are made durable first, so they are counted."""
        self._require_attached()
        self._flush_logged()
        return super().status()

    def collect(self, wait: bool = False, timeout: float | None = None) -> list[TaskOutcome]:
        """Finished tasks' outcomes, failures included, in submission order.

        With ``wait=True``, waits for every task and raises ``TimeoutError`` naming
        how many are unfinished when ``timeout`` passes first.
        """
        self._require_attached()
        futures = self.futures
        if wait:
            _, not_done = concurrent.futures.wait(futures, timeout=timeout)
            if not_done:
                raise TimeoutError(
                    f"{len(not_done)} of {len(futures)} tasks of session {self.session_id} "
                    f"were unfinished after {timeout}s; collect(wait=False) returns the "
                    "finished ones"
                )
        else:
            self._poller.sync()
        return [TaskOutcome.from_future(f) for f in futures if f.done()]

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path:
        """As ``StarburstExecutor.plot``, with every outcome finished so far in S3."""
        self._require_attached()
        self._poller.sync()
        return super().plot(path)

    def cost(self) -> dict[str, object]:
        """Rate per worker-hour, running workers, hourly estimate and cost so far.

        Local workers have no cloud cost; the figures are then zero.
        """
        self._require_attached()
        registry = self._runtime.loop.run(self._session.workers())
        return self._workers.cost(registry)

    def worker_logs(self) -> list[str]:
        """Where this session's workers' logs are: file paths (local) or
        ``"<log group>:<stream>"`` (ECS, CloudWatch), oldest first."""
        self._require_attached()
        registry = self._runtime.loop.run(self._session.workers())
        seen: dict[str, float] = {}
        for entry in registry:
            location = entry.get("logs")
            if isinstance(location, str) and location:
                stamp = entry.get("updated")
                seen.setdefault(location, float(stamp) if isinstance(stamp, (int, float)) else 0.0)
        return sorted(seen, key=lambda loc: seen[loc])

    def read_worker_log(self, location: str, position: Any = None) -> tuple[str, Any]:
        """New text of one of ``worker_logs()`` since ``position`` (None: the start);
        returns it and the position to pass next time."""
        self._require_attached()
        return self._workers.read_log(location, position)

    def cancel_pending(self) -> int:
        """Cancel, for every worker, each task no worker has claimed; returns how many."""
        self._require_attached()
        cancelled = 0
        for future in self.futures:
            if not future.done() and future.cancel():
                cancelled += 1
        return cancelled

    def extend(self, seconds: float) -> datetime:
        """Move the deadline ``seconds`` later than the current deadline; returns it."""
        self._require_attached()
        self._manifest = self._runtime.loop.run(self._session.extend(seconds))
        return self.deadline

    def scale(self, workers: int) -> int:
        """Make ``workers`` serve the session now: launch the missing ones, or ask the
        extra ones to stop (each finishes its current task first). Returns the change,
        positive when workers were launched, negative when some were stopped."""
        self._require_attached()
        if workers < 0:
            raise ValueError(f"scale() needs a worker count >= 0, got {workers}")
        busy: set[str] = set()
        if self._workers.live_count() > workers:
            # Outside the lock: the poller takes it to top up, and must not wait on this.
            # Every task before this client's first unfinished one has its outcome.
            unfinished = [f.task_id for f in self.futures if not f.done()]
            first = min(unfinished) if unfinished else None
            try:
                busy = self._runtime.loop.run(self._session.busy_workers(first))
            except StarburstError as err:  # then any may go; a busy one finishes first
                log.warning("session %s: which workers are busy: %s", self.session_id, err)
        with self._scale_lock:
            live = self._workers.live_count()
            if live > workers:
                return -self._workers.retire(live - workers, busy)
        try:
            return self._top_up(workers)
        except WorkersCannotStart as err:
            self._end_pending(err)  # as the poller's top-up would: nothing will run them
            raise

    def cleanup(self, stop_workers: bool = True, force: bool = False) -> None:
        """Stop this session's workers; with ``force=True`` also delete its objects.

        Unfinished futures of this executor are cancelled locally. Calling it again
        does nothing more.
        """
        with self._lock:
            if self._cleaned:
                return
        self._require_attached()
        loop = self._runtime.loop
        with self._lock:
            self._closed = True
            self._detached = True
            self._cleaned = True
        self._flush_logged()  # no write may land after the session's objects are deleted
        if stop_workers or force:
            loop.run(self._session.request_stop())
            registry = loop.run(self._session.workers())
            self._workers.stop(registry)
        if force:
            loop.run(self._session.delete())
            self._delete_local_logs()
        self._poller.stop()
        for future in self.futures:
            if not future.done():
                future._mark_cancelled()
        self._close_runtime()

    def _delete_local_logs(self) -> None:
        """Local workers' logs go with their session (CloudWatch keeps ECS logs for the
        log group's retention)."""
        import shutil

        from .launch.local import LocalLauncher

        launcher = self._runtime.launcher
        if isinstance(launcher, LocalLauncher):
            shutil.rmtree(launcher.logs_root / self.session_id, ignore_errors=True)

    # -- executor-only -------------------------------------------------------------

    def _cancel_unclaimed(self, futures: list[TaskFuture]) -> list[TaskFuture]:
        """Cancel in S3 every task of ``futures`` no worker has claimed, their requests
        together; returns their futures (still to be resolved by the caller)."""
        if self._detached:
            return []  # the session is no longer this client's to change
        # Newest first: workers claim from the oldest, so the two rarely race for a key.
        wanted = {f.task_id: f for f in reversed(futures) if not f.done() and not f.running()}
        try:
            cancelled = self._runtime.loop.run(self._session.cancel_many(list(wanted)))
        except StarburstError as err:
            log.error("session %s: cancelling its queued tasks failed: %s", self.session_id, err)
            return []
        return [wanted[tid] for tid in cancelled]

    def _cancel_task(self, tid: str) -> bool:
        if self._detached:
            return False
        try:
            return self._runtime.loop.run(self._session.cancel(tid))
        except StarburstError:
            return False

    def _keep_workers(self, outstanding: int) -> None:
        """The autoscaling policy: while work is pending, keep
        max(min_workers, min(max_workers, outstanding)) workers alive."""
        if self._launch_workers and not self._detached and outstanding > 0:
            wanted = min(self.settings.max_workers, outstanding)
            try:
                self._top_up(max(self.settings.min_workers, wanted))
            except WorkersCannotStart as err:
                # Relaunching would fail the same way forever: the waiting futures get
                # the reason and the fix instead of hanging.
                log.error("%s", err)
                self._end_pending(err)

    def _top_up(self, workers: int) -> int:
        with self._scale_lock:
            if self._stopped:  # shutdown stopped the workers: none may start after
                return 0
            live = self._workers.live_count()
            missing = max(0, workers - live)
            if missing and not self._may_launch():
                return 0
            if missing:
                env = self._runtime.location.to_env()
                entries = self._workers.launch(missing, env)
                self._runtime.loop.run(self._session.register_workers(entries))
            return missing

    def _may_launch(self) -> bool:
        """Before launching: is the session still open? A stopped, expired or deleted
        session gets no worker (they would exit at once, and be relaunched every
        second); its pending futures end with the reason instead."""
        now = time.monotonic()
        if now - self._probed < PROBE_INTERVAL:
            return True
        try:
            openness = self._runtime.loop.run(self._session.openness())
        except SessionNotFound as err:
            self._end_pending(err)
            return False
        self._probed = now
        self._manifest = openness.manifest  # an extend() elsewhere moves our deadline too
        self._clock_offset = clock_offset(openness.server_time.timestamp())
        if openness.stopped:
            self._end_pending(None)
            return False
        if openness.expired:
            # Tasks still running under a live lease finish and report as usual; the
            # rest will never be claimed now. Looked at again each round until none run.
            running = self._runtime.loop.run(self._session.leased(self.settings.lease_seconds))
            self._end_pending(
                SessionExpired(
                    f"session {self.session_id} passed its deadline "
                    f"{self.deadline.isoformat()} with this task unfinished; "
                    f"`starburst extend {self.session_id} SECONDS` (or extend()) and attach "
                    "again to run it"
                ),
                spare=running,
            )
            self._probed = -PROBE_INTERVAL
            return False
        return True

    def _end_pending(self, error: BaseException | None, spare: Collection[str] = ()) -> None:
        """Fail every unfinished future but ``spare``'s with ``error``, or cancel it
        when None."""
        for future in self.futures:
            if future.done() or future.task_id in spare:
                continue
            if error is None:
                future._mark_cancelled()
            else:
                future._fail(error)


def list_sessions(
    *,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
) -> list[SessionInfo]:
    """Every session under the prefix: id, created, last activity and counts per state."""
    runtime = open_store(endpoint_url=endpoint_url, bucket=bucket, prefix=prefix, region=region)
    try:
        return runtime.loop.run(_list_sessions(runtime))
    finally:
        runtime.close()


def session_finished_at(info: SessionInfo) -> float | None:
    """When the session finished (its last write), or None while it has work left.

    A session is finished when every task has an outcome, or when its deadline passed.
    """
    import time

    last = (info.last_activity or info.created).timestamp()
    if info.status.pending == 0 and info.status.running == 0:
        return last
    if info.deadline.timestamp() < time.time():
        return info.deadline.timestamp()
    return None


def cleanup_sessions(
    *,
    older_than: float | None = None,
    everything: bool = False,
    dry_run: bool = False,
    endpoint_url: str | None = None,
    bucket: str | None = None,
    prefix: str | None = None,
    region: str | None = None,
) -> list[SessionInfo]:
    """Delete finished sessions older than the retention: their workers are stopped, their
    objects and local logs deleted. Returns the sessions deleted (or, with ``dry_run``,
    those that would be).

    Args:
        older_than: seconds since a session finished (default: ``STARBURST_RETENTION``,
            7 days).
        everything: every session, finished or not, whatever its age.
    """
    import time

    from .config import retention_seconds

    age = retention_seconds() if older_than is None else older_than
    if age < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {age}")
    where = {"endpoint_url": endpoint_url, "bucket": bucket, "prefix": prefix, "region": region}
    now = time.time()
    chosen = []
    for info in list_sessions(**where):
        finished = session_finished_at(info)
        if everything or (finished is not None and now - finished >= age):
            chosen.append(info)
    if dry_run:
        return chosen
    for info in chosen:
        try:
            ex = DetachedExecutor.attach(info.session_id, launch_workers=False, **where)
        except SessionNotFound:
            continue  # deleted meanwhile by someone else; any other error is the caller's
        ex.cleanup(stop_workers=True, force=True)
    return chosen


async def _list_sessions(runtime: Runtime) -> list[SessionInfo]:
    import asyncio

    ids = await list_session_ids(runtime.store, runtime.location.prefix)
    gate = asyncio.Semaphore(8)

    async def one(sid: str) -> SessionInfo | None:
        async with gate:
            session = SessionStore(runtime.store, runtime.location.prefix, sid)
            try:
                manifest, _ = await session.load()
                status = await session.status()
            except SessionNotFound:  # deleted since the listing
                return None
            except StarburstError as err:
                # Not fatal to the listing, and never silent: the user may own it.
                log.warning(
                    "session %s is not listed: %s (try `starburst status %s`)", sid, err, sid
                )
                return None
            return SessionInfo(
                session_id=sid,
                mode=manifest.mode,
                backend=manifest.backend,
                created=utc(manifest.created),
                deadline=utc(manifest.deadline),
                last_activity=status.last_activity,
                status=status,
            )

    rows = await asyncio.gather(*(one(s) for s in ids))
    return sorted((r for r in rows if r is not None), key=lambda r: r.created)
