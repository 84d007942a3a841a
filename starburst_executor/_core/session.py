"""Reading and writing one session's objects: manifest, tasks, outcomes, markers.

Shared by the executors, the workers and the CLI. Every count comes from
listings, so ``status()`` is right from any interpreter at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from ..errors import (
    ObjectNotFound,
    PreconditionFailed,
    SessionNotFound,
    StarburstError,
    SubmitConflict,
)
from ..store.base import Listing, ObjectStore
from . import claims
from .codec import Outcome, encode_batch
from .layout import MAX_TASKS, SessionLayout, check_session_id, task_id, task_index
from .manifest import Manifest
from .writes import conditional_put

PAGE_KEYS = 1000  # S3 answers at most this many keys per LIST
RANGES_MAX = 32  # a large folder is listed in at most this many id ranges at once


@dataclass(frozen=True)
class SessionStatus:
    """Counts of a session's tasks by state, from S3 listings."""

    session_id: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    reexecuted: int = 0
    last_activity: datetime | None = None

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled

    @property
    def progress(self) -> float:
        """Finished fraction, 0.0 to 1.0 (1.0 for an empty session)."""
        return self.finished / self.total if self.total else 1.0

    def to_json(self) -> dict[str, object]:
        return {
            "session_id": self.session_id,
            "total": self.total,
            "pending": self.pending,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "reexecuted": self.reexecuted,
            "progress": round(self.progress, 6),
            "last_activity": self.last_activity.isoformat() if self.last_activity else None,
        }

    def __str__(self) -> str:
        return (
            f"{self.session_id}: {self.total} tasks, {self.pending} pending, "
            f"{self.running} running, {self.completed} completed, {self.failed} failed, "
            f"{self.cancelled} cancelled ({self.progress:.1%})"
        )


@dataclass(frozen=True)
class Openness:
    """Whether a session may still run work, read from S3 and the server's clock."""

    manifest: Manifest
    stopped: bool
    server_time: datetime

    @property
    def expired(self) -> bool:
        return self.server_time.timestamp() >= self.manifest.deadline


class SessionStore:
    """One session's objects in an ``ObjectStore``."""

    def __init__(self, store: ObjectStore, prefix: str, session_id: str) -> None:
        self.store = store
        self.layout = SessionLayout(prefix, check_session_id(session_id))
        self.session_id = session_id
        self.page_keys = PAGE_KEYS  # smaller in tests, to list many pages of few tasks

    async def create(self, manifest: Manifest) -> None:
        body = manifest.to_json()
        if (
            await conditional_put(self.store, self.layout.manifest, body, if_none_match=True)
            is None
        ):
            raise StarburstError(
                f"session {self.session_id} already exists; create a new executor "
                "or attach to it with DetachedExecutor.attach"
            ) from None

    async def load(self) -> tuple[Manifest, str]:
        """The manifest and its ETag; ``SessionNotFound`` when there is none."""
        try:
            blob = await self.store.get(self.layout.manifest)
        except ObjectNotFound:
            raise SessionNotFound(
                f"session {self.session_id} not found under "
                f"{self.layout.root!r}; check the id (`starburst sessions` lists them), "
                "the endpoint, bucket and prefix, or it may have been cleaned up"
            ) from None
        return Manifest.from_json(blob.body, key=self.layout.manifest), blob.etag

    async def put_tasks(self, first: str, payloads: list[bytes]) -> None:
        """Store the calls from task ``first`` on as one task object, create-only."""
        key = self.layout.batch(first, len(payloads))
        body = payloads[0] if len(payloads) == 1 else encode_batch(payloads)
        if await conditional_put(self.store, key, body, if_none_match=True) is None:
            what = (
                f"task {first} of session {self.session_id} already exists"
                if len(payloads) == 1
                else f"tasks {first} to {self.layout.task_ids_of(key)[-1]} of session "
                f"{self.session_id} already exist"
            )
            calls = "this call was" if len(payloads) == 1 else "these calls were"
            raise SubmitConflict(
                f"{what}: another client is submitting to this session and {calls} not "
                "stored; submit from one client at a time (attach again to see the other "
                "client's tasks)"
            ) from None

    async def put_blob(self, digest: str, data: bytes) -> None:
        """Store a content-addressed piece of payloads (unconditional: same name, same
        bytes, so a second writer changes nothing)."""
        await self.store.put(self.layout.blob(digest), data)

    async def task_ids(self) -> list[str]:
        (listing,) = await self.list_kinds(("tasks",))
        return self.listed_tasks(listing)

    def listed_tasks(self, listing: Listing) -> list[str]:
        """The task ids a listing of ``tasks/`` shows, in order (batches expanded; an id
        two objects claim, from two clients, once)."""
        return sorted({t for o in listing.objects for t in self.layout.task_ids_of(o.key)})

    async def list_kinds(self, kinds: tuple[str, ...]) -> list[Listing]:
        """Every key of each kind of ``kinds`` (folders keyed by task id).

        One page of each folder first, all at once. When ``tasks/`` fits in its page
        and its ids stay below the page's size, so does every other folder (each holds
        at most one key per task), and that is the answer: one LIST per folder. A
        larger session would take one page after another per folder (100 of them for
        100,000 tasks, each a round trip), so its ids are bounded (by the page's
        highest id, or by one round of 1-key probes when ``tasks/`` overflows its page)
        and every folder is listed in up to ``RANGES_MAX`` id ranges at once; the last
        range is open, so a task written meanwhile is not missed.
        """
        asked = ("tasks", *(k for k in kinds if k != "tasks"))
        firsts = await asyncio.gather(
            *(self.store.list_objects(self.layout.dir(k), max_keys=self.page_keys) for k in asked)
        )
        first = dict(zip(asked, firsts, strict=True))
        tasks = first["tasks"].objects
        if len(tasks) >= self.page_keys:
            bounds = self._ranges(await self._id_bound())
            return list(await asyncio.gather(*(self._list_ranges(k, bounds) for k in kinds)))
        # Every task object is in the page, so the highest task id is known; it, not the
        # count of keys, bounds the other folders (a batch object holds many tasks).
        end = max((sum(r) for o in tasks if (r := self.layout.task_range(o.key))), default=0)
        if end <= self.page_keys:
            full = [k for k in kinds if len(first[k].objects) >= self.page_keys]
            rests = await asyncio.gather(
                *(
                    self.store.list_objects(
                        self.layout.dir(k), start_after=first[k].objects[-1].key
                    )
                    for k in full
                )
            )
            for k, rest in zip(full, rests, strict=True):
                first[k] = Listing(first[k].objects + rest.objects, first[k].server_time)
            return [first[k] for k in kinds]
        bounds = self._ranges(end)
        return list(await asyncio.gather(*(self._list_ranges(k, bounds) for k in kinds)))

    async def _id_bound(self) -> int:
        """A task index above every task id (at most twice the highest), from one round
        of 1-key LISTs that each ask whether an id at or above a power of two exists."""
        tasks_dir = self.layout.dir("tasks")
        powers = [1 << k for k in range(self.page_keys.bit_length(), MAX_TASKS.bit_length())]
        probes = await asyncio.gather(
            *(
                self.store.list_objects(
                    tasks_dir, start_after=self.layout.after("tasks", task_id(p - 1)), max_keys=1
                )
                for p in powers
            )
        )
        bound = 1 << self.page_keys.bit_length()
        for p, probe in zip(powers, probes, strict=True):
            if any(self.layout.task_range(o.key) for o in probe.objects):
                bound = 2 * p
        return min(bound, MAX_TASKS)

    def _ranges(self, bound: int) -> list[tuple[int, int | None]]:
        """``[0, bound)`` cut into ranges of at least a page; the last one is open."""
        count = max(1, min(RANGES_MAX, -(-bound // self.page_keys)))
        cuts = [bound * i // count for i in range(count)]
        return [(lo, hi) for lo, hi in zip(cuts, [*cuts[1:], None], strict=True)]

    async def _list_ranges(self, kind: str, bounds: list[tuple[int, int | None]]) -> Listing:
        async def one(lo: int, hi: int | None) -> Listing:
            return await self.store.list_objects(
                self.layout.dir(kind),
                start_after=self.layout.after(kind, task_id(lo - 1)) if lo else None,
                end_before=self.layout.key(kind, task_id(hi)) if hi is not None else None,
            )

        parts = await asyncio.gather(*(one(lo, hi) for lo, hi in bounds))
        return Listing([o for part in parts for o in part.objects], parts[0].server_time)

    async def write_outcome(self, outcome: Outcome) -> bool:
        """Write the task's one outcome; False when another outcome was there first."""
        key = self.layout.key("results", outcome.task_id)
        if await conditional_put(self.store, key, outcome.encode(), if_none_match=True) is None:
            return False
        await self.write_marker(outcome)
        return True

    async def write_marker(self, outcome: Outcome) -> None:
        """The index marker of a failed or cancelled outcome (idempotent)."""
        kind = {"error": "failed", "cancelled": "cancelled"}.get(outcome.kind)
        if kind is None:
            return
        with contextlib.suppress(PreconditionFailed):
            await self.store.put(self.layout.key(kind, outcome.task_id), b"", if_none_match=True)

    async def mark_reexecuted(self, tid: str) -> None:
        """Record that a worker took the task over after its lease expired."""
        with contextlib.suppress(PreconditionFailed):
            await self.store.put(self.layout.key("reexecuted", tid), b"", if_none_match=True)

    async def read_outcome(self, tid: str) -> Outcome:
        key = self.layout.key("results", tid)
        blob = await self.store.get(key)
        return Outcome.decode(blob.body, key=key)

    async def cancel(self, tid: str, by: str = "client") -> bool:
        """Cancel a task no worker has claimed, for every worker. False if it was claimed."""
        claim = await claims.try_claim(self.store, self.layout, tid, by, state="cancelled")
        if claim is None:
            existing = await claims.read_claim(self.store, self.layout, tid)
            if existing is None or existing.state != "cancelled":
                return False
        now = time.time()
        await self.write_outcome(Outcome(tid, "cancelled", started=now, finished=now))
        return True

    async def cancel_many(self, tids: list[str], at_once: int = 64) -> list[str]:
        """Cancel unclaimed tasks with ``at_once`` requests in flight, in the order given
        (one round trip each, in turn, would let workers claim on while the cancels
        crawl). Returns those cancelled: not a claimed task, nor one whose cancel met a
        store error."""
        gate = asyncio.Semaphore(at_once)

        async def one(tid: str) -> str | None:
            async with gate:
                try:
                    return tid if await self.cancel(tid) else None
                except StarburstError:
                    return None

        done = await asyncio.gather(*(one(t) for t in tids))
        return [t for t in done if t is not None]

    async def status(self) -> SessionStatus:
        kinds = ("tasks", "claims", "results", "failed", "cancelled", "reexecuted")
        listings = await self.list_kinds(kinds)
        ids = [
            {t for o in listing.objects if (t := self.layout.tid_of(o.key))}
            for listing in listings[1:]
        ]
        tasks = set(self.listed_tasks(listings[0]))
        claimed, results, failed, cancelled, reexecuted = ids
        finished = results & tasks
        running = (claimed & tasks) - finished
        stamps = [o.last_modified for listing in listings for o in listing.objects]
        return SessionStatus(
            session_id=self.session_id,
            total=len(tasks),
            pending=len(tasks - claimed - finished),
            running=len(running),
            completed=len(finished - failed - cancelled),
            failed=len(finished & failed),
            cancelled=len(finished & cancelled),
            reexecuted=len(reexecuted & tasks),
            last_activity=max(stamps) if stamps else None,
        )

    async def busy_workers(self, first: str | None = None, at_once: int = 32) -> set[str]:
        """The ids of the workers running a task now (a claim and no outcome): what a
        scale-down spares. Lists the claims and results from task ``first`` on (every
        task before it has an outcome), then reads each running task's claim."""
        after = None if first is None or task_index(first) == 0 else task_id(task_index(first) - 1)
        claimed, results = await asyncio.gather(
            *(
                self.store.list_objects(self.layout.dir(k), start_after=self.layout.after(k, after))
                for k in ("claims", "results")
            )
        )
        done = {t for o in results.objects if (t := self.layout.tid_of(o.key))}
        running = [t for o in claimed.objects if (t := self.layout.tid_of(o.key)) and t not in done]
        gate = asyncio.Semaphore(at_once)

        async def holder(tid: str) -> str | None:
            async with gate:
                try:
                    claim = await claims.read_claim(self.store, self.layout, tid)
                except (StarburstError, ValueError):  # gone, or unreadable: not spared
                    return None
                return claim.worker_id if claim and claim.state == "running" else None

        return {w for w in await asyncio.gather(*(holder(t) for t in running)) if w}

    async def extend(self, seconds: float) -> Manifest:
        """Move the deadline ``seconds`` later than the current one (never earlier)."""
        if not seconds > 0:
            raise ValueError(f"extend() needs a positive number of seconds, got {seconds}")
        while True:
            manifest, etag = await self.load()
            new = manifest.extended(seconds)
            # The nonce makes our body unique, so a retried write is recognised as ours.
            body = new.to_json(nonce=secrets.token_hex(8))
            if await conditional_put(self.store, self.layout.manifest, body, if_match=etag):
                return new
            # another extend won; apply ours on top of it

    async def server_time(self) -> datetime:
        """The store's clock (one LIST of a single key): deadlines are judged on it."""
        listing = await self.store.list_objects(self.layout.stop_marker)
        return listing.server_time

    async def openness(self) -> Openness:
        """The manifest (``SessionNotFound`` when deleted), the stop marker and the
        server's clock, read together: two requests."""
        (manifest, _), listing = await asyncio.gather(
            self.load(), self.store.list_objects(self.layout.stop_marker)
        )
        stopped = any(o.key == self.layout.stop_marker for o in listing.objects)
        return Openness(manifest, stopped, listing.server_time)

    async def leased(self, lease_seconds: float) -> set[str]:
        """Tasks whose claim is still within its lease (server clock), outcome or not."""
        listing = await self.store.list_objects(self.layout.dir("claims"))
        return {
            t
            for o in listing.objects
            if (t := self.layout.tid_of(o.key))
            and not claims.lease_expired(o, listing.server_time, lease_seconds)
        }

    async def request_stop(self) -> None:
        """Tell every worker of the session to exit (they see it in their next listing)."""
        with contextlib.suppress(PreconditionFailed):
            await self.store.put(self.layout.stop_marker, b"", if_none_match=True)

    async def register_workers(self, entries: list[dict[str, object]]) -> None:
        """Record launched workers, create-only: a worker that started first (an ECS
        task can, while later batches launch) keeps its own entry, whose start time and
        task are the session's record of it."""

        async def create(entry: dict[str, object]) -> None:
            key = self.layout.worker(str(entry["worker_id"]))
            with contextlib.suppress(PreconditionFailed):
                await self.store.put(key, json.dumps(entry).encode(), if_none_match=True)

        await asyncio.gather(*(create(e) for e in entries))

    async def workers(self) -> list[dict[str, object]]:
        listing = await self.store.list_objects(self.layout.dir("workers"))
        blobs = await asyncio.gather(*(self.store.get(o.key) for o in listing.objects))
        out = []
        for blob in blobs:
            try:
                out.append(json.loads(blob.body))
            except ValueError:
                continue
        return out

    async def delete(self) -> int:
        """Delete every object of this session, and nothing else."""
        return await self.store.delete_prefix(self.layout.root)


async def list_session_ids(store: ObjectStore, prefix: str) -> list[str]:
    prefixes = await store.list_prefixes(SessionLayout.sessions_root(prefix))
    out: list[str] = []
    for p in prefixes:
        sid = p.rstrip("/").rsplit("/", 1)[-1]
        try:
            out.append(check_session_id(sid))
        except ValueError:
            continue
    return out
