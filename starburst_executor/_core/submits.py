"""The write pipeline: ``submit`` queues a call, many task PUTs fly at once.

::

    submit (any thread)              event loop (LoopThread)                 S3
    ───────────────────              ───────────────────────                 ──
    pickle, draw task id ──enqueue──▶ queue ──start while in window──▶ PUT tasks/<t> IfNoneMatch=*
      returns the future              │ done: durable (count up, wake flush, on_durable)
      (blocks only while              │ 412 from another client: SubmitConflict on the
       BACKLOG calls wait)            │   future, and raised by the next flush()
                                      ▼ an outage: retried with backoff, in place

**Durability point.** A call is durable once its task object is in S3. ``flush()``
returns when every call queued before it is durable (or failed), and so do
``detach()``, ``shutdown()``, leaving a ``with`` block and interpreter exit, which
flush. Until then a client killed with SIGKILL loses the calls that were not yet
durable: at most ``BACKLOG`` calls (``submit`` waits while that many are queued or in
flight), in practice the calls of the last round trip or so. A PUT is atomic, so
nothing is ever half-written.

**Order.** Writes overlap, so tasks appear out of order, but never by more than
``WINDOW``: the write of task ``i + WINDOW`` starts only after the write of task ``i``
ended. A worker that has seen task ``m`` therefore lists from ``m - WINDOW`` and sees
every task that can still appear (``SUBMIT_WINDOW`` is part of the protocol).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..errors import (
    AccessDenied,
    BucketNotFound,
    CorruptObject,
    CredentialsMissing,
    StarburstError,
    SubmitConflict,
)
from .futures import TaskFuture
from .layout import task_index
from .loop import LoopThread

log = logging.getLogger("starburst_executor")

SUBMIT_WINDOW = 64  # writes in flight at most; tasks appear at most this far out of order
BACKLOG = 512  # submit waits while this many calls are not yet durable
RETRY_SECONDS = 120.0  # an outage is ridden through this long before the call fails
FINAL_ERRORS = (SubmitConflict, CorruptObject, AccessDenied, BucketNotFound, CredentialsMissing)


@dataclass
class _Call:
    tid: str
    payload: bytes
    future: TaskFuture
    blobs: dict[str, bytes] = field(default_factory=dict)


class SubmitPipeline:
    """Writes one session's task objects, many at once, in task order within a window.

    ``write_task(tid, payload)`` stores one task (create-only); ``write_blob(digest,
    data)`` stores a content-addressed piece once. Both run on ``loop``.
    """

    def __init__(
        self,
        loop: LoopThread,
        write_task: Callable[[str, bytes], Awaitable[None]],
        *,
        write_blob: Callable[[str, bytes], Awaitable[None]] | None = None,
        on_durable: Callable[[TaskFuture], None] | None = None,
        window: int = SUBMIT_WINDOW,
        backlog: int = BACKLOG,
    ) -> None:
        self._loop = loop
        self._write_task = write_task
        self._write_blob = write_blob
        self._on_durable = on_durable
        self._window = window
        self._backlog = max(backlog, window)
        self._cond = threading.Condition()
        self._queued = 0  # calls enqueued, ever
        self._ended = 0  # calls durable or failed for good
        self._errors: list[StarburstError] = []
        # Loop-thread state below.
        self._waiting: deque[_Call] = deque()
        self._in_flight: set[int] = set()
        self._blobs: dict[str, asyncio.Future[None]] = {}

    # -- any thread ------------------------------------------------------------------

    def enqueue(
        self, tid: str, payload: bytes, future: TaskFuture, blobs: dict[str, bytes] | None = None
    ) -> None:
        """Queue one call (task ids must come in increasing order); waits while the
        backlog is full."""
        with self._cond:
            while self._queued - self._ended >= self._backlog:
                self._cond.wait()
            self._queued += 1
        call = _Call(tid, payload, future, blobs or {})
        self._loop.loop.call_soon_threadsafe(self._add, call)

    def not_durable(self) -> int:
        """Calls queued or in flight."""
        with self._cond:
            return self._queued - self._ended

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every call queued so far is durable or failed; raise the first
        ``SubmitConflict`` (or store error) met since the last flush."""
        with self._cond:
            target = self._queued
            if not self._cond.wait_for(lambda: self._ended >= target, timeout):
                raise TimeoutError(
                    f"{target - self._ended} submitted calls were still not durable after "
                    f"{timeout}s; the store may be unreachable"
                )
            errors, self._errors = self._errors, []
        if errors:
            first = errors[0]
            if len(errors) > 1:
                raise type(first)(f"{first} (and {len(errors) - 1} more calls failed to store)")
            raise first

    # -- loop thread -----------------------------------------------------------------

    def _add(self, call: _Call) -> None:
        self._waiting.append(call)
        self._pump()

    def _pump(self) -> None:
        while self._waiting:
            index = task_index(self._waiting[0].tid)
            if self._in_flight and index >= min(self._in_flight) + self._window:
                return
            call = self._waiting.popleft()
            self._in_flight.add(index)
            self._loop.loop.create_task(self._store(call, index))

    async def _store(self, call: _Call, index: int) -> None:
        error: StarburstError | None = None
        try:
            for digest, data in call.blobs.items():
                await self._blob(digest, data)
            await self._retrying(lambda: self._write_task(call.tid, call.payload))
        except StarburstError as err:
            error = err
        except Exception as err:  # a bug must not leave flush() waiting forever
            log.exception("storing task %s failed", call.tid)
            error = StarburstError(f"storing task {call.tid} failed: {err}")
        finally:
            self._in_flight.discard(index)
        if error is not None:
            call.future._fail(error)
        elif self._on_durable is not None:
            try:
                self._on_durable(call.future)
            except Exception:
                log.exception("after storing task %s", call.tid)
        with self._cond:
            self._ended += 1
            if error is not None:
                self._errors.append(error)
            self._cond.notify_all()
        self._pump()

    async def _blob(self, digest: str, data: bytes) -> None:
        """Store a content-addressed piece once per pipeline; concurrent tasks that need
        it wait for the one upload."""
        pending = self._blobs.get(digest)
        if pending is None:
            pending = self._loop.loop.create_future()
            self._blobs[digest] = pending
            write = self._write_blob
            assert write is not None
            try:
                await self._retrying(lambda: write(digest, data))
            except BaseException as err:
                del self._blobs[digest]  # the next task that needs it tries again
                pending.set_exception(err)
                pending.exception()  # retrieved: waiters re-raise it themselves
                raise
            pending.set_result(None)
            return
        await asyncio.shield(pending)

    async def _retrying(self, make: Callable[[], Awaitable[None]]) -> None:
        """The SDK already retried; an outage longer than that is ridden through here
        (a retried create-only write that met its own first attempt counts as ours)."""
        delay, waited = 0.25, 0.0
        while True:
            try:
                await make()
                return
            except FINAL_ERRORS:
                raise  # waiting would not change these answers
            except StarburstError as err:
                if waited >= RETRY_SECONDS:
                    raise
                log.warning("storing a submitted call failed (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                waited += delay
                delay = min(delay * 2, 8.0)
