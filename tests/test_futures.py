"""TaskFuture state changes from many threads at once (issue 18)."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from starburst_executor import DetachedExecutor
from starburst_executor._core.codec import Outcome
from starburst_executor._core.futures import TaskFuture
from starburst_executor._core.poller import WAVE_MIN, Waves

ROUNDS = 2000
THREADS = 4
TIMEOUT = 120


@pytest.fixture(autouse=True)
def _switch_often() -> Iterator[None]:
    """Let threads preempt each other every microsecond, so races interleave."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _race(future: TaskFuture, actions: list) -> list[BaseException]:  # type: ignore[type-arg]
    """Run every action on its own thread, released together; returns what they raised."""
    errors: list[BaseException] = []
    gate = threading.Barrier(len(actions))

    def run(action) -> None:  # type: ignore[no-untyped-def]
        gate.wait()
        try:
            action()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_cancel_from_many_threads_while_a_cancelled_outcome_resolves() -> None:
    failures: list[BaseException] = []
    for i in range(ROUNDS):
        future = TaskFuture("session-0123456789abcdef", f"t{i:09d}", canceller=lambda _t: True)
        answers: list[bool] = []
        now = time.time()
        outcome = Outcome(future.task_id, "cancelled", started=now, finished=now)
        actions = [lambda f=future, a=answers: a.append(f.cancel()) for _ in range(THREADS)]
        actions.append(lambda f=future, o=outcome: f._resolve(o))
        seen: list[concurrent.futures.Future[object]] = []
        watcher = threading.Thread(
            target=lambda f=future, s=seen: s.extend(
                concurrent.futures.as_completed([f], timeout=TIMEOUT)
            )
        )
        watcher.start()
        failures += _race(future, actions)
        watcher.join(TIMEOUT)
        assert not watcher.is_alive(), "as_completed was never woken by the cancel"
        assert seen == [future]
        assert future.cancelled()
        assert answers == [True] * THREADS
    assert not failures, f"{len(failures)} of {ROUNDS} rounds raised: {failures[:3]!r}"


def test_cancel_racing_a_result_answers_consistently() -> None:
    for i in range(ROUNDS):
        future = TaskFuture("session-0123456789abcdef", f"t{i:09d}", canceller=lambda _t: True)
        answers: list[bool] = []
        ok = Outcome.success(future.task_id, i)
        actions = [lambda f=future, a=answers: a.append(f.cancel()) for _ in range(THREADS)]
        actions.append(lambda f=future, o=ok: f._resolve(o))
        assert not _race(future, actions)
        if future.cancelled():
            assert answers and all(answers)
        else:
            assert future.result() == i
            assert not any(answers)


def test_many_threads_cancel_a_live_session_while_the_poller_resolves(prefix: str) -> None:
    """The real poller resolving the cancelled outcomes the cancels wrote to S3."""
    # Attached without launching workers: no worker may claim, so every cancel must win.
    ex = DetachedExecutor.attach(DetachedExecutor(max_workers=1).detach(), launch_workers=False)
    try:
        futures = [ex.submit(time.sleep, 0) for _ in range(24)]
        errors: list[BaseException] = []
        answers: dict[str, list[bool]] = {f.task_id: [] for f in futures}
        gate = threading.Barrier(THREADS)

        def cancel_all(order: list[TaskFuture]) -> None:
            gate.wait()
            for f in order:
                try:
                    answers[f.task_id].append(f.cancel())
                except BaseException as err:
                    errors.append(err)

        threads = [
            threading.Thread(target=cancel_all, args=(futures[k:] + futures[:k],))
            for k in range(THREADS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not errors
        _, not_done = concurrent.futures.wait(futures, timeout=TIMEOUT)
        assert not not_done
        assert all(f.cancelled() for f in futures)
        assert all(a == [True] * THREADS for a in answers.values())
        assert ex.status().cancelled == len(futures)
    finally:
        ex.cleanup(force=True)


def test_the_poller_looks_for_the_next_wave_of_long_tasks_when_it_is_due() -> None:
    """Results of long tasks come in waves; the next is read when due, not a grown
    backoff later. Short tasks and cancels leave the trickle and backoff delays alone."""
    waves = Waves(min_delay=0.005, max_delay=1.0)
    assert waves.delay(0.8, 0, now=10.0, wall=1000.0, rtt=0.02) == 0.8  # nothing read yet
    waves.learn(Outcome("t000000000", "cancelled", started=0.0, finished=0.0))
    assert waves.duration is None
    waves.learn(Outcome("t000000000", "ok", started=999.0, finished=999.5))
    # Next result: 0.5 s after the latest finish, plus its write (one round trip).
    assert waves.delay(0.8, 0, now=10.0, wall=1000.0, rtt=0.02) == pytest.approx(0.02)
    assert waves.delay(0.8, 4, now=9.9, wall=999.9, rtt=0.02) == pytest.approx(0.12)
    assert waves.delay(0.01, 4, now=9.9, wall=999.9, rtt=0.02) == 0.01  # sooner stays
    # Late: every sixteenth of a task time for half a task time, then the backoff again.
    assert waves.delay(0.8, 0, now=10.1, wall=1000.1, rtt=0.02) == pytest.approx(0.5 / 16)
    assert waves.delay(0.8, 0, now=10.4, wall=1000.4, rtt=0.02) == 0.8
    short = Waves(min_delay=0.005, max_delay=1.0)
    short.learn(Outcome("t000000001", "ok", started=999.0, finished=999.0 + WAVE_MIN / 2))
    assert short.delay(0.5, 3, now=10.0, wall=999.1, rtt=0.02) == 0.5  # a stream: trickle
