"""The worker: claims a session's tasks, runs them, writes their outcomes.

::

    environment ──▶ Worker ──LIST tasks/ (from SUBMIT_WINDOW below the highest id seen;
                      │        the markers sort after every id)──▶ S3
                      │ stopped or past the deadline (server clock)? exit before claiming
                      │ a released marker (tasks/~released/...)? claim that task first
                      │ a pending task of its own shard (index % max_workers)? claim it
                      │   (no claims LIST); else steal one that waited too long for its
                      │   owner (a claims LIST first, backing off while there is none)
                      │ PUT claims/<t> IfNoneMatch=*     (lost? another worker has it)
                      │ GET tasks/<t> (and its big pieces, once per worker), run it in a
                      │   free task process (up to ``slots`` at once), renewing each lease;
                      │   while a slot is free, the next poll goes out; once every slot is
                      │   busy, one more task is claimed and fetched ahead, shortly before
                      │   a running one is expected to end (handed back if that one runs
                      │   over), and starts the moment a slot frees
                      │ PUT results/<t> IfNoneMatch=*    (412: a late duplicate, dropped),
                      │   written while the next task already runs; its lease is renewed
                      │   until the write is durable
                      ▼
                    next poll when its shard's next task is due at the observed submit
                    rate; idle: doubling to 30 s (10 ms for 0.25 s after a task when the
                    next task id is its own); exit after ``session_timeout`` idle, at
                    the deadline, on the stop marker, or on SIGTERM

A detached worker runs each task in a child interpreter (``worker.child``), one per
slot: the leases are renewed here, whatever a task does to its own interpreter
(holding the GIL, crashing, calling ``os._exit``), and a task that kills its process
fails with ``WorkerDied`` at once instead of after a lease; the other slots run on. A
worker started for one task (``StarburstExecutor``) runs it in its own interpreter,
renewing from a thread.
The S3 traffic runs on an event-loop thread. Configuration comes only from
environment variables, the same ones the ECS launcher passes as container overrides.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .._core import claims
from .._core.codec import Outcome, fingerprint, fingerprint_mismatch, payload_nonce
from .._core.layout import (
    check_session_id,
    check_task_id,
    ecs_worker_id,
    new_worker_id,
    task_id,
)
from .._core.loop import LoopThread
from .._core.manifest import Manifest
from .._core.session import SessionStore
from .._core.workview import IDLE_MAX_DELAY, IDLE_MIN_DELAY, Lookahead, Shard, WorkView
from ..config import (
    EXIT_CANNOT_START,
    TASK_ID_FIELD,
    SessionSettings,
    StoreLocation,
    WorkerEnv,
)
from ..errors import CorruptObject, EnvironmentMismatch, StarburstError, WorkerDied, WorkerLost
from ..store.local_server import read_credentials
from ..store.s3 import S3Store, stock_client
from .child import ChildExited, TaskProcess
from .code import prepare_pieces, prepare_user_code
from .ecs_meta import own_task_arn
from .execute import run_call
from .payloads import TaskPayloads
from .spot import IMDS, SpotWatch

# How often a serving worker rewrites its registry entry: the session's record of its
# time (the cost of a worker killed outright is counted up to its last entry).
REGISTRY_REFRESH = 600.0
log = logging.getLogger("starburst_executor.worker")
T = TypeVar("T")

HOT_SECONDS = 0.25  # after a task, the owner of the next task id polls at IDLE_MIN_DELAY
VIEW_MAX_AGE = 1.0
RENEW_TICK = 0.25  # how often a running task's lease and SIGTERM's grace are looked at
FIRST_SHARD_TRIES = 10
FULL_SCAN_LEASES = 5  # an expiry scan from task 0 every this many leases (deleted results)
WORKER_POOL = 16  # a worker's S3 connections


def store_credentials(location: StoreLocation) -> tuple[str, str] | None:
    """The keys of the local server a worker's store is on (None: the SDK's chain)."""
    return read_credentials(Path(location.local_home)) if location.local_home else None


def stock_store_client(environ: Mapping[str, str]) -> None:
    """In the worker template: make the S3 client a worker forked with ``environ``
    will use, so the next such worker does not (``store.s3.stock_client``)."""
    location = WorkerEnv.read(environ).location
    stock_client(location, store_credentials(location), WORKER_POOL)


@dataclass
class _Stats:
    tasks_run: int = 0
    takeovers: int = 0
    lost_races: int = 0
    lost_steals: int = 0  # of lost_races, those of steals
    claimed_ahead: int = 0  # tasks claimed while every slot was busy
    claimed_together: int = 0  # tasks claimed in one round trip with others (short tasks)
    ahead_handed_back: int = 0  # of those, handed back: their slot's task ran over
    duplicates_dropped: int = 0
    leases_lost: int = 0


class Worker:
    """One worker process serving one session."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = WorkerEnv.read(environ)
        self.location = env.location
        self.session_id = check_session_id(env.session_id)
        # On ECS, the id the launcher registered for this task: the session's registry
        # then keeps the task's own start and stop times.
        self.task_arn = own_task_arn(env.ecs_metadata_uri)
        self.worker_id = env.worker_id or (
            ecs_worker_id(self.task_arn) if self.task_arn else new_worker_id()
        )
        # So the client registered this id (the launcher's entry for the worker or task).
        self._named = bool(env.worker_id or self.task_arn)
        self._started = time.time()
        self._registered = time.monotonic()
        self.task_id = check_task_id(env.task_id) if env.task_id else None
        self._takeover = env.takeover
        self._log_location = env.log_location
        if TASK_ID_FIELD in self._log_location:  # an ECS worker's CloudWatch stream
            task = self.task_arn.rsplit("/", 1)[-1] if self.task_arn else ""
            self._log_location = self._log_location.replace(TASK_ID_FIELD, task) if task else ""
        # SIGTERM (a Spot notice gives 120 s): finish within this grace or hand back.
        self._term_grace = env.term_grace
        # An EC2 Spot notice is handled as the SIGTERM that ECS sends when it drains.
        self._spot_watch = (
            SpotWatch(
                lambda _notice: os.kill(os.getpid(), signal.SIGTERM),
                endpoint=env.imds_endpoint or IMDS,
            )
            if env.spot_watch
            else None
        )
        self._term_deadline: float | None = None
        self.loop = LoopThread("starburst-worker-io")
        self.store = S3Store(
            self.location,
            credentials=store_credentials(self.location),
            max_pool_connections=WORKER_POOL,
        )
        self.session = SessionStore(self.store, self.location.prefix, self.session_id)
        self.layout = self.session.layout
        self.stats = _Stats()
        self._terminating = threading.Event()
        self._manifest: Manifest | None = None
        self._mismatch: str | None = None
        self._payloads = TaskPayloads(self.store, self.layout)
        self._prefetched: dict[str, tuple[str, bytes]] = {}  # (key, payload) read with the claim
        # one-task mode: the claim made together with the first reads
        self._early_claim: tuple[claims.Claim | None] | tuple[()] = ()
        self._stored_fd = env.stored_fd  # where a per-call worker says its outcome is stored
        self._outcome_stored = False
        self._rng = random.Random()
        self._shard = Shard(1)  # the shard it owns (set once the manifest is read)
        # Polling workers run each task in a task process (one per slot, reused); a
        # one-task worker runs its task in itself.
        self._idle_processes: list[TaskProcess] = []
        self._running: dict[str, _Running] = {}  # by task id
        # Claimed ahead (or with others in one round trip), waiting for a slot, in order.
        self._ahead: deque[_Running] = deque()
        self._claimed_more: list[tuple[str, claims.Claim]] = []  # won with the one picked
        self._lookahead = Lookahead()
        self._writing: list[_Writing] = []  # outcomes being written
        self._pieces: Path | None = None  # the fetched pieces of payloads, by digest

    # -- lifecycle -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def on_term(signum: int, _frame: object) -> None:
            log.warning(
                "worker %s got signal %d: no new claims; the current task finishes or is "
                "handed back within %gs",
                self.worker_id,
                signum,
                self._term_grace,
            )
            if self._term_deadline is None:  # a second notice does not extend the first
                self._term_deadline = time.monotonic() + self._term_grace
            self._terminating.set()

        signal.signal(signal.SIGTERM, on_term)
        if self._spot_watch is not None:
            self._spot_watch.start()

    def run(self) -> int:
        """Serve the session until idle, deadline, stop or SIGTERM. Returns an exit code."""
        serving = False
        try:
            if self.task_id is not None:
                manifest = self.loop.run(self._load_with_payload(self.task_id))
            else:
                manifest, _ = self.loop.run(self.session.load())
            self._manifest = manifest
            self._mismatch = fingerprint_mismatch(manifest.fingerprint, fingerprint())
            if self.task_id is not None:
                serving = True
                reason = self._serve_one(self.task_id)
                self._say_stored()
            else:
                for _ in range(manifest.task_slots):
                    process = TaskProcess()
                    process.start()  # imports while the first polls go out
                    self._idle_processes.append(process)
                width = manifest.settings.max_workers
                self._shard = Shard(width, self._first_shard(width))
                self._lookahead = Lookahead(alone=width == 1)
                self._register("running")
                serving = True
                reason = self._serve()
                self._register("exited", reason=reason)
            log.info("worker %s exits: %s", self.worker_id, reason)
            return 0
        except StarburstError as err:
            log.error("worker %s of session %s: %s", self.worker_id, self.session_id, err)
            return 2
        except Exception:
            if serving:
                raise
            log.exception(
                "worker %s of session %s could not start", self.worker_id, self.session_id
            )
            return EXIT_CANNOT_START
        finally:
            # No task process outlives its worker.
            running = [job.process for job in self._running.values() if job.process]
            for process in [*self._idle_processes, *running]:
                process.stop()
            if self._pieces is not None:
                shutil.rmtree(self._pieces, ignore_errors=True)
            with contextlib.suppress(Exception):
                self.loop.run(self.store.close(), timeout=10)
            self.loop.close()

    def _say_stored(self) -> None:
        """A per-call worker forked locally tells the client, before it exits, that its
        task's outcome is stored: the client reads it now, not after the exit (process
        teardown and exit detection: about 10 ms of a cold call)."""
        fd, self._stored_fd = self._stored_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # the client may be gone
            if self._outcome_stored:
                os.write(fd, json.dumps({"stored": os.getpid()}).encode() + b"\n")
            os.close(fd)

    async def _load_with_payload(self, tid: str) -> Manifest:
        """One-task mode: the manifest, the task's payload and its claim, three requests
        in one round trip. The payload is kept for ``_prepare`` (read again if this
        failed). The claim needs nothing from the manifest, and whatever the manifest
        says the task is then answered under it; a takeover claims afterwards."""

        async def payload() -> None:
            key = self.layout.key("tasks", tid)  # a per-call executor writes no batches
            with contextlib.suppress(StarburstError):
                self._prefetched[tid] = key, (await self.store.get(key)).body

        async def claim() -> None:
            if not self._takeover:
                self._early_claim = (
                    await claims.try_claim(self.store, self.layout, tid, self.worker_id),
                )

        loaded, _, claimed = await asyncio.gather(
            self.session.load(), payload(), claim(), return_exceptions=True
        )
        if isinstance(loaded, BaseException):
            # The task will not run here: leave no claim behind (in a session cleaned
            # up meanwhile it would be the only key left).
            if self._early_claim and self._early_claim[0] is not None:
                with contextlib.suppress(StarburstError):
                    await self.store.delete(
                        self.layout.key("claims", tid), if_match=self._early_claim[0].etag
                    )
            raise loaded
        if isinstance(claimed, BaseException):
            raise claimed
        return loaded[0]

    def _first_shard(self, width: int) -> int:
        """Workers launched together start on distinct shards: this worker's rank among
        the registered worker ids. The client registers a batch of workers at once,
        after launching them all, so a worker that starts first waits a little for its
        entry (a LIST every half second, 5 s at most); a random shard if it never comes,
        or when it was not launched under a name the client knows (ECS names its workers
        after their task ARN)."""
        mine = self.layout.worker(self.worker_id)
        for attempt in range(FIRST_SHARD_TRIES if self._named else 0):
            try:
                listing = self.loop.run(self.store.list_objects(self.layout.dir("workers")))
            except StarburstError:
                break
            keys = sorted(o.key for o in listing.objects)
            if mine in keys:
                return keys.index(mine) % width
            if attempt + 1 < FIRST_SHARD_TRIES:
                self._terminating.wait(0.5)
        return self._rng.randrange(width)

    def _register(self, state: str, **extra: Any) -> None:
        self._registered = time.monotonic()
        body = {
            "worker_id": self.worker_id,
            "session_id": self.session_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": state,
            "started": self._started,
            "updated": time.time(),
            "task_arn": self.task_arn,
            "stats": self.stats.__dict__,
            "requests": dict(self.store.counter.snapshot()),
            "logs": self._log_location,
            **extra,
        }
        with contextlib.suppress(StarburstError):
            self.loop.run(
                self.store.put(self.layout.worker(self.worker_id), json.dumps(body).encode())
            )

    @property
    def settings(self) -> SessionSettings:
        assert self._manifest is not None
        return self._manifest.settings

    def _serve(self) -> str:
        """Keep up to ``task_slots`` tasks running, each in its own task process, and
        one more claimed ahead once they are about to end; poll for work while a slot is
        free, renew every held task's lease, write outcomes without holding up the next
        task."""
        try:
            return self._serve_until_done()
        finally:
            if self._ahead:  # never started: the next worker need not wait
                self._give_back_ahead()
            self._drain_writes()

    def _serve_until_done(self) -> str:
        view = WorkView()
        delay = IDLE_MIN_DELAY
        idle_since = time.monotonic()
        next_poll = 0.0
        assert self._manifest is not None
        slots = self._manifest.task_slots
        running = self._running
        ahead = self._lookahead
        handed: list[str] = []
        while True:
            terminating = self._terminating.is_set()
            if terminating and self._ahead:
                handed.append(self._give_back_ahead())
            self._reap_writes()
            if terminating and not running:
                return f"terminated; {'; '.join(handed)}" if handed else "terminated by signal"
            now = time.monotonic()
            if now - self._registered >= REGISTRY_REFRESH:
                self._register("running")  # a worker killed outright is still counted
            full = len(running) >= slots
            if self._ahead and now - self._ahead[0].held > ahead.hold:
                self._give_back_ahead()  # their slots' tasks ran over
                ahead.held_back = True
            due = None
            if full and not self._ahead and not terminating:
                due = ahead.due([job.launched for job in running.values()])
            wanted = not full or (due is not None and now >= due)
            if not terminating and wanted and now >= next_poll:
                try:
                    picked = self._claim_ahead(view) if full else self._next_task(view)
                except StarburstError as err:
                    # The store may be restarting: ride through it with the idle backoff.
                    log.warning("worker %s: polling failed (%s); retrying", self.worker_id, err)
                    picked = None
                if picked is not None:
                    job = self._begin(*picked)
                    if isinstance(job, _Running):
                        if full:
                            ahead.prepared(time.monotonic() - now)
                            job.held = time.monotonic()
                            self._ahead.append(job)
                            self.stats.claimed_ahead += 1
                        else:
                            self._start(job)
                    elif job is not None:
                        self._finish_later(job, None)
                    self._queue_claimed_more()
                    while len(running) < slots and self._ahead and not self._terminating.is_set():
                        self._start(self._ahead.popleft())
                    delay, idle_since = IDLE_MIN_DELAY, time.monotonic()
                    next_poll = self._after_task(view)  # another slot may be free
                    continue
                if not running:
                    if view.stop_seen:
                        return "session stopped"
                    if view.expired:
                        return "session deadline reached"
                    if now - idle_since > self.settings.session_timeout:
                        return f"idle for {self.settings.session_timeout:g}s"
                hot = now - idle_since <= HOT_SECONDS and self._shard.next_is_ours(view)
                grown = min(delay * self._shard.idle_growth, IDLE_MAX_DELAY)
                delay = IDLE_MIN_DELAY if view.saw_new or hot else grown
                pause = self._shard.pause(view, delay, time.monotonic(), hot=hot)
                if not running:
                    log.debug(
                        "idle poll: next in %.3fs, %d requests so far",
                        pause,
                        self.store.counter.total,
                    )
                next_poll = now + pause
            wait = max(0.0, next_poll - time.monotonic())
            if not running:
                # Outcomes still being written keep their leases renewed meanwhile.
                self._terminating.wait(min(wait, RENEW_TICK) if self._writing else wait)
                continue
            if terminating or full:
                wait = RENEW_TICK
                if due is not None:
                    wait = min(wait, max(due, next_poll) - time.monotonic())
            closed = view.stop_seen or view.expired
            if self._wait(running, max(0.0, min(wait, RENEW_TICK)), handed, closed):
                delay, idle_since = IDLE_MIN_DELAY, time.monotonic()
                # A poll planned while every slot was busy is stale: plan it from now.
                after = self._after_task(view)
                next_poll = after if full else min(next_poll, after)

    def _after_task(self, view: WorkView) -> float:
        """When to poll next (monotonic) once a task started or ended: at once while
        this worker's shard has work, else when it can have work, not at once."""
        if self._shard.own_pending(view, 1):
            return 0.0
        now = time.monotonic()
        hot = self._shard.next_is_ours(view)
        return now + self._shard.pause(view, 0.0, now, hot=hot, after_task=True)

    def _serve_one(self, tid: str) -> str:
        """Ephemeral mode: run exactly this task, then exit."""
        if self._early_claim:
            (claim,) = self._early_claim
        else:
            claim = self.loop.run(claims.try_claim(self.store, self.layout, tid, self.worker_id))
        previous = None
        if claim is None and self._takeover:
            # The client saw the previous worker stopped (Spot); its lease need not expire.
            listing = self.loop.run(self.store.list_objects(self.layout.key("claims", tid)))
            if listing.objects:
                taken = self.loop.run(
                    claims.take_over(
                        self.store, self.layout, listing.objects[0], tid, self.worker_id
                    )
                )
                if taken is not None:
                    previous, claim = taken
        if claim is None:
            return f"task {tid} was already claimed (cancelled or run elsewhere)"
        self._handle(tid, claim, previous)
        return f"ran task {tid}"

    def _closed_for_work(self, view: WorkView) -> bool:
        """True once the session is stopped or past its deadline (server clock): no
        claim may be made then, so no task is claimed and abandoned unrun."""
        if view.stop_seen:
            return True
        assert self._manifest is not None
        if view.server_time is None or view.server_time.timestamp() < self._manifest.deadline:
            return False
        # extend() may have moved it: re-read before giving up.
        self._manifest, _ = self.loop.run(self.session.load())
        view.expired = view.server_time.timestamp() >= self._manifest.deadline
        return view.expired

    # -- choosing work (the choices themselves: ``_core/workview.py``) -------------

    def _refresh(self, view: WorkView) -> None:
        """One LIST of the task keys from the view's start; its ``Date`` is the
        server's clock. Started from a task id, not from the last key: a junk key
        sorting after the next task ids (``tasks/t00000000x``) cannot hide them."""
        back = view.listing_start()
        start = self.layout.after("tasks", task_id(back)) if back is not None else None
        listing = self.loop.run(
            self.store.list_objects(self.layout.dir("tasks"), start_after=start)
        )
        view.absorb(listing, self.layout, time.monotonic())
        self._payloads.learn(listing)
        self._payloads.forget_below(view.claimed_below)

    def _list_claims(self, view: WorkView) -> None:
        """One LIST of the claims from the claimed low-water mark: forget the tasks it
        shows claimed."""
        below = view.claimed_below
        start = self.layout.after("claims", task_id(below - 1)) if below else None
        listing = self.loop.run(
            self.store.list_objects(self.layout.dir("claims"), start_after=start)
        )
        view.drop({t for o in listing.objects if (t := self.layout.tid_of(o.key))})

    def _next_task(self, view: WorkView) -> tuple[str, claims.Claim, claims.Claim | None] | None:
        if not self._shard.own_pending(view, 1) or time.monotonic() - view.refreshed > VIEW_MAX_AGE:
            self._refresh(view)
        if self._closed_for_work(view):
            return None
        released = self._claim_released(view)
        if released is not None:
            return released[0], released[1], None
        picked = self._claim_own(view) or self._steal(view)
        if picked is not None:
            view.nothing_running = False
            return picked[0], picked[1], None
        return self._take_over_expired(view)

    def _claim_ahead(self, view: WorkView) -> tuple[str, claims.Claim, claims.Claim | None] | None:
        """While every slot is busy: claim the next task of this worker's own shard,
        polling as an idle worker would. Never a steal: another shard's task goes to a
        worker that can start it now."""
        if not self._shard.own_pending(view, 1) or time.monotonic() - view.refreshed > VIEW_MAX_AGE:
            self._refresh(view)
        if self._closed_for_work(view):
            return None
        picked = self._claim_own(view)
        return None if picked is None else (picked[0], picked[1], None)

    def _claim_released(self, view: WorkView) -> tuple[str, claims.Claim] | None:
        """Claim a handed-back task, whatever this worker's view has passed."""
        now = time.monotonic()
        for marker in view.released:
            if now - view.released_tried.get(marker, -1e9) < VIEW_MAX_AGE:
                continue
            view.released_tried[marker] = now
            claim = self.loop.run(
                claims.claim_released(self.store, self.layout, marker, self.worker_id)
            )
            if claim is not None:
                log.info("worker %s claims handed-back task %s", self.worker_id, claim.task_id)
                return claim.task_id, claim
        return None

    def _claim_own(self, view: WorkView) -> tuple[str, claims.Claim] | None:
        """Claim the lowest pending task of this worker's shard, without listing claims;
        tasks shorter than a claim, several at once (``Lookahead.burst``)."""
        now = time.monotonic()
        after = self._shard.steal_after(view, now)
        burst = self._lookahead.burst()
        if burst > 1 and not self._terminating.is_set():
            picked = self._claim_own_burst(view, self._shard.own_pending(view, burst), now, after)
            if picked is not None:
                return picked
        for tid in self._shard.own_pending(view, 2):
            seen = view.first_seen.get(tid, now)
            # A fresh task is rarely lost (nobody steals it yet): read its payload in
            # the claim's round trip. An older one may have been stolen: claim first.
            fresh = now - seen < after
            sent = time.monotonic()
            claim = self.loop.run(self._claim_and_read(tid, read=fresh))
            self._lookahead.claimed(time.monotonic() - sent)
            view.drop({tid})  # claimed, by us or another (kept when the store failed)
            if claim is not None:
                self._shard.collisions = 0
                return tid, claim
            self.stats.lost_races += 1
            self._shard.lost_race(to_owner=self._lost_to_owner(tid))
        return None

    def _claim_own_burst(
        self, view: WorkView, tids: list[str], now: float, after: float
    ) -> tuple[str, claims.Claim] | None:
        """Claim ``tids`` in one round trip (payloads read with them, as for one); the
        first won is returned, the others wait in ``_claimed_more``."""
        if len(tids) < 2:
            return None
        fresh = [now - view.first_seen.get(tid, now) < after for tid in tids]

        async def claim_all() -> list[claims.Claim | BaseException | None]:
            reads = zip(tids, fresh, strict=True)
            claiming = (self._claim_and_read(t, read=f) for t, f in reads)
            # Every answer is kept: one failed request must not orphan claims won.
            return list(await asyncio.gather(*claiming, return_exceptions=True))

        sent = time.monotonic()
        answers = self.loop.run(claim_all())
        self._lookahead.claimed(time.monotonic() - sent)
        failed = [a for a in answers if isinstance(a, BaseException)]
        # Claimed, by us or another; a task whose claim failed stays in the view.
        view.drop(
            {t for t, a in zip(tids, answers, strict=True) if not isinstance(a, BaseException)}
        )
        mine = [(t, a) for t, a in zip(tids, answers, strict=True) if isinstance(a, claims.Claim)]
        lost = [t for t, a in zip(tids, answers, strict=True) if a is None]
        if lost:
            self.stats.lost_races += len(lost)
            self._shard.lost_race(to_owner=self._lost_to_owner(lost[0]))
        if not mine:
            if failed:
                raise failed[0]
            return None
        self._shard.collisions = 0
        self._claimed_more = mine[1:]
        self.stats.claimed_together += len(mine)
        return mine[0]

    def _lost_to_owner(self, tid: str) -> bool:
        """Whether the claim that beat ours on ``tid`` is another owner's of its shard
        (one GET, on lost races only: a steal from this worker, when it ran late, must
        not make it leave its shard for another owner's)."""
        try:
            winner = self.loop.run(claims.read_claim(self.store, self.layout, tid))
        except (StarburstError, ValueError):
            return False
        return winner is not None and winner.owner and winner.worker_id != self.worker_id

    async def _claim_and_read(self, tid: str, *, read: bool) -> claims.Claim | None:
        """Claim ``tid``, with ``read`` reading its payload in the same round trip (the
        read is dropped when the claim is lost)."""

        async def payload() -> tuple[str, bytes] | None:
            if read:
                with contextlib.suppress(StarburstError):
                    return await self._payloads.get(tid)
            return None

        claim, found = await asyncio.gather(
            claims.try_claim(self.store, self.layout, tid, self.worker_id, owner=True), payload()
        )
        if claim is not None and found is not None:
            self._prefetched[tid] = found
        return claim

    def _steal(self, view: WorkView) -> tuple[str, claims.Claim] | None:
        """Take another shard's task that waited too long for its owner. A claims LIST
        first says which are still pending; while these checks find nothing to take,
        they back off (the owners keep up)."""
        now = time.monotonic()
        after = self._shard.steal_after(view, now)
        if not self._shard.stale_foreign(view, now, 1):
            return None
        if now - view.steal_checked < max(view.steal_wait, after):
            return None
        view.steal_checked = now
        self._list_claims(view)
        candidates = self._shard.stale_foreign(view, now, self._shard.width)
        if not candidates:
            self._shard.steal_checked_in_vain(view, now)
            return None
        # Among the oldest few, each stealer prefers a different one (a hash of its id).
        tid = min(candidates, key=lambda t: hash((self.worker_id, t)))
        claim = self.loop.run(claims.try_claim(self.store, self.layout, tid, self.worker_id))
        view.drop({tid})
        if claim is None:
            # Its owner or another stealer was first: the fleet keeps up with this
            # shard, so look less often (each lost race is a wasted PUT).
            self.stats.lost_races += 1
            self.stats.lost_steals += 1
            self._shard.steal_checked_in_vain(view, now)
            return None
        view.steal_wait = after  # there was work to take: look again as soon as allowed
        return tid, claim

    def _take_over_expired(
        self, view: WorkView
    ) -> tuple[str, claims.Claim, claims.Claim | None] | None:
        """Find claims whose lease expired (server clock) and take one over.

        Costs two LISTs, so it runs at most every quarter lease, and not at all
        while the last scan found every claim finished and no claim appeared since. The
        fleet shares the watch: with more than 8 shards each worker scans that much less
        often (every quarter lease times shards / 8), so the fleet's scans per second
        stay those of 8 workers. Every ``FULL_SCAN_LEASES`` leases (stretched the same
        way) a scan starts from the first task instead of the finished low-water mark, so
        a result deleted behind the session's back (its claim then has no outcome and no
        renewal) is run again too.
        """
        lease = self.settings.lease_seconds
        share = max(1.0, self.settings.max_workers / 8)  # the fleet shares the watch
        every = lease / 4 * share
        now = time.monotonic()
        full = now - view.full_scanned >= lease * FULL_SCAN_LEASES * share
        if not full and (view.nothing_running or now - view.scanned < every):
            return None
        view.scanned = now
        if full:
            view.full_scanned, view.done_below = now, 0
        layout = self.layout
        start = layout.after("results", task_id(view.done_below - 1)) if view.done_below else None
        results = self.loop.run(self.store.list_objects(layout.dir("results"), start_after=start))
        done = {t for o in results.objects if (t := layout.tid_of(o.key))}
        start = layout.after("claims", task_id(view.done_below - 1)) if view.done_below else None
        listing = self.loop.run(self.store.list_objects(layout.dir("claims"), start_after=start))
        held = {t: o for o in listing.objects if (t := layout.tid_of(o.key))}
        running = [(t, o) for t, o in held.items() if t not in done]
        low, below = view.done_below, view.claimed_below
        view.drop(set(held))
        while task_id(view.done_below) in done:
            view.done_below += 1
        # Quiet only once every task this worker has seen has an outcome: a task still
        # unclaimed may be claimed next by a worker that then dies.
        view.nothing_running = not running and view.done_below > view.top
        for tid, info in running:
            if not claims.lease_expired(info, listing.server_time, lease):
                continue
            if self.loop.run(self.store.exists(layout.key("results", tid))):
                continue
            taken = self.loop.run(claims.take_over(self.store, layout, info, tid, self.worker_id))
            if taken is not None:
                previous, claim = taken
                self.stats.takeovers += 1
                self.loop.run(self.session.mark_reexecuted(tid))
                return tid, claim, previous
        # Below the claimed low-water mark every task had a claim: one with neither a
        # claim nor an outcome now lost its claim without a released marker.
        for index in range(low, below):
            tid = task_id(index)
            if tid in done or tid in held:
                continue
            if self.loop.run(self._payloads.key_of(tid)) is None:
                continue  # still in flight from the client (or its write failed)
            view.nothing_running = False
            fresh = self.loop.run(claims.try_claim(self.store, layout, tid, self.worker_id))
            if fresh is not None:
                log.warning(
                    "worker %s: task %s had lost its claim; running it", self.worker_id, tid
                )
                return tid, fresh, None
        return None

    # -- running work --------------------------------------------------------------

    def _handle(self, tid: str, claim: claims.Claim, previous: claims.Claim | None) -> None:
        """One-task mode: run the task in this interpreter, renewing from a thread."""
        job = self._begin(tid, claim, previous)
        if isinstance(job, _Running):
            loaded = {d: Path(p).read_bytes() for d, p in job.request["pieces"].items()}
            with job.lease.renewing_on_a_thread():
                request = job.request
                job = run_call(
                    tid,
                    request["payload"],
                    key=request["key"],
                    seed=request["seed"],
                    meta=request["meta"],
                    pieces=loaded,
                )
        if job is not None:
            self._finish(job)

    def _begin(
        self, tid: str, claim: claims.Claim, previous: claims.Claim | None
    ) -> _Running | Outcome | None:
        """Everything before the call runs: its outcome when it cannot run, None when
        nothing is left to do, else the request for a task process."""
        if previous is not None and previous.state == "cancelled":
            now = time.time()
            self.loop.run(
                self.session.write_outcome(Outcome(tid, "cancelled", started=now, finished=now))
            )
            return None
        meta = {"worker_id": self.worker_id, "attempt": claim.attempt}
        if claim.attempt > self.settings.max_retries + 1:
            lost = WorkerLost(
                f"task {tid} of session {self.session_id} was started {claim.attempt - 1} "
                f"times and each time its lease expired without an outcome (the worker "
                f"stopped renewing it: killed, preempted or cut off from S3); "
                f"max_retries={self.settings.max_retries}. Check the worker logs "
                f"(`starburst logs {self.session_id} --task {tid}`)"
            )
            return Outcome.failure(tid, lost, **meta)
        return self._prepare(tid, claim, meta)

    def _finish(self, outcome: Outcome) -> None:
        """Write a one-task worker's outcome, waiting until it is durable."""
        self._log_failure(outcome)
        self._written(outcome.task_id, self.loop.run(self._store_outcome(outcome)))

    def _finish_later(self, outcome: Outcome, lease: _Lease | None) -> None:
        """Start writing a polling worker's outcome and go on: the next task need not
        wait for it. The task's lease is renewed until the write is durable."""
        self._log_failure(outcome)
        future = asyncio.run_coroutine_threadsafe(self._store_outcome(outcome), self.loop.loop)
        self._writing.append(_Writing(outcome.task_id, future, lease))

    def _reap_writes(self) -> None:
        pending = []
        for writing in self._writing:
            if not writing.future.done():
                if writing.lease is not None:
                    writing.lease.tick(on_term=False)
                pending.append(writing)
                continue
            try:
                written = writing.future.result()
            except Exception as err:  # one write's failure must not strand the others
                log.error("writing the result of %s failed: %s", writing.tid, err)
                written = None
            self._written(writing.tid, written)
        self._writing = pending

    def _drain_writes(self) -> None:
        """Wait for every outcome being written (each gives up after a lease)."""
        while self._writing:
            futures = [w.future for w in self._writing]
            concurrent.futures.wait(futures, RENEW_TICK, concurrent.futures.FIRST_COMPLETED)
            self._reap_writes()

    @staticmethod
    def _log_failure(outcome: Outcome) -> None:
        if outcome.kind == "error":  # the log shows each failure whole, as a local run would
            log.error("task %s failed:\n%s", outcome.task_id, outcome.traceback.rstrip())

    async def _store_outcome(self, outcome: Outcome) -> bool | None:
        tid = outcome.task_id
        return await self._durably(lambda: self.session.write_outcome(outcome), f"result of {tid}")

    def _written(self, tid: str, written: bool | None) -> None:
        self._outcome_stored = written is not None  # ours, or one that was there first
        if written is False:
            self.stats.duplicates_dropped += 1
            log.warning("task %s already had an outcome; this late one was dropped", tid)
        self.stats.tasks_run += 1

    def _start(self, job: _Running) -> None:
        """Start a prepared task in a free task process."""
        process = self._idle_processes.pop() if self._idle_processes else TaskProcess()
        job.process = process
        job.launched, job.started = time.monotonic(), time.time()
        try:
            process.send(job.request)
        except ChildExited as exited:
            self._idle_processes.append(process)  # send() starts a fresh one next time
            self._finish_later(self._died(job, exited), job.lease)
            return
        self._running[job.tid] = job

    def _queue_claimed_more(self) -> None:
        """Prepare the tasks won in the same round trip as the one just picked; they
        wait for a slot with the tasks claimed ahead."""
        more, self._claimed_more = self._claimed_more, []
        for tid, claim in more:
            job = self._begin(tid, claim, None)
            if isinstance(job, _Running):
                job.held = time.monotonic()
                self._ahead.append(job)
            elif job is not None:
                self._finish_later(job, None)

    def _give_back_ahead(self) -> str:
        """Hand back every task claimed ahead, none of which started."""
        given = []
        while self._ahead:
            job = self._ahead.popleft()
            self.stats.ahead_handed_back += 1
            released = False
            with contextlib.suppress(StarburstError, TimeoutError):
                released = self.loop.run(
                    claims.hand_back(self.store, self.layout, job.lease.claim), 10
                )
            what = "handed back" if released else "could not hand back (its lease will expire)"
            log.info("worker %s: task %s claimed ahead: %s", self.worker_id, job.tid, what)
            given.append(f"{what} {job.tid} (claimed ahead, not started)")
        return "; ".join(given)

    def _wait(
        self, running: dict[str, _Running], timeout: float, handed: list[str], closed: bool
    ) -> bool:
        """Wait up to ``timeout`` for any running task to answer; start the task claimed
        ahead in the freed process (hand it back instead once the session is ``closed``:
        stopped or past its deadline), then write the outcome; renew the other leases.
        True when a task ended."""
        by_fd = {job.process.fileno(): job for job in running.values() if job.process}
        ready, _, _ = select.select(list(by_fd), [], [], timeout)
        ended = 0
        for fd in ready:
            job = by_fd[fd]
            assert job.process is not None
            del running[job.tid]
            try:
                answer = job.process.wait(0)
                if answer is None:  # woken without a whole answer: not ended after all
                    running[job.tid] = job
                    continue
                outcome = Outcome.decode(answer, key=f"the answer of task process for {job.tid}")
                # The call's own time (its process's clock), not until this loop saw it
                # end: a claim that held the loop meanwhile would make short tasks look
                # as long as a claim, and they would be claimed one round trip at a time.
                self._lookahead.ran(max(outcome.finished - outcome.started, 0.0))
            except ChildExited as exited:
                # A crash fails this task at once; the other slots run on.
                outcome = self._died(job, exited)
            ended += 1
            self._idle_processes.append(job.process)
            if self._ahead and closed:
                self._give_back_ahead()
            elif self._ahead and not self._terminating.is_set():
                self._start(self._ahead.popleft())
            self._finish_later(outcome, job.lease)
        for tid, job in list(running.items()):
            try:
                job.lease.tick()
            except _HandedBack as back:
                if job.process is not None:
                    job.process.kill()
                    self._idle_processes.append(job.process)
                del running[tid]
                handed.append(str(back))
        for waiting in self._ahead:
            waiting.lease.tick(on_term=False)
        return ended > 0 or len(running) < len(by_fd)

    def _died(self, job: _Running, exited: ChildExited) -> Outcome:
        died = WorkerDied(
            f"task {job.tid} of session {self.session_id}: the process running it "
            f"{exited} (worker {self.worker_id}); this can be caused by a segmentation "
            f"fault, excessive memory use, os._exit or a kill. Logs: "
            f"{self._log_location or 'the worker output'}",
            task_id=job.tid,
            exit_status=exited.returncode,
            logs=self._log_location,
        )
        return Outcome.failure(
            job.tid, died, started=job.started, finished=time.time(), **job.request["meta"]
        )

    async def _durably(self, make: Callable[[], Coroutine[Any, Any, T]], what: str) -> T | None:
        """Retry a store call through an outage (server restart, throttling) for as long
        as a lease lasts. Giving up then loses nothing: the task's lease is no longer
        renewed, so it expires and another worker runs the task."""
        delay, deadline = 0.5, time.monotonic() + max(60.0, self.settings.lease_seconds)
        while True:
            try:
                return await make()
            except (CorruptObject, EnvironmentMismatch):
                raise
            except StarburstError as err:
                if time.monotonic() > deadline:
                    log.error("giving up on the %s: %s", what, err)
                    return None
                log.warning("writing the %s failed (%s); retrying in %.1fs", what, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _prepare(
        self, tid: str, claim: claims.Claim, meta: dict[str, Any]
    ) -> _Running | Outcome | None:
        """Fetch the payload, the user's code and the call's pieces: the request for a
        task process, a failure outcome, or None when the claim was handed back."""
        started = time.time()
        lease = _Lease(self, claim)
        prefetched = self._prefetched.pop(tid, None)
        try:
            if self._mismatch:
                raise EnvironmentMismatch(
                    f"task {tid} of session {self.session_id}: {self._mismatch}"
                )
            found = prefetched or self.loop.run(
                self._durably(lambda: self._payloads.get(tid), f"payload of task {tid}")
            )
            if found is None:  # the store stayed away: let another worker try later
                with contextlib.suppress(StarburstError):
                    self.loop.run(claims.hand_back(self.store, self.layout, lease.claim))
                return None
            key, payload = found
            meta["call"] = payload_nonce(payload)  # the client tells its own call's outcome
            # The user's own modules the call needs: fetched once, cached on disk.
            code = prepare_user_code(
                payload, key=key, prefix=self.location.prefix, fetch=self._fetch
            )
            # Big closures and arguments: fetched once per worker, then from disk.
            pieces = prepare_pieces(
                payload,
                key=key,
                folder=self._pieces_dir(),
                fetch=self._fetch,
                blob_key=self.layout.blob,
            )
        except StarburstError as err:
            return Outcome.failure(tid, err, started=started, finished=time.time(), **meta)
        except OSError as err:  # the worker's own disk (full, read-only): fail the task, not us
            failure = StarburstError(
                f"task {tid} of session {self.session_id}: worker {self.worker_id} could "
                f"not store the call's code or pieces on its disk ({err}); give workers "
                "more ephemeral storage, or pass smaller arguments"
            )
            return Outcome.failure(tid, failure, started=started, finished=time.time(), **meta)
        request = {
            "task_id": tid,
            "payload": payload,
            "key": key,
            "seed": self.settings.seed,
            "meta": meta,
            "paths": [str(folder) for folder in code],
            "pieces": pieces,
        }
        return _Running(tid, lease, request, started)

    def _pieces_dir(self) -> Path:
        if self._pieces is None:
            self._pieces = Path(tempfile.mkdtemp(prefix=f"starburst-pieces-{self.worker_id}-"))
        return self._pieces

    def _fetch(self, key: str) -> bytes:
        return self.loop.run(self.store.get(key)).body

    def _hand_back(self, claim: claims.Claim) -> str:
        """Out of time after SIGTERM: release the claim so another worker runs the task
        now. A result this process might still have written would be a late duplicate
        anyway (outcomes are create-only)."""
        released = False
        with contextlib.suppress(StarburstError, TimeoutError):  # the store is not answering
            released = self.loop.run(claims.hand_back(self.store, self.layout, claim), timeout=10)
        what = (
            f"handed back {claim.task_id}"
            if released
            else f"could not hand back {claim.task_id} (its lease will expire)"
        )
        log.warning("worker %s: out of time after SIGTERM: %s", self.worker_id, what)
        with contextlib.suppress(Exception):
            self._register("exited", reason=f"terminated; {what}")
        return what


@dataclass
class _Running:
    """A claimed task: its lease, its request and (once started) its task process."""

    tid: str
    lease: _Lease
    request: dict[str, Any]
    started: float
    process: TaskProcess | None = None
    launched: float = 0.0  # monotonic, when it was sent to its task process
    held: float = 0.0  # monotonic, when it was claimed ahead (waiting for a slot)


@dataclass
class _Writing:
    """An outcome being written, and the lease kept until it is durable."""

    tid: str
    future: concurrent.futures.Future[bool | None]
    lease: _Lease | None


class _HandedBack(Exception):
    """SIGTERM's grace ran out while a task ran: its claim was released."""


class _Lease:
    """Keeps one claim alive while its task runs, and hands it back after SIGTERM.

    ``tick()`` is called between waits for the task process (detached workers), so a
    task that holds the GIL or blocks in C cannot stop it; a worker that runs its one
    task in its own interpreter calls it from a thread instead.
    """

    def __init__(self, worker: Worker, claim: claims.Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.lost = False
        self._interval = worker.settings.lease_seconds / 3
        self._next = time.monotonic() + self._interval

    def tick(self, on_term: bool = True) -> None:
        """Renew when due; with ``on_term``, raise ``_HandedBack`` once SIGTERM's grace
        is over."""
        w = self.worker
        if on_term and w._term_deadline is not None and time.monotonic() >= w._term_deadline:
            raise _HandedBack(w._hand_back(self.claim))
        if self.lost or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._interval
        try:
            renewed = w.loop.run(claims.renew(w.store, w.layout, self.claim))
        except StarburstError as err:
            log.warning("renewing the lease of %s failed: %s", self.claim.task_id, err)
            return
        if renewed is None:
            self.lost = True
            w.stats.leases_lost += 1
            log.warning("lease of task %s was taken over", self.claim.task_id)
            return
        self.claim = renewed

    @contextlib.contextmanager
    def renewing_on_a_thread(self) -> Iterator[None]:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(RENEW_TICK):
                try:
                    self.tick()
                except _HandedBack:
                    # The main thread is inside the user's function: end the process here.
                    logging.shutdown()
                    os._exit(0)

        thread = threading.Thread(target=loop, name="starburst-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def main(environ: Mapping[str, str] | None = None) -> int:
    """Entry point of ``python -m starburst_executor.worker``."""
    environ = os.environ if environ is None else environ
    try:
        logging.basicConfig(
            level=WorkerEnv.read(environ).log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        worker = Worker(environ)
        worker.install_signal_handlers()
    except Exception:
        traceback.print_exc()  # to the worker's log, which WorkersCannotStart quotes
        return EXIT_CANNOT_START
    return worker.run()
