"""The standard library's executor contract at its edges, for both executors.

Each test here would fail on the code before issue 17 (and item 1 of issue 15):
idempotent ``shutdown``, work queued at interpreter exit, ``submit`` during
interpreter exit, a failing initializer, the standard error types, ``max_workers``
validation, a result whose unpickling exits, and no worker left after ``shutdown``.
The exit tests run a real interpreter to its end. CPython's own suite runs against
both executors in ``tests/cpython/``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest
import tasks
from helpers import session_workers, wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor._procs import pid_alive
from starburst_executor.errors import (
    BrokenExecutor,
    CorruptObject,
    InitializerError,
    PicklingError,
    WorkerDied,
    WorkerLost,
)

TIMEOUT = 120
EXECUTORS = [StarburstExecutor, DetachedExecutor]


def make(kind: type, max_workers: int = 2, **kwargs: Any) -> Any:
    if kind is DetachedExecutor:
        kwargs.setdefault("session_timeout", 20.0)
    return kind(max_workers, **kwargs)


def run_script(body: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter to its natural end."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env={**os.environ, **env},
    )


# -- shutdown, detach and cleanup can be called again ------------------------------


@pytest.mark.parametrize("kind", EXECUTORS)
def test_shutdown_twice_and_a_with_block_after_shutdown(prefix, kind):
    ex = make(kind)
    assert ex.submit(tasks.square, 3).result(timeout=TIMEOUT) == 9
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False, cancel_futures=True)
    with ex:
        pass  # __exit__ shuts down once more
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)


def test_detach_and_cleanup_twice(prefix):
    ex = make(DetachedExecutor)
    assert ex.detach() == ex.detach() == ex.session_id
    other = DetachedExecutor.attach(ex.session_id)
    other.cleanup(force=True)
    other.cleanup(force=True)
    other.shutdown()


# -- interpreter exit --------------------------------------------------------------


def test_exit_without_shutdown_runs_every_queued_call(prefix, tmp_path):
    """As ProcessPoolExecutor: queued calls run before the interpreter exits, and no
    worker outlives it."""
    out = tmp_path / "ran"
    result = run_script(
        f"""
        import tasks
        from starburst_executor import StarburstExecutor
        ex = StarburstExecutor(2)
        for i in range(4):
            ex.submit(tasks.sleep_then_append, {str(out)!r}, i, 0.5)
        print(ex.session_id)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert sorted(out.read_text().split()) == ["0", "1", "2", "3"]
    assert session_workers(result.stdout.strip()) == []


def test_exit_after_shutdown_without_wait_runs_the_queued_calls(prefix, tmp_path):
    out = tmp_path / "ran"
    result = run_script(
        f"""
        import tasks
        from starburst_executor import StarburstExecutor
        ex = StarburstExecutor(1)
        for i in range(3):
            ex.submit(tasks.sleep_then_append, {str(out)!r}, i, 0.2)
        ex.shutdown(wait=False)
        """
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(out.read_text().split()) == ["0", "1", "2"]


def test_detached_exit_leaves_every_submitted_call_durable_and_running(prefix, tmp_path):
    out = tmp_path / "ran"
    result = run_script(
        f"""
        import tasks
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor(2, session_timeout=20)
        for i in range(4):
            ex.submit(tasks.sleep_then_append, {str(out)!r}, i, 0.5)
        print(ex.session_id)
        """
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    attached = DetachedExecutor.attach(result.stdout.strip())
    try:
        assert len(attached.futures) == 4
        results = [f.result(timeout=TIMEOUT) for f in attached.futures]
        assert results == [0, 1, 2, 3]
    finally:
        attached.cleanup(force=True)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_forked_child_exits_while_the_parents_executor_is_open(prefix, kind):
    """multiprocessing forks on Linux: a child inherits the parent's open executor but
    not its threads, and must not try to finish it at its own exit (it hung forever)."""
    import multiprocessing

    ex = make(kind)
    try:
        assert ex.submit(tasks.square, 3).result(timeout=TIMEOUT) == 9
        child = multiprocessing.get_context("fork").Process(target=tasks.square, args=(2,))
        child.start()
        child.join(TIMEOUT)
        assert child.exitcode == 0, "the forked child did not exit"
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            assert pool.submit(tasks.square, 4).result(timeout=TIMEOUT) == 16
        assert ex.submit(tasks.square, 5).result(timeout=TIMEOUT) == 25
    finally:
        ex.shutdown()
        if child.is_alive():
            child.kill()


def test_a_forked_child_exits_at_once_while_submitted_calls_are_in_flight(prefix):
    """A child forked while the parent's pipelined submits are in flight ends its
    interpreter as usual (atexit, finalizers): it must not wait to make the parent's
    calls durable on a loop thread it does not have (it hung for the 300 s flush bound)."""
    result = run_script(
        """
        import os, time
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor(1)
        for i in range(500):
            ex.submit(abs, i)
        in_flight = ex._pipeline.not_durable()
        pid = os.fork()
        if pid:
            started = time.monotonic()
            os.waitpid(pid, 0)
            took = time.monotonic() - started
            print(f"in flight {in_flight}; the child exited after {took:.1f}s", flush=True)
            ex.cleanup(force=True)
        """
    )
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    found = re.search(r"in flight (\d+); the child exited after ([\d.]+)s", result.stdout)
    assert found, result.stdout + result.stderr
    assert int(found[1]) > 0, "no call was in flight at the fork: the test proves nothing"
    assert float(found[2]) < 60


@pytest.mark.parametrize("kind", EXECUTORS)
def test_submit_during_interpreter_exit_raises_the_standard_error(prefix, kind):
    result = run_script(
        f"""
        import atexit, warnings
        warnings.simplefilter("always")

        @atexit.register
        def late():
            try:
                ex.submit(id, None)
            except RuntimeError as err:
                print("refused:", err)

        from starburst_executor import {kind.__name__}
        ex = {kind.__name__}(1)
        ex.submit(id, 42).result()
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: cannot schedule new futures after interpreter shutdown" in result.stdout
    assert "never awaited" not in result.stderr
    assert "Event loop is closed" not in result.stdout + result.stderr


# -- a failing initializer breaks the executor --------------------------------------


@pytest.mark.parametrize("kind", EXECUTORS)
def test_failing_initializer_breaks_the_executor(prefix, kind, tmp_path):
    ex = make(kind, max_workers=1, initializer=tasks.failing_init, initargs=("no",))
    try:
        first = ex.submit(tasks.square, 2)
        with pytest.raises(InitializerError, match="failing_init raised ValueError") as info:
            first.result(timeout=TIMEOUT)
        assert isinstance(info.value, concurrent.futures.BrokenExecutor)
        assert isinstance(info.value, BrokenProcessPool)
        assert "initializer refused: no" in str(info.value.__cause__)  # worker traceback
        with pytest.raises(BrokenExecutor, match="initializer"):
            ex.submit(tasks.square, 3)
    finally:
        if kind is DetachedExecutor:
            ex.cleanup(force=True)
        else:
            ex.shutdown()


def test_queued_calls_fail_when_the_initializer_breaks_the_executor(prefix, tmp_path):
    ex = StarburstExecutor(1, initializer=tasks.failing_init, initargs=("no",))
    try:
        futures = [ex.submit(tasks.square, i) for i in range(4)]
        for future in futures:
            with pytest.raises(BrokenExecutor):
                future.result(timeout=TIMEOUT)
        # Only the first call reached a worker; the queued ones never started one.
        assert sum(isinstance(f.exception(), InitializerError) for f in futures) == 1
    finally:
        ex.shutdown()


def test_a_call_stored_while_the_initializer_breaks_the_executor_never_starts(prefix, monkeypatch):
    """The break can land while ``submit`` waits for its call to be in S3 (seen beside
    two other suites): that call is queued too late for ``_fail_queued``, and must not
    start a worker of its own."""
    ex = StarburstExecutor(1, initializer=tasks.failing_init, initargs=("no",))
    try:
        first = ex.submit(tasks.square, 0)
        store = ex._pipeline.flush

        def flush_then_break(timeout: float | None = None) -> None:
            store(timeout)
            # The break lands here: a future's waiters wake before its callbacks run.
            wait_until(lambda: ex._broken is not None, "the initializer to break the executor")

        monkeypatch.setattr(ex._pipeline, "flush", flush_then_break)
        second = ex.submit(tasks.square, 1)
        assert isinstance(first.exception(timeout=TIMEOUT), InitializerError)
        with pytest.raises(BrokenExecutor, match=ex.session_id):
            second.result(timeout=TIMEOUT)
        assert not isinstance(second.exception(), InitializerError)  # no worker ran it
        with pytest.raises(BrokenExecutor):
            ex.submit(tasks.square, 2)
    finally:
        ex.shutdown()


def test_detached_executor_runs_its_initializer_before_the_call(prefix):
    ex = DetachedExecutor(1, initializer=tasks.init_marker, initargs=("ready",))
    try:
        assert "ready" in ex.submit(tasks.read_marker).result(timeout=TIMEOUT)
    finally:
        ex.shutdown()


# -- standard error types, our semantics ---------------------------------------------


def test_error_types_are_the_standard_ones():
    assert issubclass(WorkerDied, BrokenProcessPool)
    assert issubclass(WorkerLost, BrokenProcessPool)
    assert issubclass(CorruptObject, BrokenProcessPool)
    assert issubclass(BrokenExecutor, BrokenProcessPool)
    assert issubclass(PicklingError, pickle.PicklingError)
    # They still pickle round trip, as futures' exceptions travel.
    died = WorkerDied("gone", task_id="t000000001", exit_status=-9, logs="x.log")
    again = pickle.loads(pickle.dumps(died))
    assert isinstance(again, BrokenProcessPool) and again.task_id == "t000000001"


def test_a_dead_worker_is_a_broken_process_pool_for_its_future_only(prefix):
    with StarburstExecutor(2) as ex:
        doomed = ex.submit(tasks.kill_self, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            doomed.result(timeout=TIMEOUT)
        assert ex.submit(tasks.square, 4).result(timeout=TIMEOUT) == 16


@pytest.mark.parametrize("kind", EXECUTORS)
def test_unpicklable_argument_is_a_pickle_error_at_submit(prefix, kind):
    ex = make(kind)
    try:
        with pytest.raises(pickle.PicklingError, match="argument 0"):
            ex.submit(tasks.identity, threading.Lock())
    finally:
        ex.shutdown()


@pytest.mark.parametrize("kind", EXECUTORS)
@pytest.mark.parametrize("workers", [0, -1])
def test_max_workers_below_one_is_a_value_error(prefix, kind, workers):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        kind(max_workers=workers)


# -- a result whose unpickling exits -------------------------------------------------


def test_result_whose_unpickling_exits_resolves_the_future(prefix):
    with StarburstExecutor(1) as ex:
        future = ex.submit(tasks.return_exit_at_unpickle)
        with pytest.raises(CorruptObject, match="SystemExit") as info:
            future.result(timeout=TIMEOUT)
        assert isinstance(info.value, BrokenProcessPool)
        assert ex.submit(tasks.square, 5).result(timeout=TIMEOUT) == 25


# -- no worker left after shutdown(wait=True) ----------------------------------------


def test_nothing_a_stopped_session_started_outlives_shutdown(prefix):
    """Not a worker, not its task process, and not a process a task left behind with
    the task's output (as stopping an ECS task ends its whole container)."""
    ex = DetachedExecutor(1)
    sid = ex.session_id
    left = ex.submit(tasks.leave_a_process_behind).result(timeout=TIMEOUT)
    assert left in session_workers(sid)
    ex.shutdown(wait=True)
    assert session_workers(sid) == []
    assert not pid_alive(left)


def test_detached_shutdown_leaves_no_worker_running(prefix):
    ex = DetachedExecutor(3, session_timeout=300)
    sid = ex.session_id
    assert [f.result(timeout=TIMEOUT) for f in [ex.submit(tasks.square, i) for i in range(6)]]
    assert session_workers(sid), "the workers should be serving the session"
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert session_workers(sid) == []
    assert time.monotonic() - started < 30
