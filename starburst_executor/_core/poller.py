"""One background poller per executor: lists results, fetches new ones, resolves futures.

A poll round costs one LIST request per 1,000 keys of ``results/`` from the
lowest unresolved task on (``StartAfter``), plus one GET per result not seen
before, fetched concurrently. With at most ``DIRECT_MAX`` futures pending, a round
GETs their result keys directly instead (one round trip, not two); a store that
answers 403 for missing keys turns that off for good. Rounds back off from ``min_delay`` to
``max_delay`` while nothing changes, and sleep entirely while nothing is
pending; results of long tasks, which come in waves, are looked for when the next
wave is due (``Waves``). Futures are resolved on the poller's own thread, so done-callbacks may
call back into the executor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AccessDenied, CorruptObject, StarburstError
from .codec import Outcome
from .futures import TaskFuture
from .layout import task_id, task_index
from .loop import LoopThread
from .session import SessionStore

log = logging.getLogger("starburst_executor")

BATCH_TARGET = 8
TRICKLE_MAX_DELAY = 0.5  # results of a stream gather this long at most per LIST
DIRECT_MAX = 8  # at most this many pending: GET their result keys, no LIST
HOT_SECONDS = 1.0
HOT_PERIOD = 0.02
WAVE_MIN = 0.1  # tasks at least this long (and 4 round trips) end in waves worth timing


@dataclass
class Waves:
    """Long tasks end in waves (one per worker slot, every task time): when the next
    result should be readable, from the outcomes already read.

    A worker starts its next task as its last one ends, so the next result lands one
    task time after the latest finish seen, plus its write. The next round goes out
    then at the latest, not a grown backoff later; one that finds nothing looks again
    every sixteenth of a task time (at least a round's duration) for half a task time,
    then backs off as before. It only ever shortens the delay the other rules chose.
    Short tasks (under ``WAVE_MIN`` or 4 rounds) stream rather than come in waves: the
    trickle delays gather them."""

    min_delay: float
    max_delay: float
    last_finished: float | None = None  # the latest finish read (worker clock, epoch s)
    duration: float | None = None  # a task's time, smoothed

    def learn(self, outcome: Outcome) -> None:
        if outcome.kind == "cancelled" or not 0 < outcome.started <= outcome.finished:
            return
        took = outcome.finished - outcome.started
        self.duration = took if self.duration is None else 0.7 * self.duration + 0.3 * took
        self.last_finished = max(self.last_finished or 0.0, outcome.finished)

    def delay(
        self, delay: float, resolved: int, now: float, wall: float, rtt: float | None
    ) -> float:
        """``delay`` (what the trickle and backoff rules chose), shortened to meet the
        next wave; ``now`` is monotonic, ``wall`` the epoch time at the same instant."""
        if self.duration is None or self.last_finished is None:
            return delay
        rtt = rtt or 0.0
        if self.duration < max(WAVE_MIN, 4 * rtt):
            return delay
        due = now + (self.last_finished + self.duration + rtt - wall)
        if now < due:
            return min(delay, due - now)
        if now < due + self.duration / 2:
            return min(delay, max(self.duration / 16, rtt, self.min_delay))
        return delay


class ResultPoller:
    """Resolves ``TaskFuture``s of one session as their outcomes appear in S3."""

    def __init__(
        self,
        session: SessionStore,
        loop: LoopThread,
        *,
        min_delay: float = 0.005,
        max_delay: float = 1.0,
        concurrency: int = 32,
        maintain: Callable[[int], None] | None = None,
    ) -> None:
        self._session = session
        self._loop = loop
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._concurrency = concurrency
        self._maintain = maintain
        self._lock = threading.Lock()
        self._pending: dict[str, TaskFuture] = {}
        self._tracked = 0  # futures tracked so far: still moving means a stream of submits
        self._wake = threading.Event()
        self._deep_sleep = True
        self._stop = threading.Event()
        self._direct = True  # GET known result keys while few are pending
        self._rtt: float | None = None  # a poll round's duration, smoothed
        self._tracked_at = -1e9
        self._waves = Waves(min_delay, max_delay)
        self._thread = threading.Thread(
            target=self._run, name=f"starburst-poller-{session.session_id}", daemon=True
        )
        self._thread.start()

    def track(self, future: TaskFuture) -> None:
        """Start watching ``future``'s task."""
        self.track_many([future])

    def track_many(self, futures: list[TaskFuture]) -> None:
        """Start watching every future of ``futures`` (one lock and one wake-up for
        all: an attach to a large session tracks 100,000 at once)."""
        if not futures:
            return
        with self._lock:
            self._pending.update((f.task_id, f) for f in futures)
            self._tracked += len(futures)
        self._tracked_at = time.monotonic()
        # A long wait is cut short (nothing was pending, or the backoff passed the
        # trickle delay), and so is any wait for a call submitted alone (one call at a
        # time never waits out a backoff); a stream of submits is no LIST per submit.
        if self._deep_sleep or len(self._pending) <= 1:
            self._wake.set()

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def sync(self) -> None:
        """Run one poll round on the caller's thread, so what S3 holds is resolved now."""
        pending = self._snapshot()
        if pending:
            self._round(pending)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _snapshot(self) -> dict[str, TaskFuture]:
        with self._lock:
            for tid in [t for t, f in self._pending.items() if f.done()]:
                del self._pending[tid]
            return dict(self._pending)

    def _run(self) -> None:
        delay = self._min_delay
        last_maintain = 0.0
        tracked = 0
        while not self._stop.is_set():
            pending = self._snapshot()
            if not pending:
                self._deep_sleep = True
                if not self._snapshot():  # re-check: a track() may have raced the flag
                    self._wake.wait()
                self._wake.clear()
                delay = self._min_delay
                continue
            if self._maintain is not None and time.monotonic() - last_maintain > 1.0:
                last_maintain = time.monotonic()
                try:
                    self._maintain(len(pending))
                except Exception:
                    log.exception(
                        "keeping workers up for session %s failed", self._session.session_id
                    )
            try:
                resolved = self._round(pending)
            except StarburstError as err:
                log.warning(
                    "polling session %s failed, retrying: %s", self._session.session_id, err
                )
                resolved = 0
            streaming, tracked = self._tracked != tracked, self._tracked
            delay = self._next_delay(delay, resolved, len(pending) - resolved, streaming)
            delay = self._waves.delay(delay, resolved, time.monotonic(), time.time(), self._rtt)
            self._wake.clear()
            self._deep_sleep = delay > TRICKLE_MAX_DELAY
            if self._wake.wait(delay):
                # New work while backed off: look again soon, not this instant.
                self._wake.clear()
                delay = self._min_delay
                self._stop.wait(delay)

    def _next_delay(
        self, delay: float, resolved: int, still_pending: int, streaming: bool = False
    ) -> float:
        """Back off while nothing changes; while results trickle in, let a few gather per
        LIST (a round costs the same for one result as for a page of them), also while
        the client keeps submitting; with the last few futures left, look again at once.

        With few futures pending, for ``HOT_SECONDS`` after a call became durable a round
        starts every ``HOT_PERIOD`` or back to back when a round takes longer (a slow
        store): the result of a short call comes a few round trips after its submit, and
        such a round costs at most ``DIRECT_MAX`` GETs."""
        if resolved == 0:
            hot = time.monotonic() - self._tracked_at < HOT_SECONDS
            if hot and self._direct and still_pending <= DIRECT_MAX:
                return max(0.0, HOT_PERIOD - (self._rtt or 0.0))
            return min(max(delay, self._min_delay) * 2, self._max_delay)
        if still_pending <= BATCH_TARGET and not streaming:
            return self._min_delay
        if resolved < BATCH_TARGET:
            # At the rate they came, about BATCH_TARGET results by the next round.
            return min(max(delay, self._min_delay) * BATCH_TARGET / resolved, TRICKLE_MAX_DELAY)
        return max(delay / 2, self._min_delay)

    def _round(self, pending: dict[str, TaskFuture]) -> int:
        started = time.monotonic()
        try:
            if len(pending) <= DIRECT_MAX and self._direct:
                resolved = self._direct_round(pending)
                if resolved is not None:
                    return resolved
            return self._listing_round(pending)
        finally:
            took = time.monotonic() - started
            self._rtt = took if self._rtt is None else 0.8 * self._rtt + 0.2 * took

    def _direct_round(self, pending: dict[str, TaskFuture]) -> int | None:
        """GET each pending result key, concurrently: one round trip instead of a LIST
        and then a GET. None when the store answers 403 for missing keys (no ListBucket
        grant on object requests): listings serve this client from then on."""
        store = self._session.store
        layout = self._session.layout

        async def fetch() -> list[tuple[str, Outcome | StarburstError]]:
            async def one(tid: str) -> tuple[str, Outcome | StarburstError] | None:
                key = layout.key("results", tid)
                blob = await store.get_if_exists(key)
                if blob is None:
                    return None
                try:
                    outcome = Outcome.decode(blob.body, key=key)
                except StarburstError as err:
                    return tid, err
                if outcome.kind != "ok":
                    await self._session.write_marker(outcome)
                return tid, outcome

            found = await asyncio.gather(*(one(t) for t in pending))
            return [f for f in found if f is not None]

        try:
            outcomes = self._loop.run(fetch())
        except AccessDenied:
            self._direct = False
            return None
        return self._apply(pending, outcomes)

    def _listing_round(self, pending: dict[str, TaskFuture]) -> int:
        layout = self._session.layout
        lowest = min(task_index(t) for t in pending)
        start = layout.after("results", task_id(lowest - 1)) if lowest else None
        store = self._session.store
        listing = self._loop.run(store.list_objects(layout.dir("results"), start_after=start))
        ready = [t for o in listing.objects if (t := layout.tid_of(o.key)) in pending]
        if not ready:
            return 0
        return self._apply(pending, self._loop.run(self._fetch(ready)))

    def _apply(
        self,
        pending: dict[str, TaskFuture],
        outcomes: list[tuple[str, Outcome | StarburstError]],
    ) -> int:
        for tid, outcome in outcomes:
            future = pending[tid]
            try:
                if isinstance(outcome, Outcome):
                    self._waves.learn(outcome)
                    future._resolve(outcome)
                elif isinstance(outcome, CorruptObject):
                    future._fail(outcome)
                # any other store error: the result stays listed, the next round retries it
            except Exception as err:  # one future's trouble must not stop the others
                log.exception("resolving %s of session %s failed", tid, self._session.session_id)
                future._fail(err)
        return len(outcomes)

    async def _fetch(self, tids: list[str]) -> list[tuple[str, Outcome | StarburstError]]:
        gate = asyncio.Semaphore(self._concurrency)

        async def one(tid: str) -> tuple[str, Outcome | StarburstError]:
            async with gate:
                try:
                    outcome = await self._session.read_outcome(tid)
                except StarburstError as err:
                    return tid, err
                if outcome.kind != "ok":
                    # Repairs the index if the writer died between outcome and marker.
                    await self._session.write_marker(outcome)
                return tid, outcome

        return list(await asyncio.gather(*(one(t) for t in tids)))
