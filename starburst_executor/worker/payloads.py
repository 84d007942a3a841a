"""Where a worker finds each task's payload: its own task object or a batch's.

The client writes calls that queued together as one batch object
(``tasks/t<first>.<count>``, see ``_core/layout.py``). The worker learns which object
holds which ids from the listings it polls anyway; a task it never listed (a handed-back
or expired one far behind its view) is found with one LIST, since a batch never holds
more than ``SUBMIT_WINDOW`` ids. A batch is read once and its payloads kept while this
worker may still claim one of them (the last few objects read), so the workers of a
shard each read a batch once, not once per task.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import OrderedDict

from .._core.codec import decode_batch
from .._core.layout import SessionLayout, task_id, task_index
from .._core.submits import SUBMIT_WINDOW
from ..errors import ObjectNotFound
from ..store.base import Listing, ObjectStore

KEPT_OBJECTS = 8  # task objects whose payloads stay in memory (each at most ~1 MiB)


class TaskPayloads:
    """Task id -> task object, learned from listings; payloads read once per object."""

    def __init__(self, store: ObjectStore, layout: SessionLayout) -> None:
        self._store = store
        self._layout = layout
        self._firsts: list[int] = []  # sorted first indexes of the objects known
        # first index -> how many ids each object starting there holds (two clients that
        # submitted at once may have written two)
        self._counts: dict[int, list[int]] = {}
        self._kept: OrderedDict[str, list[bytes]] = OrderedDict()  # key -> payloads
        self._reading: dict[str, asyncio.Future[list[bytes]]] = {}  # batches being read

    def learn(self, listing: Listing) -> None:
        """Take in the task objects a listing of ``tasks/`` shows."""
        for o in listing.objects:
            found = self._layout.task_range(o.key)
            if found is None:
                continue
            first, count = found
            counts = self._counts.get(first)
            if counts is None:
                self._counts[first] = [count]
                bisect.insort(self._firsts, first)
            elif count not in counts:
                counts.append(count)

    def forget_below(self, index: int) -> None:
        """Drop what is known of objects wholly below task ``index`` (claimed: a task
        that comes back from there is found with a LIST). An object that starts
        ``SUBMIT_WINDOW`` below it ends below it too."""
        cut = bisect.bisect_left(self._firsts, index - SUBMIT_WINDOW)
        for first in self._firsts[:cut]:
            del self._counts[first]
        del self._firsts[:cut]

    def known_key(self, tid: str) -> str | None:
        """The key of the object holding ``tid``, if a listing showed it."""
        index = task_index(tid)
        at = bisect.bisect_right(self._firsts, index)
        # An object holds at most SUBMIT_WINDOW ids, so only those starting that close
        # below can hold it (the nearest need not: another client's may sit in between).
        while at and self._firsts[at - 1] > index - SUBMIT_WINDOW:
            first = self._firsts[at - 1]
            for count in self._counts[first]:
                if index < first + count:
                    return self._layout.batch(task_id(first), count)
            at -= 1
        return None

    async def key_of(self, tid: str) -> str | None:
        """The key of the object holding ``tid`` (one LIST when no listing showed it),
        None when there is none."""
        key = self.known_key(tid)
        if key is not None:
            return key
        index = task_index(tid)
        back = index - SUBMIT_WINDOW
        listing = await self._store.list_objects(
            self._layout.dir("tasks"),
            start_after=self._layout.after("tasks", task_id(back)) if back >= 0 else None,
            end_before=self._layout.after("tasks", tid),
        )
        self.learn(listing)
        return self.known_key(tid)

    async def get(self, tid: str) -> tuple[str, bytes]:
        """The key of the object holding ``tid`` and the task's payload."""
        key = await self.key_of(tid)
        if key is None:
            raise ObjectNotFound(
                f"task {tid} of session {self._layout.session_id} has no task object "
                f"under {self._layout.dir('tasks')!r}: it was deleted, or never stored"
            )
        first, count = self._layout.task_range(key) or (task_index(tid), 1)
        payloads = self._kept.get(key)
        if payloads is not None:
            self._kept.move_to_end(key)
        elif count == 1:  # a lone task's payload is read once: nothing to keep
            payloads = [(await self._store.get(key)).body]
        else:
            # Claims made together read their batch together: one GET for all of them.
            reading = self._reading.get(key)
            if reading is None:
                reading = asyncio.ensure_future(self._read_batch(key, count))
                self._reading[key] = reading
            payloads = await asyncio.shield(reading)
        return key, payloads[task_index(tid) - first]

    async def _read_batch(self, key: str, count: int) -> list[bytes]:
        try:
            body = (await self._store.get(key)).body
            payloads = decode_batch(body, count, key=key)
        finally:
            del self._reading[key]
        self._kept[key] = payloads
        while len(self._kept) > KEPT_OBJECTS:
            self._kept.popitem(last=False)
        return payloads
