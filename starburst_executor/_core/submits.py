"""The write pipeline: ``submit`` queues a call, a few task objects fly at once.

::

    submit (any thread)              event loop (LoopThread)                 S3
    ───────────────────              ───────────────────────                 ──
    pickle, draw task id ──enqueue──▶ queue ──start while under the limits──▶ PUT tasks/<t>
      returns the future              │ the calls that queued meanwhile go     or tasks/<t>.<n>
      (blocks only while              │   out as one batch object              IfNoneMatch=*
       BACKLOG calls wait)            │ done: durable (count up, wake flush, on_durable)
                                      │ 412 from another client: SubmitConflict on the
                                      │   futures, and raised by the next flush()
                                      ▼ an outage: retried with backoff, in place

**Batches.** A call that finds nothing in flight is written at once, alone (a single
call waits one round trip). Up to ``OBJECTS_IN_FLIGHT`` writes overlap; calls that queue
while they are all busy go out together as one batch object when one ends, so a fast
loop of submits costs one PUT per batch, not per call (the server's and the client's CPU
per request are what limit a loop of submits; measured in bench/RESULTS.md). A batch
holds consecutive task ids, at most ``max_batch`` calls and ``BATCH_BYTES`` of payloads
(a call over that goes alone).

**Durability point.** A call is durable once its task object is in S3. ``flush()``
returns when every call queued before it is durable (or failed), and so do
``detach()``, ``shutdown()``, leaving a ``with`` block and interpreter exit, which
flush. Until then a client killed with SIGKILL loses the calls that were not yet
durable: at most ``BACKLOG`` calls (``submit`` waits while that many are queued or in
flight), in practice the calls of the last round trip or so. A PUT is atomic, so
nothing is ever half-written: a batch is there whole or not at all.

**Order.** Writes overlap, so tasks appear out of order, but never by more than
``WINDOW``: a task object whose last id is ``i + WINDOW`` starts only after every
object holding ids up to ``i`` ended. A worker that has seen task ``m`` therefore lists
from ``m - WINDOW`` and sees every task object that can still appear
(``SUBMIT_WINDOW`` is part of the protocol). A batch never holds more than ``WINDOW``
calls.
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

SUBMIT_WINDOW = 64  # task ids in flight at most; tasks appear at most this far out of order
OBJECTS_IN_FLIGHT = 4  # task objects written at once; calls queued meanwhile are batched
BATCH_BYTES = 1 << 20  # payload bytes in one batch object, at most
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
    """Writes one session's task objects, a few at once, in task order within a window.

    ``write_tasks(first_tid, payloads)`` stores the calls from ``first_tid`` on as one
    task object (create-only); ``write_blob(digest, data)`` stores a content-addressed
    piece once. Both run on ``loop``. ``max_batch=1`` writes every call alone.
    """

    def __init__(
        self,
        loop: LoopThread,
        write_tasks: Callable[[str, list[bytes]], Awaitable[None]],
        *,
        write_blob: Callable[[str, bytes], Awaitable[None]] | None = None,
        on_durable: Callable[[TaskFuture], None] | None = None,
        window: int = SUBMIT_WINDOW,
        backlog: int = BACKLOG,
        max_batch: int = SUBMIT_WINDOW,
        objects_in_flight: int = OBJECTS_IN_FLIGHT,
    ) -> None:
        self._loop = loop
        self._write_tasks = write_tasks
        self._write_blob = write_blob
        self._on_durable = on_durable
        self._window = window
        self._max_batch = max(1, min(max_batch, window))
        # Unbatched calls each get a write of their own, up to the window.
        self._objects = objects_in_flight if self._max_batch > 1 else window
        self._backlog = max(backlog, window)
        self._cond = threading.Condition()
        self._queued = 0  # calls enqueued, ever
        self._ended = 0  # calls durable or failed for good
        self._errors: list[StarburstError] = []
        # Loop-thread state below.
        self._waiting: deque[_Call] = deque()
        self._in_flight: set[int] = set()  # the first index of each object being written
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
        while self._waiting and len(self._in_flight) < self._objects:
            calls = self._next_batch()
            if not calls:
                return
            first = task_index(calls[0].tid)
            self._in_flight.add(first)
            self._loop.loop.create_task(self._store(calls, first))

    def _next_batch(self) -> list[_Call]:
        """The waiting calls the next object holds: consecutive ids, within the window
        (its last id below the lowest first id in flight plus ``WINDOW``) and the caps."""
        calls: list[_Call] = []
        size = 0
        limit: int | None = min(self._in_flight) + self._window if self._in_flight else None
        while self._waiting and len(calls) < self._max_batch:
            call = self._waiting[0]
            index = task_index(call.tid)
            if limit is None:
                limit = index + self._window
            if index >= limit:
                break
            if calls and (
                index != task_index(calls[-1].tid) + 1 or size + len(call.payload) > BATCH_BYTES
            ):
                break
            calls.append(self._waiting.popleft())
            size += len(call.payload)
        return calls

    async def _store(self, calls: list[_Call], first: int) -> None:
        error: StarburstError | None = None
        what = calls[0].tid if len(calls) == 1 else f"{calls[0].tid} to {calls[-1].tid}"
        try:
            for call in calls:
                for digest, data in call.blobs.items():
                    await self._blob(digest, data)
            payloads = [call.payload for call in calls]
            await self._retrying(lambda: self._write_tasks(calls[0].tid, payloads))
        except StarburstError as err:
            error = err
        except Exception as err:  # a bug must not leave flush() waiting forever
            log.exception("storing tasks %s failed", what)
            error = StarburstError(f"storing tasks {what} failed: {err}")
        finally:
            self._in_flight.discard(first)
        for call in calls:
            if error is not None:
                call.future._fail(error)
            elif self._on_durable is not None:
                try:
                    self._on_durable(call.future)
                except Exception:
                    log.exception("after storing task %s", call.tid)
        with self._cond:
            self._ended += len(calls)
            if error is not None:
                self._errors.extend([error] * len(calls))
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
