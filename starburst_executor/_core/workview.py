"""A polling worker's view of its session, and its choice of work from that view.

The worker (``worker/runner.py``) makes the requests; this module decides from what
they showed, with the clock passed in, so the choice can be tested without a store.

The session's task ids are dealt into ``width`` shards (``max_workers``) by index
modulo ``width``. A worker owns one shard (at start, its rank among the workers the
client registered, so a fleet launched together starts on distinct shards) and
claims its tasks directly, with no claims listing. Its claims say they are an owner's:
an own task lost to another owner's claim (the loser reads it) means another worker owns
the same shard, and the loser moves on to the next shard, so owners settle on distinct
shards; a task stolen from a worker that ran late does not move it. A worker whose
shard is empty steals another shard's task once it has waited longer than its owner
would take (its owner is busy, or there is none): a claims LIST first, backing off
while such checks find nothing to take. Polls are timed by the arrival rate every
worker sees in the same listings: in a stream (``RATE_MIN_POLLS`` polls showed new
tasks), a worker sleeps until its shard's next task is due, so the fleet polls about
once per task, whatever its size; after a burst or two it backs off as an idle worker
does, so the next burst is not left waiting for a "due" time its thin evidence set.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from ..store.base import Listing
from .layout import SessionLayout, task_id, task_index
from .submits import SUBMIT_WINDOW

IDLE_MIN_DELAY = 0.01
IDLE_MAX_DELAY = 30.0
FOREIGN_AFTER = 0.05  # another shard's task is stolen once it has waited at least this
STEAL_AFTER_MAX = 3.0  # ... and at most this (its owner is busy, or there is none)
# Shards past FLEET_UNIT stretch STEAL_AFTER_MAX, STEAL_CHECK_MAX and DUE_MAX in proportion.
STEAL_CHECK_MAX = 8.0  # fruitless steal checks (a claims LIST each) back off to this
RATE_WINDOW = 5.0  # the arrival rate is counted over this many seconds
RATE_MIN_POLLS = 3  # ... from at least this many polls that showed new tasks
BATCH_WAIT = 0.25  # in fast streams a task may wait this long for its owner's next poll
DUE_MAX = 3.0  # a worker sleeps at most this long for its shard's next expected task
# Shards past this many stretch STEAL_CHECK_MAX and DUE_MAX in proportion, so the fleet's
# rate of steal checks and of capped polls stays that of this many workers.
FLEET_UNIT = 16
DROP_BY_SEARCH = 64  # up to this many claimed tasks are dropped from the view one by one


@dataclass
class WorkView:
    """What this worker last saw of the session, refreshed by listings."""

    # Task ids not known to be claimed, in order: every task below the first (or up to
    # ``top``) had a claim, or was not written yet, when this worker last looked.
    tasks: list[str] = field(default_factory=list)
    top: int = -1  # the highest task index seen
    seen: set[str] = field(default_factory=set)  # ids listed above top - SUBMIT_WINDOW
    # pending since (monotonic), in the order the tasks were first seen
    first_seen: dict[str, float] = field(default_factory=dict)
    # (previous poll, new tasks this poll showed): what arrived between two polls
    arrivals: deque[tuple[float, int]] = field(default_factory=deque)
    first_poll: float | None = None
    last_arrival: float = -1e9
    saw_new: bool = False  # the last poll showed new tasks
    server_time: datetime | None = None
    refreshed: float = 0.0
    stop_seen: bool = False
    expired: bool = False
    released: list[str] = field(default_factory=list)  # released marker keys
    released_tried: dict[str, float] = field(default_factory=dict)  # marker -> monotonic
    steal_checked: float = -1e9
    steal_wait: float = FOREIGN_AFTER
    done_below: int = 0  # every task below this index has an outcome
    scanned: float = 0.0
    full_scanned: float = -1e9
    nothing_running: bool = False  # the last expiry scan found every claim finished

    @property
    def claimed_below(self) -> int:
        """Every task below this index had a claim (or was not written yet: submits
        overlap) when this worker last looked."""
        return task_index(self.tasks[0]) if self.tasks else self.top + 1

    def listing_start(self) -> int | None:
        """The task index a refresh lists after: ``SUBMIT_WINDOW`` below the highest
        seen (submits overlap, so a task can appear up to that far below it, never
        further; ``_core.submits``), or None to list from the first."""
        back = self.top - SUBMIT_WINDOW
        return back if back >= 0 else None

    def absorb(self, listing: Listing, layout: SessionLayout, now: float) -> None:
        """Take in one listing of the task keys from ``listing_start``: new tasks, the
        released markers and the stop marker (they sort after every id, so the same
        page shows them), and the server's clock."""
        new = []
        released = []
        for o in listing.objects:
            held = layout.task_range(o.key)  # one task, or a batch's
            if held is not None:
                for index in range(held[0], held[0] + held[1]):
                    tid = task_id(index)
                    if tid not in self.seen:
                        self.seen.add(tid)
                        new.append(tid)
            elif o.key == layout.stop_marker:
                self.stop_seen = True
            elif layout.released_of(o.key):
                released.append(o.key)
        if new:
            self.tasks.extend(new)
            self.tasks.sort()  # ids sort in index order; a late one lands in its place
            new.sort()
            for tid in new:
                self.first_seen[tid] = now
            self.top = max(self.top, task_index(new[-1]))
            floor = self.top - SUBMIT_WINDOW  # the listing never shows these again
            self.seen = {t for t in self.seen if task_index(t) > floor}
        self.released = released
        self.server_time = listing.server_time
        if self.first_poll is None:
            self.first_poll = now  # what the first poll finds is a backlog, not a rate
        elif new:
            self.arrivals.append((self.refreshed, len(new)))
        if new:
            self.last_arrival = now
        self.saw_new = bool(new)
        if new or released:
            self.nothing_running = False
        self.refreshed = now

    def drop(self, tids: set[str]) -> None:
        """Forget tasks now known to be claimed. A few (one claim) are found by
        bisection, so a claim costs the same with 100,000 tasks pending as with ten."""
        if not tids:
            return
        if len(tids) <= DROP_BY_SEARCH:
            for t in tids:
                i = bisect.bisect_left(self.tasks, t)
                if i < len(self.tasks) and self.tasks[i] == t:
                    del self.tasks[i]
        else:
            self.tasks = [t for t in self.tasks if t not in tids]
        for t in tids:
            self.first_seen.pop(t, None)


@dataclass
class Shard:
    """The shard a worker owns among ``width``, and the choices that follow from it."""

    width: int
    index: int = 0
    collisions: int = 0  # own fresh tasks lost in a row

    @property
    def fleet_factor(self) -> float:
        return max(1.0, self.width / FLEET_UNIT)

    @property
    def idle_growth(self) -> float:
        """What each empty poll multiplies the idle delay by. A large fleet backs off
        faster: its workers' empty polls add up, and a task whose owner sleeps is
        stolen by whichever worker polls first."""
        return 2 * self.fleet_factor

    def owns(self, tid: str) -> bool:
        return task_index(tid) % self.width == self.index

    def lost_race(self, to_owner: bool) -> None:
        """An own task was claimed by another worker. ``to_owner``: its claim says it
        owns this shard too; twice without a win between, and this worker moves to the
        next shard (the other stays: it won meanwhile). A task stolen from this worker
        (it ran late, and others saw its tasks first) says nothing of a second owner."""
        if to_owner:
            self.collisions += 1
        if self.collisions >= 2:
            self.index, self.collisions = (self.index + 1) % self.width, 0

    def next_is_ours(self, view: WorkView) -> bool:
        """The next task id is in this shard and nothing else is pending: one call at a
        time, whose client may be waiting for the last result to submit it."""
        return not view.tasks and (view.top + 1) % self.width == self.index

    def own_pending(self, view: WorkView, limit: int | None = None) -> list[str]:
        """The first ``limit`` pending tasks of this shard, in id order (the scan stops
        there: a large backlog is not walked per poll)."""
        return list(itertools.islice((t for t in view.tasks if self.owns(t)), limit))

    def rate(self, view: WorkView, now: float) -> float:
        """Tasks per second submitted lately (every shard), as this worker saw them."""
        while view.arrivals and view.arrivals[0][0] < now - RATE_WINDOW:
            view.arrivals.popleft()
        if not view.arrivals:
            return 0.0
        # Counted from the poll before the first counted one: tasks it showed arrived
        # in that interval, not before (a rate biased high makes polls come too early).
        return sum(n for _, n in view.arrivals) / max(now - view.arrivals[0][0], 0.1)

    def own_due(self, view: WorkView, now: float) -> float | None:
        """When the next task of this shard is expected (monotonic): it is the j-th
        task after the highest seen, and tasks arrive at the observed rate."""
        rate = self.rate(view, now)
        if rate <= 0 or len(view.arrivals) < RATE_MIN_POLLS:
            # One or two bursts are no stream: a worker that slept until a task "due" at
            # their rate would start its share of the next burst late.
            return None
        j = (self.index - (view.top + 1)) % self.width + 1
        # Fast streams: wait for as many of its tasks as arrive within BATCH_WAIT, so
        # one LIST finds several.
        j += (max(1, int(BATCH_WAIT * rate / self.width)) - 1) * self.width
        # Two submits late on average: a poll that comes too early is a wasted LIST.
        return view.last_arrival + (j + 2) / rate

    def steal_after(self, view: WorkView, now: float) -> float:
        """How long a task waits for its shard's owner, who polls about once per
        ``width / rate`` seconds, before another worker may take it."""
        rate = self.rate(view, now)
        if rate <= 0:
            return FOREIGN_AFTER
        # Capped like an owner's sleep (DUE_MAX, stretched for the fleet): a larger
        # fleet's owners sleep longer, and a steal that beats them is a lost race.
        cap = STEAL_AFTER_MAX * self.fleet_factor
        return min(max(FOREIGN_AFTER, 2 * self.width / rate), cap)

    def steal_ready(self, view: WorkView, now: float) -> float | None:
        """When a steal could next be tried (monotonic), or None with nothing to steal."""
        # first_seen is in the order tasks were seen: its first foreign entry is the
        # oldest, found without walking the whole backlog.
        oldest = next((s for t, s in view.first_seen.items() if not self.owns(t)), None)
        if oldest is None:
            return None
        after = self.steal_after(view, now)
        return max(oldest + after, view.steal_checked + max(view.steal_wait, after))

    def stale_foreign(self, view: WorkView, now: float, limit: int) -> list[str]:
        """The first ``limit`` tasks of other shards that waited long enough for their
        owners, in id order."""
        after = self.steal_after(view, now)
        found = (
            t for t in view.tasks if not self.owns(t) and now - view.first_seen.get(t, now) >= after
        )
        return list(itertools.islice(found, limit))

    def steal_checked_in_vain(self, view: WorkView, now: float) -> None:
        """A claims listing found nothing to steal: check less often (the owners keep
        up), up to ``STEAL_CHECK_MAX`` stretched for the fleet."""
        after = self.steal_after(view, now)
        view.steal_wait = min(max(view.steal_wait, after) * 2, STEAL_CHECK_MAX * self.fleet_factor)

    def pause(
        self, view: WorkView, delay: float, now: float, *, hot: bool, after_task: bool = False
    ) -> float:
        """How long to sleep before the next poll.

        ``delay`` is the idle backoff. While tasks arrive, a worker sleeps until its
        shard's next task is due. Right after a task, with nothing else pending and the
        next task id in its shard (one call at a time: the client may be waiting for that
        result to submit the next), it polls at once and every ``IDLE_MIN_DELAY``.
        """
        pause = delay
        due = self.own_due(view, now)
        if due is not None and not hot:
            # Past due and not seen yet: look again after about half the time between
            # two submits, not at once (each poll of each worker is a LIST).
            gap = 0.0 if after_task else 0.5 / self.rate(view, now)
            pause = max(pause, min(max(due - now, gap), DUE_MAX * self.fleet_factor))
        ready = self.steal_ready(view, now)
        if ready is not None:
            pause = min(pause, max(ready - now, 0.0 if after_task else IDLE_MIN_DELAY))
        return min(pause, IDLE_MAX_DELAY)


AHEAD_LEAD = 0.1  # a first guess of how long claiming and preparing a task takes
AHEAD_HOLD_MIN = 1.0  # a task claimed ahead is held at least this long before hand-back
EWMA = 0.3  # the weight of the newest sample in the running estimates
BURST_MAX = 16  # own tasks claimed in one round trip, at most
BURST_AFTER = 4  # ... once this many tasks in a row ran faster than a claim


@dataclass
class Lookahead:
    """When a worker whose slots are all busy claims its next task ahead.

    The next task is claimed and its payload fetched while the running ones finish, so
    a slot that frees starts it at once (``ProcessPoolExecutor`` queues one call more
    than it has processes, for the same reason). The claim goes out ``2 * lead`` before
    the first running task is expected to end: a worker with no finished task yet claims
    nothing ahead, nor one whose tasks end faster than a claim takes (the claim would hide
    nothing, and hold a task that another worker could start sooner). A task held longer
    than ``hold`` (its slot's task ran over) is handed back, so a long task never keeps
    another waiting that an idle worker could run; no claim ahead is made again until a
    task ends. The only worker a session may have (``max_workers=1``) holds it whatever
    the wait: nobody else could run it sooner.
    """

    alone: bool = False
    run_time: float | None = None  # running estimate of a task's time in its slot
    lead: float = AHEAD_LEAD  # running estimate of poll-to-prepared time
    claim_time: float = AHEAD_LEAD  # running estimate of one claim's round trip
    short_streak: int = 0  # tasks in a row that ran faster than a claim
    burst_cap: int = 1  # claims that may go out together now
    held_back: bool = False

    def ran(self, seconds: float) -> None:
        self.run_time = seconds if self.run_time is None else _blend(self.run_time, seconds)
        self.held_back = False
        # Claims go out together only after BURST_AFTER short tasks in a row, then twice
        # as many each task (up to BURST_MAX), and one at a time again after a long one:
        # a warm-up of quick calls must not make a worker claim ten long ones at once.
        if seconds < self.claim_time:
            self.short_streak += 1
            if self.short_streak >= BURST_AFTER:
                self.burst_cap = min(2 * self.burst_cap, BURST_MAX)
        else:
            self.short_streak, self.burst_cap = 0, 1

    def prepared(self, seconds: float) -> None:
        self.lead = _blend(self.lead, seconds)

    def claimed(self, seconds: float) -> None:
        self.claim_time = _blend(self.claim_time, seconds)

    def burst(self) -> int:
        """How many of its own tasks a worker claims in one round trip: tasks that end
        faster than a claim takes run back to back while the next claims go out, so as
        many as run in one claim's time (at most ``burst_cap``); else one. (The claim's
        own round trip, not ``lead``: a first task's code download is no claim.)"""
        if self.run_time is None or self.run_time >= self.claim_time:
            return 1
        return max(1, min(self.burst_cap, int(self.claim_time / max(self.run_time, 1e-3))))

    def due(self, launched: list[float]) -> float | None:
        """When (monotonic) to claim ahead, given when the running tasks started; None:
        not now (nothing runs, no task finished yet, tasks shorter than a claim, or a claim
        ahead was handed back)."""
        if self.run_time is None or self.run_time < self.lead or self.held_back or not launched:
            return None
        return min(launched) + self.run_time - 2 * self.lead

    @property
    def hold(self) -> float:
        """How long a task claimed ahead may wait for a slot before it is handed back."""
        if self.alone:
            return float("inf")
        return max(AHEAD_HOLD_MIN, 2 * (self.run_time or 0.0) + self.lead)


def _blend(old: float, new: float) -> float:
    return (1 - EWMA) * old + EWMA * new
