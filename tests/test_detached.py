"""DetachedExecutor on the embedded server with real worker processes."""

from __future__ import annotations

import concurrent.futures
import datetime
import os
from pathlib import Path

import pytest
import tasks
from helpers import wait_until

from starburst_executor import DetachedExecutor, list_sessions
from starburst_executor.errors import (
    InvalidSessionId,
    PicklingError,
    SessionNotFound,
    WorkerDied,
    WorkerLost,
    WorkersCannotStart,
)

TIMEOUT = 120


@pytest.fixture
def executor(prefix):  # type: ignore[no-untyped-def]
    ex = DetachedExecutor(max_workers=2)
    yield ex
    ex.cleanup(force=True)


def test_futures_lists_every_call_in_submission_order(executor):
    """The shared behaviour suite (tests/test_behaviour.py) covers as_completed, wait,
    callbacks, errors and output; here what only a session has."""
    futures = [executor.submit(tasks.square, i) for i in range(12)]
    assert [f.result(timeout=TIMEOUT) for f in futures] == [i * i for i in range(12)]
    assert [f.task_id for f in executor.futures] == [f.task_id for f in futures]


def test_lambdas_closures_and_map_with_chunks(executor):
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result(timeout=TIMEOUT) == 15
    out = list(executor.map(tasks.add, range(7), range(7), chunksize=3, timeout=TIMEOUT))
    assert out == [2 * i for i in range(7)]
    # 7 items in chunks of 3 -> 3 remote tasks (plus the lambda's)
    assert executor.status().total == 4
    with pytest.raises(ValueError):
        executor.map(tasks.add, [1], [1], chunksize=0)


def test_unpicklable_argument_fails_at_submit_and_names_it(executor):
    import threading

    with pytest.raises(PicklingError, match="argument 1"):
        executor.submit(tasks.add, 1, threading.Lock())
    assert executor.status().total == 0  # nothing half-written


def test_unpicklable_result_fails_the_task_with_a_typed_error(executor):
    future = executor.submit(tasks.unpicklable_result, 0)
    with pytest.raises(PicklingError, match="cannot be pickled"):
        future.result(timeout=TIMEOUT)


def test_status_and_collect_with_failures(executor):
    futures = [executor.submit(tasks.fail_if, i, 2) for i in range(5)]
    outcomes = executor.collect(wait=True, timeout=TIMEOUT)
    assert [o.task_id for o in outcomes] == [f.task_id for f in futures]
    assert [o.state for o in outcomes] == ["completed"] * 2 + ["failed"] + ["completed"] * 2
    assert isinstance(outcomes[2].error, tasks.CustomError)
    assert [o.value for o in outcomes if o.ok] == [0, 1, 3, 4]
    status = executor.status()
    assert (status.total, status.completed, status.failed, status.pending, status.running) == (
        5,
        4,
        1,
        0,
        0,
    )
    assert status.progress == 1.0


def test_cancel_an_unclaimed_task_cancels_it_for_every_worker(prefix, tmp_path):
    ex = DetachedExecutor(max_workers=1)
    started, release = tmp_path / "started", tmp_path / "release"
    side_effect = tmp_path / "ran"
    try:
        busy = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the only worker to be busy")
        queued = ex.submit(tasks.append_index, str(side_effect), 1)
        assert not busy.cancel()  # claimed: cannot cancel
        assert queued.cancel()
        assert queued.cancelled()
        release.write_text("go")
        busy.result(timeout=TIMEOUT)
        done, _ = concurrent.futures.wait([busy, queued], timeout=TIMEOUT)
        assert len(done) == 2
        status = ex.status()
        assert (status.completed, status.cancelled, status.pending) == (1, 1, 0)
        assert not side_effect.exists()
        # Another interpreter's view agrees: the cancel lives in S3.
        other = DetachedExecutor.attach(ex.session_id)
        states = [o.state for o in other.collect(wait=True, timeout=TIMEOUT)]
        assert states == ["completed", "cancelled"]
        other.detach()
    finally:
        release.write_text("go")
        ex.cleanup(force=True)


def test_extend_moves_the_deadline_later_only(executor):
    before = executor.deadline
    after = executor.extend(3600)
    assert (after - before).total_seconds() == pytest.approx(3600)
    with pytest.raises(ValueError):
        executor.extend(-10)
    assert DetachedExecutor.attach(executor.session_id).deadline == after


def test_worker_killed_mid_task_is_taken_over_after_the_lease(prefix, tmp_path):
    ex = DetachedExecutor(max_workers=1, lease_seconds=2, max_retries=2)
    try:
        future = ex.submit(tasks.kill_worker_first_time, str(tmp_path / "killed"))
        assert future.result(timeout=TIMEOUT) == "survived"
        assert future.attempt == 2
        assert (tmp_path / "killed").exists()
        assert ex.status().reexecuted == 1  # the takeover is reported
    finally:
        ex.cleanup(force=True)


def test_task_that_always_kills_its_worker_fails_with_worker_lost(prefix, tmp_path):
    ex = DetachedExecutor(max_workers=1, lease_seconds=2, max_retries=0)
    try:
        future = ex.submit(tasks.kill_worker)  # every attempt kills its worker
        with pytest.raises(WorkerLost, match=future.task_id):
            future.result(timeout=TIMEOUT)
        assert ex.status().failed == 1
    finally:
        ex.cleanup(force=True)


def test_workers_that_fail_at_start_fail_the_futures_with_their_log_instead_of_relaunching(
    prefix, monkeypatch
):
    """A worker that dies before serving (here a log level it cannot parse, from the
    client's environment) is not relaunched forever: after three such exits the
    waiting futures fail with the reason from the last worker's log."""
    monkeypatch.setenv("STARBURST_LOG_LEVEL", "chatty")
    ex = DetachedExecutor(max_workers=1)
    try:
        future = ex.submit(tasks.square, 3)
        with pytest.raises(WorkersCannotStart) as info:
            future.result(timeout=TIMEOUT)
        message = str(info.value)
        assert ex.session_id in message and "could not start (exit code 3)" in message
        assert "Unknown level: 'chatty'" in message  # the last worker's own traceback
        logs = Path(os.environ["STARBURST_HOME"]) / "logs" / ex.session_id
        assert len(list(logs.glob("w-*.log"))) == 3  # no fourth launch
        # Fixed, a new call gets fresh workers.
        monkeypatch.delenv("STARBURST_LOG_LEVEL")
        assert ex.submit(tasks.square, 4).result(timeout=TIMEOUT) == 16
    finally:
        ex.cleanup(force=True)


def test_task_that_kills_its_own_process_fails_at_once_and_the_worker_goes_on(prefix, tmp_path):
    """No lease wait: the worker sees its task process die and says so."""
    ex = DetachedExecutor(max_workers=1, lease_seconds=60, max_retries=3)
    try:
        marker = tmp_path / "ran"
        doomed = ex.submit(tasks.kill_own_process, str(marker))
        with pytest.raises(WorkerDied, match="SIGKILL") as info:
            doomed.result(timeout=TIMEOUT)  # well inside the 60 s lease
        assert info.value.exit_status == -9
        assert len(marker.read_text().splitlines()) == 1  # not retried
        after = ex.submit(tasks.worker_pid)
        assert isinstance(after.result(timeout=TIMEOUT), int)
        assert after.worker_id == doomed.worker_id  # the same worker ran the next task
    finally:
        ex.cleanup(force=True)


def test_cleanup_stops_only_this_sessions_workers_and_force_deletes_only_its_objects(
    prefix, tmp_path
):
    keep = DetachedExecutor(max_workers=1)
    drop = DetachedExecutor(max_workers=1)
    try:
        assert keep.submit(tasks.square, 2).result(timeout=TIMEOUT) == 4
        assert drop.submit(tasks.square, 3).result(timeout=TIMEOUT) == 9
        drop_pids = [w["pid"] for w in drop._runtime.loop.run(drop._session.workers())]
        keep_pids = [w["pid"] for w in keep._runtime.loop.run(keep._session.workers())]
        drop.cleanup(force=True)
        for pid in drop_pids:
            assert not _alive(pid)
        assert all(_alive(pid) for pid in keep_pids)
        ids = {s.session_id for s in list_sessions()}
        assert keep.session_id in ids and drop.session_id not in ids
        with pytest.raises(SessionNotFound):
            DetachedExecutor.attach(drop.session_id)
        assert keep.submit(tasks.square, 4).result(timeout=TIMEOUT) == 16
    finally:
        keep.cleanup(force=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_list_sessions_counts_per_state(prefix):
    ex = DetachedExecutor(max_workers=1)
    try:
        futures = [ex.submit(tasks.fail_if, i, 0) for i in range(3)]
        concurrent.futures.wait(futures, timeout=TIMEOUT)
        rows = {s.session_id: s for s in list_sessions()}
        row = rows[ex.session_id]
        assert (row.status.total, row.status.completed, row.status.failed) == (3, 2, 1)
        assert row.mode == "detached" and row.last_activity is not None
        # LastModified has one-second resolution
        assert row.last_activity >= row.created - datetime.timedelta(seconds=1)
    finally:
        ex.cleanup(force=True)


@pytest.mark.parametrize("bad", ["../other", "session-XYZ", "session-0123", "", "sessions/x"])
def test_invalid_session_ids_are_refused_before_any_key(prefix, bad):
    with pytest.raises(InvalidSessionId, match="invalid session id"):
        DetachedExecutor.attach(bad)


def test_unknown_session_id_names_it_and_the_next_step(prefix):
    with pytest.raises(SessionNotFound, match=r"session-0000000000000000.*starburst sessions"):
        DetachedExecutor.attach("session-0000000000000000")


def test_attach_while_workers_start_does_not_launch_more(prefix, tmp_path):
    ex = DetachedExecutor(max_workers=1)
    try:
        ex.submit(tasks.touch_then_wait, str(tmp_path / "s"), str(tmp_path / "r"))
        # Submits are pipelined: the worker is launched once the call is durable, and
        # registered right after (a loaded machine took longer than attach did).
        ex.flush()
        wait_until(lambda: ex._runtime.loop.run(ex._session.workers()), "the worker's entry")
        # The worker is still importing: only the launcher's "starting" entry exists.
        other = DetachedExecutor.attach(ex.session_id)
        assert other._runtime.launcher.live_count(ex.session_id) == 1
        other._keep_workers(1)
        assert other._runtime.launcher._procs.get(ex.session_id, []) == []
        other.detach()
        (tmp_path / "r").write_text("go")
        assert ex.futures[0].result(timeout=TIMEOUT) > 0
    finally:
        ex.cleanup(force=True)


def _wait_live(ex: DetachedExecutor, count: int) -> None:
    wait_until(
        lambda: ex._runtime.launcher.live_count(ex.session_id) == count, f"{count} live workers"
    )


def test_scale_up_and_down_and_min_workers(prefix, tmp_path, monkeypatch):
    # A worker asked to stop while it runs a task keeps it this long: were the busy
    # worker among those stopped, the live count would not come down in time.
    monkeypatch.setenv("STARBURST_TERM_GRACE", "900")
    ex = DetachedExecutor(max_workers=4, min_workers=2)
    try:
        release, started = tmp_path / "r", tmp_path / "started"
        ex.submit(tasks.touch_then_wait, str(started), str(release))
        _wait_live(ex, 2)  # one pending task, but min_workers=2
        assert ex.scale(4) == 2
        _wait_live(ex, 4)
        wait_until(started.exists, "the task to start")
        # Down to min_workers (below it, the poller would top up again at once). Of the
        # two lowest pids, the first two workers, one runs the task.
        assert ex.scale(2) == -2  # asked to stop: two idle ones, which exit at once
        _wait_live(ex, 2)
        assert ex.cost() == {
            "rate_per_worker_hour": 0.0,
            "rate_source": "local workers",
            "running_workers": 2,
            "estimate_per_hour": 0.0,
            "actual_to_date": 0.0,
        }
        release.write_text("go")
        assert ex.futures[0].result(timeout=TIMEOUT) == int(started.read_text())
        assert ex.futures[0].attempt == 1  # run by the worker that claimed it, not handed back
        with pytest.raises(ValueError):
            ex.scale(-1)
    finally:
        ex.cleanup(force=True)


def test_min_workers_cannot_exceed_max_workers(prefix):
    from starburst_executor.errors import ConfigError

    with pytest.raises(ConfigError, match="min_workers"):
        DetachedExecutor(max_workers=2, min_workers=3)


def test_detach_inside_a_with_block_does_not_wait(prefix):
    with DetachedExecutor(max_workers=1) as ex:
        future = ex.submit(tasks.sleep_for, 0.5)
        sid = ex.detach()
    assert not future.done()  # the client let go; the work goes on
    other = DetachedExecutor.attach(sid)
    try:
        assert other.futures[0].result(timeout=TIMEOUT) == 0.5
    finally:
        other.cleanup(force=True)


def test_shutdown_cancel_futures_cancels_a_long_queue_in_s3(prefix, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=1)
    try:
        busy = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the worker to start the first task")
        queued = [ex.submit(tasks.square, i) for i in range(300)]
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        release.write_text("go")
        assert busy.result(timeout=TIMEOUT) > 0
        attached = DetachedExecutor.attach(ex.session_id)  # the cancels are in S3
        assert attached.status().cancelled == 300
        concurrent.futures.wait(attached.futures, timeout=TIMEOUT)
        assert all(f.cancelled() for f in attached.futures[1:])
        attached.detach()
    finally:
        release.write_text("go")
        ex.cleanup(force=True)
