"""What both executors share: a session in S3, durable submits, ``map``, ``status``.

``StarburstExecutor`` (one worker per task) and ``DetachedExecutor`` (polling
workers) differ only in how workers are started and how futures learn their
outcome; the session, its manifest and its task keys are the same, so
``DetachedExecutor.attach`` finds the work of either.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ._core.calls import chain_results, get_chunks, initialized_call, process_chunk
from ._core.codec import (
    PieceCache,
    encode_call,
    encode_call_pieces,
    fingerprint,
    payload_nonce,
)
from ._core.futures import TaskFuture
from ._core.layout import new_session_id, task_id, task_index
from ._core.manifest import Manifest
from ._core.session import SessionStatus, SessionStore
from ._core.submits import SUBMIT_WINDOW, SubmitPipeline
from ._core.usercode import CodeBundle, CodeShipper
from ._runtime import Runtime, open_runtime
from .config import SessionSettings, ship_code_enabled
from .errors import BrokenExecutor, InitializerError, PicklingError, SessionExpired
from .launch.base import SessionWorkers

R = TypeVar("R")

# Set when the interpreter starts to exit; from then on ``submit`` refuses work, as the
# standard library's executors do.
_global_shutdown = False
_live_executors: weakref.WeakSet[SessionExecutor] = weakref.WeakSet()
_live_lock = threading.Lock()


def _python_exit() -> None:
    """At interpreter exit, before ``atexit`` callbacks (so before the SDK clients close):
    each live executor finishes what its mode promises (``_at_exit``)."""
    global _global_shutdown
    with _live_lock:
        _global_shutdown = True
        executors = list(_live_executors)
    # The interpreter sets ``sys.last_value`` when an uncaught exception ends the
    # script: a Ctrl-C outside any ``with`` block stops the work as it does inside one.
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for executor in executors:
        executor._at_exit(interrupted)


def _forget_in_child() -> None:
    """A forked child (``multiprocessing``'s default on Linux) inherits the parent's
    executors but none of their threads: finishing them at the child's exit would wait
    forever on a loop that is not there. They stay the parent's to finish."""
    global _live_executors, _live_lock
    _live_executors = weakref.WeakSet()
    _live_lock = threading.Lock()


# The hook concurrent.futures uses: it runs when the main thread ends, before
# non-daemon threads are joined and before atexit callbacks.
threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_forget_in_child)


AUTO_CHUNKS_PER_WORKER = 4
MIN_AUTO_CHUNK = 16
FLUSH_AT_EXIT_SECONDS = 300.0

log = logging.getLogger("starburst_executor")


def auto_chunksize(items: int, workers: int) -> int:
    """Items per remote task for ``map``: about ``AUTO_CHUNKS_PER_WORKER`` chunks per
    worker, and at least ``MIN_AUTO_CHUNK`` items per chunk while every worker still gets
    one (a remote task costs about 7 S3 requests, so a large fleet's chunks stay below one
    request per item)."""
    workers = max(1, workers)
    balanced = math.ceil(items / (AUTO_CHUNKS_PER_WORKER * workers))
    return max(1, balanced, min(MIN_AUTO_CHUNK, items // workers))


def clock_offset(server_now: float) -> float:
    """The store's clock minus ours, from a ``Date`` header just received. ``Date`` has
    one-second resolution (truncated), so the true time is on average half a second on."""
    return server_now + 0.5 - time.time()


def _flush_and_close(pipeline: SubmitPipeline, runtime: Runtime, owner_pid: int) -> None:
    """Make the submitted calls durable (bounded wait), then close the store's client.
    Not in a forked child: the loop thread that would do both is the parent's alone."""
    if os.getpid() != owner_pid:
        return
    try:
        pipeline.flush(timeout=FLUSH_AT_EXIT_SECONDS)
    except Exception as err:
        log.error("starburst: storing submitted calls failed at close: %s", err)
    runtime.close()


def _weakly(method: Callable[[TaskFuture], None]) -> Callable[[TaskFuture], None]:
    ref = weakref.WeakMethod(method)

    def call(future: TaskFuture) -> None:
        bound = ref()
        if bound is not None:
            bound(future)

    return call


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


class SessionExecutor(concurrent.futures.Executor):
    """Base of the executors: one session, one future per task in submission order."""

    _runtime: Runtime
    _session: SessionStore
    _manifest: Manifest
    _futures: list[TaskFuture]
    # Calls one task object may hold. A polling worker reads a batch once for all its
    # tasks; a worker started for one call (StarburstExecutor) reads its call alone.
    _max_batch: ClassVar[int] = SUBMIT_WINDOW

    def _create_session(
        self, mode: str, settings: SessionSettings, options: Mapping[str, Any]
    ) -> None:
        runtime = open_runtime(options)
        session = SessionStore(runtime.store, runtime.location.prefix, new_session_id())
        try:
            runtime.probe()
            # The deadline is on the store's clock, as workers judge it: a client clock
            # that is hours off moves neither the deadline nor any lease.
            now = runtime.loop.run(session.server_time()).timestamp()
            offset = clock_offset(now)  # at once: the create below may take a while
            manifest = Manifest(
                session_id=session.session_id,
                mode=mode,
                created=now,
                deadline=now + settings.absolute_timeout,
                settings=settings,
                fingerprint=fingerprint(),
                launch=runtime.spec,
            )
            runtime.loop.run(session.create(manifest))
        except BaseException:
            runtime.close()
            raise
        self._init_state(
            runtime, session, manifest, [], clock_offset=offset, ship_code=options.get("ship_code")
        )

    @property
    def _workers(self) -> SessionWorkers:
        """This session's workers, through the runtime's launcher as it is now."""
        return SessionWorkers(self._runtime.launcher, self.session_id)

    def _init_state(
        self,
        runtime: Runtime,
        session: SessionStore,
        manifest: Manifest,
        futures: list[TaskFuture],
        *,
        clock_offset: float,
        ship_code: bool | None = None,
    ) -> None:
        self._runtime = runtime
        self._clock_offset = clock_offset  # the store's clock minus ours
        self._piece_cache = PieceCache()
        self._code = (
            CodeShipper(runtime.store, runtime.location.prefix)
            if ship_code_enabled(ship_code)
            else None
        )
        self._session = session
        self._manifest = manifest
        self._futures = futures
        self._next_index = task_index(futures[-1].task_id) + 1 if futures else 0
        self._lock = threading.Lock()
        self._closed = False
        self._broken: str | None = None
        self._initializer: Callable[..., object] | None = None
        self._initargs: tuple[Any, ...] = ()
        self._pipeline = SubmitPipeline(
            runtime.loop,
            session.put_tasks,
            max_batch=self._max_batch,
            write_blob=session.put_blob,
            # Weakly: the finalizer below holds the pipeline, which must not keep the
            # executor alive.
            on_durable=_weakly(self._durable),
        )
        # Makes every submitted call durable, then closes the SDK client: on
        # detach/cleanup, on garbage collection, or at interpreter exit.
        self._close_runtime = weakref.finalize(
            self, _flush_and_close, self._pipeline, runtime, os.getpid()
        )
        with _live_lock:
            _live_executors.add(self)

    # -- identity ------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def futures(self) -> list[TaskFuture]:
        """One future per task, in submission order."""
        with self._lock:
            return list(self._futures)

    @property
    def deadline(self) -> datetime:
        return utc(self._manifest.deadline)

    @property
    def settings(self) -> SessionSettings:
        return self._manifest.settings

    @property
    def shipped_code(self) -> CodeBundle | None:
        """The user's own modules this session ships to its workers (None: none or off)."""
        return self._code.current() if self._code else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.session_id} ({len(self._futures)} tasks)>"

    # -- shared executor behaviour --------------------------------------------------

    def _store_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        canceller: Callable[[str], bool],
    ) -> TaskFuture:
        """Pickle the call (pickling errors raise here) and queue it for the write
        pipeline; the future is returned before the call is durable (see ``flush``).

        With an initializer, the stored call runs it first (``initialized_call``); an
        argument that cannot be pickled is still named as the caller passed it.
        """
        self._check_open()
        code = self._code.digests(self._runtime.loop.run) if self._code else ()
        if self._initializer is None:
            payload, blobs = encode_call_pieces(
                fn, args, kwargs, code=code, cache=self._piece_cache
            )
        else:
            try:
                payload, blobs = encode_call_pieces(
                    initialized_call,
                    (self._initializer, self._initargs, fn, args, kwargs),
                    {},
                    code=code,
                    # The caller's own objects, not the tuple wrapping them (new each call).
                    parts=[self._initializer, *self._initargs, fn, *args, *kwargs.values()],
                    hint=fn,
                    cache=self._piece_cache,
                )
            except PicklingError:
                encode_call(fn, args, kwargs)  # raises naming the culprit, if it is there
                encode_call(self._initializer, self._initargs, {})  # or in the initializer
                raise
        with self._lock:
            self._check_open()
            if self._server_now() > self._manifest.deadline:
                raise SessionExpired(
                    f"session {self.session_id} passed its deadline "
                    f"{self.deadline.isoformat()}; call extend(seconds) first"
                )
            tid = task_id(self._next_index)
            future = TaskFuture(self.session_id, tid, canceller=canceller)
            future._call = payload_nonce(payload)
            # Under the lock: task ids reach the pipeline in increasing order.
            self._pipeline.enqueue(tid, payload, future, blobs)
            self._next_index += 1
            self._futures.append(future)
        future.add_done_callback(self._watch_initializer)
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Return once every call submitted so far is durable in S3.

        ``submit`` returns as soon as its call is queued; ``detach()``, ``shutdown()``,
        leaving a ``with`` block and interpreter exit flush too. Raises the first
        ``SubmitConflict`` (another client drew the same task id; that call's future
        fails with it too) or store error met since the last flush.
        """
        self._pipeline.flush(timeout)

    def _durable(self, future: TaskFuture) -> None:
        """Called on the event loop once a submitted call is stored (executor only)."""

    def _server_now(self) -> float:
        """Our estimate of the store's clock (measured at create or attach)."""
        return time.time() + self._clock_offset

    def _check_open(self) -> None:
        """Raise as the standard library's executors do when no work is accepted."""
        if self._broken is not None:
            raise BrokenExecutor(self._broken)
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._closed:
            raise RuntimeError(
                f"cannot schedule new futures after shutdown or detach (session {self.session_id})"
            )

    # -- executor-only -------------------------------------------------------------

    def _at_exit(self, interrupted: bool) -> None:
        """Called once at interpreter exit while the executor is still referenced;
        ``interrupted`` when a Ctrl-C (``KeyboardInterrupt``) ended the script."""
        raise NotImplementedError

    def _watch_initializer(self, future: concurrent.futures.Future[Any]) -> None:
        """A done-callback: an initializer that failed breaks the executor, as in the
        standard library: queued calls fail and later submits raise ``BrokenExecutor``."""
        if future.cancelled() or not isinstance(future.exception(), InitializerError):
            return
        with self._lock:
            if self._broken is not None:
                return
            self._broken = (
                f"the initializer of session {self.session_id} failed in a worker "
                f"(task {getattr(future, 'task_id', '?')}: {future.exception()}); this "
                "executor takes no more work: fix the initializer and start a new one"
            )
        self._fail_queued(self._broken)

    def _fail_queued(self, message: str) -> None:
        """Fail every call no worker has started yet with ``BrokenExecutor(message)``."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[R]:
        """As ``ProcessPoolExecutor.map``: results in order; one chunk is one task.

        ``chunksize=None`` (the default; the standard library's is 1) chooses one
        (``auto_chunksize``): about ``AUTO_CHUNKS_PER_WORKER`` chunks per worker and at
        least 16 items per chunk while every worker still gets one, so a long map costs a
        fraction of a request per item while every worker stays busy. With ``progress=True`` a bar
        counts the results as they are consumed (tqdm when installed).
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        lists = [list(it) for it in iterables]  # the standard library consumes them eagerly too
        total = min(map(len, lists), default=0)
        if chunksize is None:
            chunksize = auto_chunksize(total, self.settings.max_workers)
        iterables = tuple(lists)
        results = chain_results(
            super().map(
                partial(process_chunk, fn),
                get_chunks(*iterables, chunksize=chunksize),
                timeout=timeout,
            )
        )
        if progress:
            from ._progress import progress_iter

            return progress_iter(results, total, desc=self.session_id)
        return results

    def status(self) -> SessionStatus:
        """Counts per state, from S3 (right from any interpreter, never stale)."""
        return self._runtime.loop.run(self._session.status())

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Draw the finished tasks as a timeline (one row per worker, throughput below)
        to ``path`` (default ``<session id>.png``); returns the path. Needs the ``plot``
        extra (matplotlib)."""
        from .plot import render, timeline

        target = Path(path) if path is not None else Path(f"{self.session_id}.png")
        bars = timeline(self.futures, origin=self._manifest.created)
        return render(bars, target, self.session_id)
