"""One behaviour suite, run against ProcessPoolExecutor and StarburstExecutor.

Written once in ``ExecutorBehaviour`` and mixed into one class per executor (as loky
does), so any difference from the standard library shows. The intentional
differences are tested at the end, explicitly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from pathlib import Path
from typing import Any

import pytest
import tasks
from helpers import wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor.errors import PicklingError, RemoteError, WorkerDied

TIMEOUT = 120


def _wait_for(path: Path) -> None:
    wait_until(path.exists, f"{path} to appear")


class ExecutorBehaviour:
    """What every executor must do, as ProcessPoolExecutor does it."""

    def make(self, max_workers: int = 2, **kwargs: Any) -> concurrent.futures.Executor:
        raise NotImplementedError

    def test_submit_and_result(self, prefix):
        with self.make() as ex:
            assert ex.submit(tasks.add, 2, b=3).result(timeout=TIMEOUT) == 5

    def test_map_yields_in_order(self, prefix):
        with self.make() as ex:
            assert list(ex.map(tasks.square, range(6), timeout=TIMEOUT)) == [
                i * i for i in range(6)
            ]
            assert list(ex.map(pow, range(5), range(5), chunksize=2)) == [i**i for i in range(5)]

    def test_map_timeout_raises_timeout_error(self, prefix):
        with self.make(max_workers=1) as ex:
            results = ex.map(tasks.sleep_for, [2.0], timeout=0.2)
            with pytest.raises(TimeoutError):
                list(results)

    def test_submit_after_shutdown_raises_runtime_error(self, prefix):
        ex = self.make()
        ex.shutdown()
        with pytest.raises(RuntimeError):
            ex.submit(tasks.square, 1)

    def test_context_manager_waits_for_every_result(self, prefix):
        with self.make() as ex:
            futures = [ex.submit(tasks.sleep_for, 0.2) for _ in range(3)]
        assert all(f.done() and f.result() == 0.2 for f in futures)

    def test_cancel_a_queued_future(self, prefix, tmp_path):
        started, release = tmp_path / "started", tmp_path / "release"
        with self.make(max_workers=1) as ex:
            busy = ex.submit(tasks.touch_then_wait, str(started), str(release))
            _wait_for(started)
            # ProcessPoolExecutor's call queue holds max_workers + 1 calls (running, past
            # cancelling) and the busy call has left it: these two fill it.
            fillers = [ex.submit(tasks.square, 3) for _ in range(2)]
            queued = ex.submit(tasks.append_index, str(tmp_path / "ran"), 1)
            assert queued.cancel()
            assert queued.cancelled()
            assert not busy.cancel()
            release.write_text("go")
            assert busy.result(timeout=TIMEOUT)
            assert [f.result(timeout=TIMEOUT) for f in fillers] == [9, 9]
        assert not (tmp_path / "ran").exists()
        with pytest.raises(concurrent.futures.CancelledError):
            queued.result()

    def test_shutdown_cancel_futures_cancels_what_has_not_started(self, prefix, tmp_path):
        started, release = tmp_path / "started", tmp_path / "release"
        ex = self.make(max_workers=1)
        busy = ex.submit(tasks.touch_then_wait, str(started), str(release))
        _wait_for(started)
        queued = [ex.submit(tasks.square, i) for i in range(3)]
        # The busy call ends once shutdown has cancelled the last queued one (its done
        # callback), however long that takes on a loaded machine; the timer only keeps a
        # broken cancel from hanging the test.
        queued[-1].add_done_callback(lambda _: release.write_text("go"))
        backstop = threading.Timer(TIMEOUT, release.write_text, args=("go",))
        backstop.start()
        ex.shutdown(wait=True, cancel_futures=True)
        backstop.cancel()
        assert busy.result() > 0
        # The stdlib may already have handed the next call to its worker (its call queue
        # holds one more than max_workers); whatever had not started is cancelled.
        assert all(f.cancelled() or f.result() == i * i for i, f in enumerate(queued))
        assert queued[-1].cancelled()

    def test_as_completed_and_done_callbacks(self, prefix):
        seen: list[int] = []
        with self.make() as ex:
            futures = [ex.submit(tasks.square, i) for i in range(5)]
            for f in futures:
                f.add_done_callback(lambda f: seen.append(f.result()))
            got = sorted(f.result() for f in concurrent.futures.as_completed(futures, TIMEOUT))
        assert got == [0, 1, 4, 9, 16]
        assert sorted(seen) == got

    def _wait_beside_a_held_call(
        self, tmp_path: Path, other: Callable[..., Any], args: tuple[Any, ...], when: str
    ) -> None:
        """``wait`` on a call held until the wait has returned (not one sleeping 2 s, a
        margin a loaded machine overran beside two other suites) and ``other``."""
        release = tmp_path / "release"
        with self.make() as ex:
            try:
                held = ex.submit(tasks.touch_then_wait, str(tmp_path / "started"), str(release))
                quick = ex.submit(other, *args)
                done, not_done = concurrent.futures.wait(
                    [held, quick], timeout=TIMEOUT, return_when=when
                )
                assert quick in done and held in not_done
            finally:
                release.write_text("go")
            assert held.result(timeout=TIMEOUT) > 0

    def test_wait_first_completed(self, prefix, tmp_path):
        self._wait_beside_a_held_call(tmp_path, tasks.square, (3,), FIRST_COMPLETED)

    def test_wait_first_exception(self, prefix, tmp_path):
        self._wait_beside_a_held_call(tmp_path, tasks.fail_if, (1, 1), FIRST_EXCEPTION)

    def test_wait_all_completed(self, prefix):
        with self.make() as ex:
            futures = [ex.submit(tasks.square, i) for i in range(3)]
            done, not_done = concurrent.futures.wait(
                futures, timeout=TIMEOUT, return_when=ALL_COMPLETED
            )
            assert len(done) == 3 and not not_done

    def test_asyncio_wrap_future(self, prefix):
        with self.make() as ex:
            future = ex.submit(tasks.square, 7)

            async def main() -> int:
                value: int = await asyncio.wrap_future(future)
                return value

            assert asyncio.run(main()) == 49

    def test_initializer_runs_in_the_worker_before_the_call(self, prefix):
        with self.make(initializer=tasks.init_marker, initargs=("ready",)) as ex:
            assert "ready" in ex.submit(tasks.read_marker).result(timeout=TIMEOUT)

    def test_exception_keeps_its_type_with_remote_traceback_as_cause(self, prefix):
        with self.make() as ex:
            future = ex.submit(tasks.fail_if, 4, 4)
            with pytest.raises(tasks.CustomError, match="failed on purpose") as info:
                future.result(timeout=TIMEOUT)
            assert isinstance(future.exception(), tasks.CustomError)
        cause = info.value.__cause__
        assert cause is not None and "raise CustomError" in str(cause)

    def test_arguments_and_results_of_tens_of_megabytes(self, prefix):
        size = 24 * 1024 * 1024
        with self.make() as ex:
            assert ex.submit(tasks.length, b"y" * size).result(timeout=TIMEOUT) == size
            assert len(ex.submit(tasks.big_bytes, size).result(timeout=TIMEOUT)) == size


class TestProcessPoolExecutor(ExecutorBehaviour):
    def make(self, max_workers: int = 2, **kwargs: Any) -> concurrent.futures.Executor:
        return concurrent.futures.ProcessPoolExecutor(max_workers, **kwargs)


class RemoteExecutorBehaviour(ExecutorBehaviour):
    """Both of our executors: the shared behaviour, and the intentional differences."""

    def test_lambdas_and_closures_work(self, prefix):
        base = 100
        with self.make() as ex:
            assert ex.submit(lambda x: x + base, 1).result(timeout=TIMEOUT) == 101

    def test_unpicklable_argument_fails_at_submit_naming_it(self, prefix):
        with self.make() as ex, pytest.raises(PicklingError, match="argument 0"):
            ex.submit(tasks.identity, threading.Lock())

    def test_unloadable_exception_class_arrives_as_remote_error(self, prefix):
        with self.make() as ex:
            future = ex.submit(tasks.raise_unloadable)
            with pytest.raises(RemoteError) as info:
                future.result(timeout=TIMEOUT)
        err = info.value
        assert err.type_name == "worker_only_module.WorkerOnlyError"
        assert "only the worker knows" in err.remote_message
        assert "raise WorkerOnlyError" in err.remote_traceback

    def test_killed_worker_fails_only_its_future_promptly(self, prefix):
        with self.make(max_workers=2) as ex:
            doomed = ex.submit(lambda: os.kill(os.getpid(), signal.SIGKILL))
            with pytest.raises(WorkerDied) as info:
                doomed.result(timeout=TIMEOUT)
            err = info.value
            assert err.task_id == doomed.task_id and err.exit_status == -signal.SIGKILL
            assert "SIGKILL" in str(err) and Path(err.logs).exists()
            assert ex.submit(tasks.square, 5).result(timeout=TIMEOUT) == 25

    def test_stdout_and_stderr_are_captured_on_the_future(self, prefix):
        with self.make() as ex:
            future = ex.submit(tasks.chatty, 3)
            assert future.result(timeout=TIMEOUT) == 3
        assert "hello from 3" in future.stdout
        assert "careful with 3" in future.stderr

    def test_the_work_is_visible_to_attach_while_it_runs(self, prefix, tmp_path):
        started, release = tmp_path / "started", tmp_path / "release"
        with self.make(max_workers=1) as ex:
            ex.submit(tasks.touch_then_wait, str(started), str(release))
            _wait_for(started)
            other = DetachedExecutor.attach(ex.session_id)
            assert other.status().running == 1 and len(other.futures) == 1
            other.detach()
            release.write_text("go")


class TestStarburstExecutor(RemoteExecutorBehaviour):
    def make(self, max_workers: int = 2, **kwargs: Any) -> concurrent.futures.Executor:
        return StarburstExecutor(max_workers, **kwargs)


class TestDetachedExecutor(RemoteExecutorBehaviour):
    def make(self, max_workers: int = 2, **kwargs: Any) -> concurrent.futures.Executor:
        return DetachedExecutor(max_workers, **kwargs)


def test_process_pool_rejects_lambdas_where_starburst_accepts_them():
    with (
        concurrent.futures.ProcessPoolExecutor(1) as ex,
        pytest.raises(Exception, match="pickle"),
    ):
        ex.submit(lambda: 1).result(timeout=TIMEOUT)
