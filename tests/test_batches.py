"""Calls that queue while task writes are in flight are stored as one batch object.

Against the real local S3 server: the batch keys, the window that bounds how far task
objects appear out of order, the workers reading a batch once, attach expanding
batches, and two clients whose batches overlap.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

import pytest
from helpers import wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor._core.codec import encode_call, payload_nonce
from starburst_executor._core.layout import SessionLayout, new_session_id, task_id
from starburst_executor._core.submits import SUBMIT_WINDOW
from starburst_executor.errors import CorruptObject, SubmitConflict
from starburst_executor.store.base import Listing, ObjectInfo
from starburst_executor.worker.payloads import TaskPayloads

TIMEOUT = 120


def task_objects(ex):
    """``(first index, count)`` of every task object of the session, in key order."""
    layout, loop = ex._session.layout, ex._runtime.loop
    listing = loop.run(ex._runtime.store.list_objects(layout.dir("tasks")))
    return [layout.task_range(o.key) for o in listing.objects]


def test_calls_queued_during_a_write_go_out_as_one_batch_within_the_window(prefix):
    ex = DetachedExecutor(max_workers=2)
    session = ex._session
    real = session.put_tasks
    writes: list[tuple[int, int]] = []
    held = threading.Event()

    async def recorded(first, payloads):
        writes.append((int(first[1:]), len(payloads)))
        if len(writes) <= 4:  # every object in flight waits until 300 calls queued
            await asyncio.get_running_loop().run_in_executor(None, held.wait, TIMEOUT)
        await real(first, payloads)

    ex._pipeline._write_tasks = recorded
    try:
        futures = [ex.submit(pow, i, 2) for i in range(300)]
        held.set()
        ex.flush(timeout=TIMEOUT)
        # The first write left alone; calls queued behind the busy writes were batched.
        assert writes[0] == (0, 1)
        assert max(count for _, count in writes) > 1
        assert len(writes) < 300 // 8
        stored = sorted(r for r in task_objects(ex) if r is not None)
        assert stored == sorted(writes)
        ids = [i for first, count in stored for i in range(first, first + count)]
        assert ids == list(range(300))  # each id in exactly one object
        # The window: an object starts only when its last id is below the lowest first id
        # in flight plus SUBMIT_WINDOW, so no batch holds more than that many calls.
        assert all(count <= SUBMIT_WINDOW for _, count in writes)
        assert [f.result(timeout=TIMEOUT) for f in futures] == [i * i for i in range(300)]
        status = ex.status()
        assert (status.total, status.completed) == (300, 300)
        attached = DetachedExecutor.attach(ex.session_id, launch_workers=False)
        assert [f.task_id for f in attached.futures] == [task_id(i) for i in range(300)]
        assert attached.futures[299].result(timeout=TIMEOUT) == 299 * 299
        attached.detach()
    finally:
        ex.cleanup(force=True)


def test_a_per_call_executor_stores_each_call_alone(prefix):
    with StarburstExecutor(max_workers=2) as ex:
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        assert all(count == 1 for _, count in task_objects(ex))


def test_a_worker_finds_a_batched_task_it_never_listed_and_reads_each_batch_once(prefix):
    ex = DetachedExecutor(max_workers=1, min_workers=0)
    session, loop = ex._session, ex._runtime.loop
    try:
        calls = [encode_call(pow, (i, 2), {}) for i in range(10)]
        loop.run(session.put_tasks(task_id(0), calls[:3]))
        loop.run(session.put_tasks(task_id(3), calls[3:]))
        payloads = TaskPayloads(ex._runtime.store, session.layout)
        before = ex._runtime.store.counter.snapshot()
        assert payloads.known_key(task_id(5)) is None  # no listing seen yet
        key, payload = loop.run(payloads.get(task_id(5)))  # one LIST finds it, one GET
        assert key == session.layout.batch(task_id(3), 7)
        assert payload_nonce(payload) == payload_nonce(calls[5])
        for i in (3, 4, 9):  # the same batch: no request more
            assert loop.run(payloads.get(task_id(i)))[1] == calls[i]
        # The LIST (from 64 ids below, up to task 5) showed the first batch too.
        assert loop.run(payloads.get(task_id(1)))[1] == calls[1]
        used = ex._runtime.store.counter.snapshot()
        grown = {op: used.get(op, 0) - before.get(op, 0) for op in used}
        assert grown.get("GetObject") == 2 and grown.get("ListObjectsV2") == 1, grown
        assert loop.run(payloads.key_of(task_id(10))) is None
        payloads.forget_below(10 + SUBMIT_WINDOW)
        assert payloads.known_key(task_id(5)) is None
    finally:
        ex.cleanup(force=True)


def test_a_task_is_found_in_its_batch_past_another_clients_object_in_between():
    """Two clients submitting at once: ``t10.20`` and a lone ``t15``; tasks 16 to 29 are
    still in the first client's batch, not lost behind the nearer object."""
    layout = SessionLayout("p", new_session_id())
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    keys = [layout.batch(task_id(10), 20), layout.key("tasks", task_id(15))]
    payloads = TaskPayloads(None, layout)  # type: ignore[arg-type]  # no request is made
    payloads.learn(Listing([ObjectInfo(k, "e", now, 0) for k in sorted(keys)], now))
    assert payloads.known_key(task_id(15)) == keys[1]  # the nearest that holds it
    assert payloads.known_key(task_id(16)) == keys[0]
    assert payloads.known_key(task_id(29)) == keys[0]
    assert payloads.known_key(task_id(30)) is None
    assert payloads.known_key(task_id(9)) is None


def test_a_corrupted_batch_fails_each_of_its_tasks_naming_the_key(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid, layout = ex.session_id, ex._session.layout
    ex._runtime.loop.run(ex._runtime.store.put(layout.batch(task_id(0), 2), b"SBB1garbage"))
    ex.detach()
    attached = DetachedExecutor.attach(sid)
    try:
        assert [f.task_id for f in attached.futures] == [task_id(0), task_id(1)]
        for future in attached.futures:
            with pytest.raises(CorruptObject, match=f"{sid}/tasks/t000000000.2"):
                future.result(timeout=TIMEOUT)
        assert attached.status().failed == 2
    finally:
        attached.cleanup(force=True)


def test_a_future_never_takes_the_outcome_of_another_clients_overlapping_batch(prefix):
    """Two clients submitting at once can draw the same ids in batches that start at
    different ids (no key collides, so no 412): a worker runs one call per id, and the
    client whose call did not run gets SubmitConflict, never the other call's value."""
    a = DetachedExecutor(max_workers=1)
    b = DetachedExecutor.attach(a.session_id, launch_workers=False)
    try:
        theirs = [encode_call(pow, (10 + i, 2), {}) for i in range(3)]
        b._runtime.loop.run(b._session.put_tasks(task_id(0), theirs))  # ids 0 to 2
        a.scale(1)
        wait_until(lambda: a.status().completed == 3, "the other client's batch to run")
        ours = [a.submit(pow, i, 3) for i in range(2)]  # ids 0 and 1 again, stored alone
        a.flush(timeout=TIMEOUT)
        for future in ours:
            with pytest.raises(SubmitConflict, match=f"{future.task_id} of session {a.session_id}"):
                future.result(timeout=TIMEOUT)
        # A client that did not submit them (attach) sees the outcomes that ran.
        b.detach()
        seen = DetachedExecutor.attach(a.session_id, launch_workers=False)
        assert [f.result(timeout=TIMEOUT) for f in seen.futures] == [100, 121, 144]
        seen.detach()
    finally:
        a.cleanup(force=True)
