"""Holes in the session protocol that real events fall into (issue 10).

Each test names the item it covers; each failed on the protocol before the fix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tasks
from helpers import parent_of, wait_until

from starburst_executor import DetachedExecutor
from starburst_executor._core.layout import SessionLayout
from starburst_executor.errors import (
    CorruptObject,
    RemoteError,
    SessionExpired,
    SessionNotFound,
    SubmitConflict,
)

TIMEOUT = 180


def session_objects(ex: DetachedExecutor, kind: str) -> list[str]:
    loop, store = ex._runtime.loop, ex._runtime.store
    listing = loop.run(store.list_objects(ex._session.layout.dir(kind)))
    return [o.key for o in listing.objects]


def remove(sid: str) -> None:
    """Stop and delete a session, if a test has not already."""
    with contextlib.suppress(SessionNotFound):
        DetachedExecutor.attach(sid, launch_workers=False).cleanup(force=True)


# -- 1. a handed-back task is claimable by every live worker ----------------------------


def test_1_handed_back_task_is_taken_by_the_live_idle_worker(prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_TERM_GRACE", "1")  # the 120 s Spot notice, shortened
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=2, min_workers=2, lease_seconds=600)
    sid = ex.session_id
    try:
        future = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the task to start")
        first = parent_of(int(started.read_text()))
        wait_until(lambda: ex._runtime.launcher.live_count(sid) == 2, "two live workers")
        registry = {int(str(w["pid"])) for w in ex._runtime.loop.run(ex._session.workers())}
        others = registry - {first}
        # No client launches a replacement from here on: only the idle worker can help.
        ex.detach()
        started.unlink()
        os.kill(first, signal.SIGTERM)
        took = wait_until(started.exists, "the idle worker to take the handed-back task", 90)
        second = parent_of(int(started.read_text()))
        assert second != first and second in others
        print(f"handed-back task restarted after {took:.1f}s")
        release.write_text("go")
        again = DetachedExecutor.attach(sid, launch_workers=False)
        assert again.futures[0].result(timeout=TIMEOUT) == int(started.read_text())
        assert not any("~released" in key for key in session_objects(again, "tasks"))
        assert future.task_id == again.futures[0].task_id
    finally:
        release.write_text("go")
        remove(sid)


def test_1_a_result_deleted_behind_the_session_is_run_again_by_a_live_worker(
    prefix, tmp_path, store
):
    marker = tmp_path / "ran"
    ex = DetachedExecutor(max_workers=1, lease_seconds=2)
    sid = ex.session_id
    try:
        first = ex.submit(tasks.record_and_return, str(marker), "v")
        assert first.result(timeout=TIMEOUT) == "v"
        # Other tasks finish after it, so the worker's view has moved past it.
        assert [f.result(timeout=TIMEOUT) for f in [ex.submit(pow, i, 2) for i in range(5)]]
        ex.detach()
        store.run(store.delete(SessionLayout(prefix, sid).key("results", "t000000000")))
        revived = DetachedExecutor.attach(sid)  # a client waiting for that task again
        assert revived.futures[0].result(timeout=TIMEOUT) == "v"
        assert len(marker.read_text().splitlines()) == 2
        assert revived.futures[0].worker_id == first.worker_id  # the same, live worker
        revived.cleanup(force=True)
    finally:
        remove(sid)


# -- 2. nothing a task raises ends the worker ---------------------------------------------


def test_2_hostile_exceptions_reach_the_future_and_the_worker_goes_on(prefix):
    ex = DetachedExecutor(max_workers=1, lease_seconds=60)
    try:
        bad_str = ex.submit(tasks.raise_str_raises)
        exits = ex.submit(tasks.raise_reduce_exits)
        after = ex.submit(tasks.worker_pid)
        with pytest.raises(tasks.StrRaises):
            bad_str.result(timeout=TIMEOUT)
        # Rebuilt from its class and state, or, failing that, a RemoteError naming it.
        with pytest.raises((tasks.ReduceExits, RemoteError)) as info:
            exits.result(timeout=TIMEOUT)
        assert "ReduceExits" in repr(info.value) or "bye" in info.value.args
        after.result(timeout=TIMEOUT)
        assert bad_str.worker_id == exits.worker_id == after.worker_id  # one worker
        assert bad_str.attempt == exits.attempt == 1
    finally:
        ex.cleanup(force=True)


# -- 3. deadlines and stops: no claim abandoned, no launch storm, typed endings ------------


@pytest.mark.long
def test_3_deadline_with_tasks_pending_ends_them_without_a_storm(prefix, tmp_path):
    release = tmp_path / "release"
    # Both workers must claim before the deadline (none claims after it): beside two
    # suites (a load of 20 on 2 cores) that took more than 20 s.
    ex = DetachedExecutor(max_workers=2, absolute_timeout=60, lease_seconds=4)
    sid = ex.session_id
    try:
        busy = [ex.submit(tasks.wait_for_file, str(release), 300) for _ in range(2)]
        wait_until(lambda: ex.status().running == 2, "both workers busy", 50)
        pending = [ex.submit(pow, i, 2) for i in range(4)]
        deadline = ex.deadline.timestamp()
        wait_until(lambda: time.time() > deadline + 1, "the deadline")
        release.write_text("go")
        assert [f.result(timeout=TIMEOUT) for f in busy] == ["released"] * 2
        for f in pending:
            with pytest.raises(SessionExpired, match=sid):
                f.result(timeout=TIMEOUT)
        registry = ex._runtime.loop.run(ex._session.workers())
        assert len(registry) == 2, registry  # no worker launched after the deadline
        status = ex.status()
        assert status.pending == 4 and status.running == 0  # nothing claimed and abandoned
        ex.detach()
        # Extended, the tasks that never ran run once each: no inflated attempts.
        again = DetachedExecutor.attach(sid)
        again.extend(600)
        again.detach()
        again = DetachedExecutor.attach(sid)
        assert [f.result(timeout=TIMEOUT) for f in again.futures[2:]] == [0, 1, 4, 9]
        assert [f.attempt for f in again.futures[2:]] == [1, 1, 1, 1]
        again.cleanup(force=True)
    finally:
        release.write_text("go")
        remove(sid)


def busy_worker_and_queue(
    ex: DetachedExecutor, release: Path
) -> tuple[concurrent.futures.Future[object], list[concurrent.futures.Future[object]]]:
    """The one worker held on a task until ``release`` exists, and three calls queued."""
    busy = ex.submit(tasks.wait_for_file, str(release), 300)
    wait_until(lambda: ex.status().running == 1, "the worker busy")
    return busy, [ex.submit(pow, i, 2) for i in range(3)]


def test_3_cleanup_by_another_client_cancels_the_waiting_clients_futures(prefix, tmp_path):
    release = tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=4)
    sid = ex.session_id
    try:
        busy, queued = busy_worker_and_queue(ex, release)
        other = DetachedExecutor.attach(sid, launch_workers=False)
        other.cleanup()  # stops this session's workers
        _, not_done = concurrent.futures.wait(queued, timeout=TIMEOUT)
        assert not not_done and all(f.cancelled() for f in queued)
        assert busy.done()
        registry = ex._runtime.loop.run(ex._session.workers())
        assert len(registry) == 1, registry  # no worker launched into the stopped session
    finally:
        release.write_text("go")
        remove(sid)


def test_3_client_clock_hours_off_moves_no_deadline(prefix, monkeypatch):
    real = time.time
    for skew in (-3 * 3600.0, 3 * 3600.0):
        monkeypatch.setattr(time, "time", lambda s=skew: real() + s)
        ex = DetachedExecutor(max_workers=1, absolute_timeout=3600)
        try:
            assert abs(ex.deadline.timestamp() - (real() + 3600)) < 120
            assert ex.submit(pow, 3, 2).result(timeout=TIMEOUT) == 9
        finally:
            ex.cleanup(force=True)


# -- 4. a task holding the GIL keeps its lease ----------------------------------------------


def test_4_task_holding_the_gil_past_the_lease_runs_once(prefix, tmp_path):
    marker = tmp_path / "ran"
    # A second, idle worker would take the lease over the moment it expired.
    ex = DetachedExecutor(max_workers=2, min_workers=2, lease_seconds=2, max_retries=0)
    try:
        future = ex.submit(tasks.hold_the_gil, 8, str(marker))
        assert future.result(timeout=TIMEOUT) == "held"
        assert future.attempt == 1
        assert len(marker.read_text().splitlines()) == 1
        assert ex.status().reexecuted == 0
    finally:
        ex.cleanup(force=True)


# -- 5. identical submits from two clients never merge -------------------------------------


def test_5_identical_submits_from_two_clients_never_merge(prefix):
    a = DetachedExecutor(max_workers=1)
    sid = a.session_id
    b = DetachedExecutor.attach(sid, launch_workers=False)
    try:
        returned, conflicts = [], 0
        for _ in range(5):
            for client in (a, b):
                future = client.submit(pow, 7, 2)
                try:
                    client.flush()  # submits are pipelined: the conflict surfaces here
                except SubmitConflict as err:
                    assert sid in str(err)
                    conflicts += 1
                    assert isinstance(future.exception(timeout=TIMEOUT), SubmitConflict)
                else:
                    returned.append(future)
        ids = [f.task_id for f in returned]
        assert len(set(ids)) == len(ids)  # every returned submit is its own task
        assert conflicts == 10 - len(returned) and conflicts > 0
        assert [f.result(timeout=TIMEOUT) for f in returned] == [49] * len(returned)
        assert a.status().total == len(set(ids))
    finally:
        b.detach()
        a.cleanup(force=True)


# -- the paragraph: killed clients, junk keys, a deleted manifest ----------------------------


def test_client_killed_mid_map_and_mid_result_read_then_attach_resolves_all(prefix):
    script = textwrap.dedent(
        """
        import concurrent.futures, sys
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor(max_workers=2)
        print(ex.session_id, flush=True)
        if sys.argv[1] == "map":
            for value in ex.map(pow, range(400), [2] * 400, chunksize=1):
                print(value, flush=True)
        else:
            futures = [ex.submit(pow, i, 2) for i in range(40)]
            print("submitted", flush=True)
            for f in concurrent.futures.as_completed(futures):
                print(f.result(), flush=True)
        """
    )
    for mode in ("map", "results"):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, mode],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        assert proc.stdout is not None
        sid = proc.stdout.readline().strip()
        for _ in range(3):
            proc.stdout.readline()  # results are being read: kill it in the middle
        proc.kill()
        proc.wait()
        ex = DetachedExecutor.attach(sid)
        try:
            count = len(ex.futures)
            assert count >= 3
            values = [f.result(timeout=TIMEOUT) for f in ex.futures]
            # Submits are pipelined: calls in flight at the kill may be missing (gaps).
            expected = [int(f.task_id[1:]) ** 2 for f in ex.futures]
            # map with chunksize=1: one task per item, returning its one-item chunk
            assert values == ([[v] for v in expected] if mode == "map" else expected)
        finally:
            ex.cleanup(force=True)


def test_junk_keys_under_tasks_give_typed_errors_naming_the_key(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    try:
        assert ex.submit(pow, 2, 2).result(timeout=TIMEOUT) == 4
        ex.detach()
        layout = SessionLayout(prefix, sid)
        junk = DetachedExecutor.attach(sid, launch_workers=False)
        store, loop = junk._runtime.store, junk._runtime.loop
        root = layout.dir("tasks")
        for key, body in (
            (root + "notes.txt", b"hello"),
            (root + "t00000000x", b"junk"),
            (root + "sub/t000000001", b"junk"),
            (layout.key("tasks", "t000000001"), b"not a payload"),
        ):
            loop.run(store.put(key, body))
        junk.detach()
        ex = DetachedExecutor.attach(sid)
        assert [f.task_id for f in ex.futures] == ["t000000000", "t000000001"]
        with pytest.raises(CorruptObject, match="tasks/t000000001"):
            ex.futures[1].result(timeout=TIMEOUT)
        assert ex.futures[0].result(timeout=TIMEOUT) == 4
        assert ex.submit(pow, 3, 2).result(timeout=TIMEOUT) == 9
    finally:
        ex.cleanup(force=True)


def test_deleted_manifest_ends_waiting_futures_without_a_launch_storm(prefix, tmp_path):
    release = tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=4)
    sid = ex.session_id
    try:
        busy, queued = busy_worker_and_queue(ex, release)
        registry = ex._runtime.loop.run(ex._session.workers())
        ex._runtime.loop.run(ex._runtime.store.delete(ex._session.layout.manifest))
        for entry in registry:
            os.killpg(int(str(entry["pid"])), signal.SIGKILL)
        for f in [busy, *queued]:
            with pytest.raises(SessionNotFound, match=sid):
                f.result(timeout=TIMEOUT)
        assert len(ex._runtime.loop.run(ex._session.workers())) == 1
        with pytest.raises(SessionNotFound, match=sid):
            DetachedExecutor.attach(sid)
    finally:
        release.write_text("go")
        ex.cleanup(force=True)


def test_a_large_sessions_folders_are_listed_in_id_ranges_at_once(store, prefix):
    """``status()`` and attach list a session larger than one page in id ranges at
    once. Pages of 10 keys stand in for S3's 1,000: 300 ids with gaps, markers and
    claims; every key is found once, and the ranged path ran (probes and ranges)."""
    from starburst_executor._core.layout import new_session_id, task_id
    from starburst_executor._core.session import SessionStore

    session = SessionStore(store, prefix, new_session_id())
    session.page_keys = 10
    layout = session.layout
    ids = [task_id(i) for i in range(300) if i % 7 != 3]
    claimed = ids[:150]
    done = ids[:100]

    async def fill() -> None:
        gate = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with gate:
                await store.put(key, b"")

        keys = [layout.key("tasks", t) for t in ids]
        keys += [layout.key("claims", t) for t in claimed]
        keys += [layout.key("results", t) for t in done]
        keys += [layout.key("failed", t) for t in done[:5]]
        keys += [layout.stop_marker, layout.dir("tasks") + "~released/t000000001.abc"]
        await asyncio.gather(*(put(k) for k in keys))

    store.run(fill())
    before = store.counter.by_operation.get("ListObjectsV2", 0)
    assert store.run(session.task_ids()) == ids
    lists = store.counter.by_operation["ListObjectsV2"] - before
    assert lists > 10  # one page, the probes, then ranges: not one LIST
    status = store.run(session.status())
    assert (status.total, status.pending, status.running) == (len(ids), len(ids) - 150, 50)
    assert (status.completed, status.failed, status.cancelled) == (95, 5, 0)
    # A session that fits in one page is listed whole: one LIST per folder, at once.
    session.page_keys = 1000
    before = store.counter.by_operation["ListObjectsV2"]
    assert store.run(session.task_ids()) == ids
    assert store.counter.by_operation["ListObjectsV2"] - before == 1
    assert store.run(session.status()) == status
    assert store.counter.by_operation["ListObjectsV2"] - before == 1 + 6
