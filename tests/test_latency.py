"""Fast at real S3 latency: pipelined submits, direct result reads, pieces stored once."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tasks
from fault_proxy import FaultProxy
from helpers import parent_of, wait_until

from starburst_executor import DetachedExecutor
from starburst_executor._core.codec import (
    PieceCache,
    decode_call,
    encode_call,
    encode_call_pieces,
    payload_blobs,
)
from starburst_executor._core.layout import RELEASED_DIR, task_id
from starburst_executor._core.loop import LoopThread
from starburst_executor._core.workview import BURST_AFTER
from starburst_executor.errors import CorruptObject, ObjectNotFound, PicklingError, WorkerDied
from starburst_executor.store.local_server import LocalServer, read_credentials
from starburst_executor.store.s3 import S3Store, _no_expect_continue


def test_uploads_are_sent_without_expect_100_continue(store):
    sent: list[dict[str, str]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v for k, v in request.headers.items()})

    client = store.run(store._ensure())
    client.meta.events.register("before-send.s3.PutObject", capture)
    store.run(store.put("probe/expect", b"x" * 10_000))
    store.run(store.put("probe/expect-cond", b"y", if_none_match=True))
    assert len(sent) == 2
    assert all("expect" not in headers for headers in sent), sent
    # The handler is what removes it: botocore alone asks for a 100 first.
    client.meta.events.unregister("before-call.s3", _no_expect_continue)
    store.run(store.put("probe/expect", b"x" * 10_000))
    assert sent[-1].get("expect") == b"100-continue"


TIMEOUT = 240


def _lists(ex: DetachedExecutor) -> int:
    return ex._runtime.store.counter.by_operation.get("ListObjectsV2", 0)


def test_few_pending_futures_read_their_result_keys_without_listing(prefix):
    ex = DetachedExecutor(max_workers=1)
    try:
        assert ex.submit(tasks.square, 2).result(timeout=TIMEOUT) == 4  # warm worker
        before = _lists(ex)
        for i in range(5):
            assert ex.submit(tasks.square, i).result(timeout=TIMEOUT) == i * i
        # The old poller listed results/ at least once per call.
        assert _lists(ex) - before == 0
        assert ex._poller._direct
    finally:
        ex.cleanup(force=True)


def test_a_store_answering_403_for_missing_keys_is_polled_by_listing(
    starburst_home, prefix, monkeypatch
):
    info = LocalServer(starburst_home).ensure_running()
    access, secret = read_credentials(starburst_home)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with FaultProxy(info.endpoint_url, 0.0, missing_as_403=True) as proxy:
        monkeypatch.setenv("STARBURST_S3_ENDPOINT", proxy.url)
        monkeypatch.setenv("STARBURST_BUCKET", "starburst")
        ex = DetachedExecutor(max_workers=1)
        try:
            futures = [ex.submit(tasks.square, i) for i in range(3)]
            assert [f.result(timeout=TIMEOUT) for f in futures] == [0, 1, 4]
            assert not ex._poller._direct  # a 403 is not read as "no result yet" forever
            assert proxy.injected["missing403"] >= 1
        finally:
            ex.cleanup(force=True)


def _blob_keys(ex: DetachedExecutor) -> list[str]:
    root = ex._session.layout.root + "blobs/"
    listing = ex._runtime.loop.run(ex._runtime.store.list_objects(root))
    return [o.key for o in listing.objects]


def test_a_big_closure_is_stored_once_and_deleted_with_the_session(prefix):
    big = os.urandom(3 * 1024 * 1024)

    def size_plus(i: int) -> int:
        return len(big) + i

    ex = DetachedExecutor(max_workers=2)
    sid = ex.session_id
    try:
        futures = [ex.submit(size_plus, i) for i in range(12)]
        ex.flush()
        keys = _blob_keys(ex)
        assert len(keys) == 1  # 12 calls, one 3 MiB piece
        task_sizes = ex._runtime.loop.run(
            ex._runtime.store.list_objects(ex._session.layout.dir("tasks"))
        )
        assert max(o.size for o in task_sizes.objects) < 64 * 1024
        assert [f.result(timeout=TIMEOUT) for f in futures] == [len(big) + i for i in range(12)]
        ex.detach()
        again = DetachedExecutor.attach(sid)  # a new client reads the same pieces
        assert [f.result(timeout=TIMEOUT) for f in again.futures] == [
            len(big) + i for i in range(12)
        ]
        extra = again.submit(size_plus, 100)  # and stores none twice
        assert extra.result(timeout=TIMEOUT) == len(big) + 100
        assert len(_blob_keys(again)) == 1
        again.cleanup(force=True)
        loop = LoopThread("check")
        old = again._runtime.store
        fresh = S3Store(old.location, credentials=old._credentials)
        try:
            assert loop.run(fresh.list_objects(again._session.layout.root)).objects == []
        finally:
            loop.run(fresh.close())
            loop.close()
    finally:
        with contextlib.suppress(Exception):
            ex.cleanup(force=True)


def test_with_an_initializer_a_big_argument_is_still_stored_once(prefix):
    """The initializer wraps each call (``initialized_call``), whose arguments hold the
    call's own: the big argument, not the wrapper's tuple around it (different for each
    call), is the piece, stored once for every call."""
    big = os.urandom(3 * 1024 * 1024)

    def size_plus(data: bytes, i: int) -> int:
        return len(data) + i

    ex = DetachedExecutor(max_workers=1, initializer=len, initargs=((),))
    try:
        futures = [ex.submit(size_plus, big, i) for i in range(6)]
        ex.flush()
        assert len(_blob_keys(ex)) == 1
        assert [f.result(timeout=TIMEOUT) for f in futures] == [len(big) + i for i in range(6)]
    finally:
        ex.cleanup(force=True)


def test_calls_with_more_big_pieces_than_a_task_process_keeps_run(prefix):
    """A task process keeps earlier tasks' pieces for the next one; a call of many big
    pieces, some shared with the call before, must never find one of its own evicted."""
    model = os.urandom(2 * 1024 * 1024)
    parts = [os.urandom(2 * 1024 * 1024) for _ in range(6)]

    def sizes(shared: bytes, *rest: bytes) -> list[int]:
        return [len(shared), *(len(r) for r in rest)]

    ex = DetachedExecutor(max_workers=1, slots=1)
    try:
        first = ex.submit(sizes, model, *parts[:3])
        second = ex.submit(sizes, model, *parts)  # seven pieces, four seen before
        assert first.result(timeout=TIMEOUT) == [len(model)] + [len(p) for p in parts[:3]]
        assert second.result(timeout=TIMEOUT) == [len(model)] + [len(p) for p in parts]
    finally:
        ex.cleanup(force=True)


def test_a_big_argument_is_a_piece_too_and_the_payload_checks_its_hash():
    arg = b"a" * (2 * 1024 * 1024)
    payload, pieces = encode_call_pieces(len, (arg,), {}, threshold=1024 * 1024)
    assert len(pieces) == 1 and len(payload) < 1024
    digest = next(iter(pieces))
    assert payload_blobs(payload, key="k") == (digest,)
    fn, args, kwargs = decode_call(payload, key="k", pieces=pieces)
    assert fn(*args, **kwargs) == len(arg)
    small, none = encode_call_pieces(len, (b"abc",), {})
    assert none == {} and payload_blobs(small, key="k") == ()
    with pytest.raises(CorruptObject, match="was not fetched"):
        decode_call(payload, key="k", pieces={})


def test_a_function_that_made_a_big_call_is_still_pickled_as_it_is_at_each_call():
    """Its next calls skip the whole pickle, never the current state of its closure."""
    state = [b"a" * (2 * 1024 * 1024)]

    def measure(i: int) -> int:
        return len(state[0]) + i

    for size in (2 * 1024 * 1024, 3 * 1024 * 1024, 5, 4 * 1024 * 1024):
        state[0] = b"b" * size
        payload, pieces = encode_call_pieces(measure, (1,), {}, threshold=1024 * 1024)
        assert bool(pieces) == (size > 1024 * 1024)
        fn, args, kwargs = decode_call(payload, key="k", pieces=pieces)
        assert fn(*args, **kwargs) == size + 1
    with pytest.raises(PicklingError, match="argument 0"):  # still named, on the hinted path
        encode_call_pieces(measure, (threading.Lock(),), {}, threshold=1024 * 1024)


def test_big_immutable_data_a_call_holds_is_pickled_and_hashed_once_per_client():
    """bytes and str cannot change, so a client pickles and hashes them once (cached by
    identity); a new object, or mutable data, is pickled again at every call."""
    mib = 1024 * 1024
    cache = PieceCache()
    model = os.urandom(2 * mib)
    buffer = bytearray(b"m" * (2 * mib))  # mutable: never cached

    def closure(i: int) -> int:
        return len(model) + i

    def both(i: int, data: bytes = model) -> int:
        return len(data) + len(buffer) + buffer[0] + i

    first, pieces = encode_call_pieces(closure, (1,), {}, threshold=mib, cache=cache)
    digest = payload_blobs(first, key="k")
    again, pieces_again = encode_call_pieces(closure, (2,), {}, threshold=mib, cache=cache)
    assert payload_blobs(again, key="k") == digest and pieces_again == pieces
    assert len(first) < 4096 and list(cache._entries) == [id(model)]
    fn, args, kwargs = decode_call(again, key="k", pieces=pieces_again)
    assert fn(*args, **kwargs) == 2 * mib + 2
    # A partial's argument and a plain argument are found the same way.
    text = "t" * (2 * mib)
    payload, pieces = encode_call_pieces(
        functools.partial(len), (text,), {}, threshold=mib, cache=cache
    )
    assert decode_call(payload, key="k", pieces=pieces)[1] == (text,)
    # The mutable buffer goes inline in the function's own piece, pickled at each call,
    # and that piece refers to the cached bytes (a piece within a piece).
    for value in (b"x", b"y"):
        buffer[0] = value[0]
        payload, pieces = encode_call_pieces(both, (3,), {}, threshold=mib, cache=cache)
        assert len(pieces) == 2 and digest[0] in pieces
        fn, args, kwargs = decode_call(payload, key="k", pieces=pieces)
        assert fn(*args, **kwargs) == 4 * mib + value[0] + 3
    # A new object under the same name is a new piece.
    model = os.urandom(2 * mib)
    payload, pieces = encode_call_pieces(closure, (0,), {}, threshold=mib, cache=cache)
    assert payload_blobs(payload, key="k") != digest
    fn, args, kwargs = decode_call(payload, key="k", pieces=pieces)
    assert fn(*args, **kwargs) == 2 * mib


def test_a_task_process_unpickles_an_immutable_piece_once_and_a_mutable_one_per_call():
    mib = 1024 * 1024
    model = os.urandom(2 * mib)
    rows = bytearray(2 * mib)

    def first_bytes(i: int, data: bytes = model) -> int:
        rows[0] = (rows[0] + i) % 256  # a call may change its own copy of mutable data
        return data[0] + rows[0]

    payload, pieces = encode_call_pieces(first_bytes, (1,), {}, threshold=mib, cache=PieceCache())
    assert len(pieces) == 2  # the bytes, and the function holding the bytearray
    immutable: dict[str, object] = {}
    fn, args, _ = decode_call(payload, key="k", pieces=pieces, immutable=immutable)
    assert list(immutable) == [next(d for d, p in pieces.items() if len(p) < len(model) + 64)]
    again, args_again, _ = decode_call(payload, key="k", pieces=pieces, immutable=immutable)
    assert fn.__defaults__[0] is again.__defaults__[0]  # the bytes: shared, unpickled once
    assert fn(*args) == again(*args_again) == model[0] + 1  # each call its own bytearray


def test_tasks_that_appear_out_of_order_are_run_without_waiting_for_a_scan(prefix):
    # A long lease: the expiry scan (which would find a skipped task) waits 150 s.
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)
    session, loop = ex._session, ex._runtime.loop
    try:
        ex.scale(1)
        for index in range(1, 4):  # written before task 0, as overlapping submits may be
            loop.run(session.put_tasks(task_id(index), [encode_call(tasks.square, (index,), {})]))

        def outcome(index: int) -> object:
            try:
                return loop.run(session.read_outcome(task_id(index))).result()
            except ObjectNotFound:
                return None

        wait_until(lambda: all(outcome(i) is not None for i in range(1, 4)), "tasks 1-3", 120)
        loop.run(session.put_tasks(task_id(0), [encode_call(tasks.square, (7,), {})]))
        wait_until(lambda: outcome(0) == 49, "the late task 0", 60)
    finally:
        ex.cleanup(force=True)


def test_a_segfault_in_one_slot_fails_alone_and_at_once_while_the_other_completes(prefix, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    # One worker with cpu=2 runs 2 tasks at once; a lease wait would be 120 s.
    ex = DetachedExecutor(max_workers=1, cpu=2, lease_seconds=120)
    try:
        slow = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the first task to start", 120)
        crash = ex.submit(tasks.segfault)
        with pytest.raises(WorkerDied, match="SIGSEGV") as died:
            crash.result(timeout=60)
        assert not slow.done()  # the other slot's task runs on, in the same worker
        release.write_text("go")
        assert slow.result(timeout=TIMEOUT) == int(started.read_text())
        assert slow.worker_id is not None and slow.worker_id in str(died.value)
        assert ex.status().completed == 1 and ex.status().failed == 1
    finally:
        ex.cleanup(force=True)


WARM_TASK = 1.5  # seconds: longer than a claim takes, even on a loaded machine


def _worker_stats(ex: DetachedExecutor) -> list[dict[str, int]]:
    entries = ex._runtime.loop.run(ex._session.workers())
    return [entry["stats"] for entry in entries]  # type: ignore[misc]


def test_a_busy_worker_claims_its_next_task_ahead_and_starts_it_when_the_slot_frees(
    prefix, tmp_path
):
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)
    session, loop = ex._session, ex._runtime.loop
    try:
        # How long a task takes: longer than a claim does, or claiming ahead hides nothing.
        assert ex.submit(tasks.sleep_for, WARM_TASK).result(timeout=TIMEOUT) == WARM_TASK
        slow = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the first task to start", TIMEOUT)
        following = ex.submit(tasks.square, 4)
        claim = session.layout.key("claims", following.task_id)
        # Its only slot is busy, and the next task is claimed (and its payload read) all
        # the same; the only worker of the session holds it however long that takes.
        wait_until(lambda: loop.run(ex._runtime.store.exists(claim)), "the claim ahead", TIMEOUT)
        # Claimed, so no longer cancellable (as ProcessPoolExecutor's one queued call).
        assert not following.cancel()
        assert not following.done() and not slow.done()
        release.write_text("go")
        assert following.result(timeout=TIMEOUT) == 16
        assert slow.result(timeout=TIMEOUT) == int(started.read_text())
        ex.shutdown()
        (stats,) = _worker_stats(ex)
        assert (stats["claimed_ahead"], stats["ahead_handed_back"]) == (1, 0)
        assert stats["tasks_run"] == 3
        assert following.worker_id == slow.worker_id
    finally:
        ex.cleanup(force=True)


def test_a_task_claimed_ahead_is_handed_back_when_its_slot_runs_over(prefix, tmp_path):
    """A long task does not keep the task its worker claimed ahead from an idle worker."""
    held = [(tmp_path / f"started{i}", tmp_path / f"release{i}") for i in range(2)]
    ex = DetachedExecutor(max_workers=2, lease_seconds=600)
    store, released = ex._runtime.store, ex._session.layout.dir("tasks") + RELEASED_DIR
    try:
        ex.scale(2)
        # Both workers learn how long a task takes (a claim ahead needs that).
        ran_on: set[str] = set()

        def both_ran() -> bool:
            futures = [ex.submit(tasks.sleep_for, WARM_TASK) for _ in range(4)]
            ran_on.update(str(f.worker_id) for f in futures if f.result(timeout=TIMEOUT))
            return len(ran_on) == 2

        wait_until(both_ran, "both workers to run a task", TIMEOUT)
        # Both workers run a task that outlasts what they learned, so no idle worker takes
        # the quick tasks first (beside two other suites one did): a worker claims one
        # ahead, its slot runs over, and it hands that task back.
        slow = [ex.submit(tasks.touch_then_wait, str(s), str(r)) for s, r in held]
        for started, _ in held:
            wait_until(started.exists, "both slow tasks to start", TIMEOUT)
        quick = [ex.submit(tasks.square, i) for i in range(6)]

        def handed_back() -> bool:
            return bool(ex._runtime.loop.run(store.list_objects(released)).objects)

        wait_until(handed_back, "a task claimed ahead to be handed back", TIMEOUT)
        held[1][1].write_text("go")
        # The freed worker runs every quick task, the handed-back ones too, while the
        # other slow task still runs; that one's worker ran none of them.
        assert [f.result(timeout=TIMEOUT) for f in quick] == [i * i for i in range(6)]
        assert not slow[0].done()
        held[0][1].write_text("go")
        slow[0].result(timeout=TIMEOUT)
        assert slow[0].worker_id not in {f.worker_id for f in quick}
        ex.shutdown()
        stats = _worker_stats(ex)
        assert sum(s["ahead_handed_back"] for s in stats) >= 1, stats
    finally:
        for _, release in held:
            release.write_text("go")
        ex.cleanup(force=True)


def test_tasks_shorter_than_a_claim_are_claimed_together_and_each_runs_once(prefix, tmp_path):
    path = tmp_path / "ran.txt"
    ex = DetachedExecutor(max_workers=1)
    try:
        for i in range(3):  # the worker learns that a task takes less than a claim
            assert ex.submit(tasks.square, i).result(timeout=TIMEOUT) == i * i
        # The first few go one claim at a time (BURST_AFTER), then claims go together.
        futures = [ex.submit(tasks.append_index, str(path), i) for i in range(200)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(200))
        assert sorted(int(x) for x in path.read_text().split()) == list(range(200))
        ex.shutdown()
        (stats,) = _worker_stats(ex)
        assert stats["claimed_together"] > 0 and stats["tasks_run"] == 203, stats
        assert stats["lost_races"] == 0 and ex.status().reexecuted == 0
    finally:
        ex.cleanup(force=True)


def test_after_sigterm_the_tasks_claimed_together_and_not_started_are_handed_back(
    prefix, tmp_path, monkeypatch
):
    monkeypatch.setenv("STARBURST_TERM_GRACE", "600")  # the running task may finish
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)
    session, store, loop = ex._session, ex._runtime.store, ex._runtime.loop
    releases: list[Path] = []
    try:
        # A warm-up task stalled past a claim's time (a loaded machine) keeps the worker
        # claiming one at a time; then the setup is tried again, at most three times.
        for attempt in range(3):
            for i in range(BURST_AFTER + 4):  # short tasks: claims go out together
                assert ex.submit(tasks.square, i).result(timeout=TIMEOUT) == i * i
            started, release = tmp_path / f"started{attempt}", tmp_path / f"release{attempt}"
            releases.append(release)
            # One batch object, seen in one listing: a task that holds its slot, then five.
            held = encode_call(tasks.touch_then_wait, (str(started), str(release)), {})
            quick = [encode_call(tasks.square, (i,), {}) for i in range(5)]
            first = ex._next_index
            loop.run(session.put_tasks(task_id(first), [held, *quick]))
            ex._next_index = first + 6  # written behind the executor's back
            wait_until(started.exists, "the held task to start", TIMEOUT)
            worker = parent_of(int(started.read_text()))
            claimed = [session.layout.key("claims", task_id(first + 1 + i)) for i in range(5)]

            def waiting(claimed: list[str] = claimed) -> list[str]:
                return [key for key in claimed if loop.run(store.exists(key))]

            with contextlib.suppress(AssertionError):
                wait_until(lambda: len(waiting()) >= 2, "tasks claimed with the held one", 15)
                break
            release.write_text("go")
        else:
            pytest.fail("in three tries the worker never claimed tasks together")
        together = waiting()
        os.kill(worker, signal.SIGTERM)
        wait_until(lambda: not waiting(), "every waiting task to be handed back", TIMEOUT)
        release.write_text("go")
        again = DetachedExecutor.attach(ex.session_id)  # its workers run what came back
        assert [f.result(timeout=TIMEOUT) for f in again.futures[first + 1 : first + 6]] == [
            i * i for i in range(5)
        ]
        again.detach()

        def exit_reason() -> str:
            entry = next(w for w in loop.run(session.workers()) if w.get("pid") == worker)
            return str(entry.get("reason") or "")

        wait_until(exit_reason, "the worker to record why it exited", TIMEOUT)
        assert exit_reason().count("claimed ahead, not started") == len(together)
    finally:
        for release in releases:
            release.write_text("go")
        ex.cleanup(force=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_after_sigterm_a_worker_hands_back_its_task_claimed_ahead_and_waits_without_spinning(
    prefix, tmp_path, monkeypatch
):
    monkeypatch.setenv("STARBURST_TERM_GRACE", "600")  # the running task may finish
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)
    store, layout, loop = ex._runtime.store, ex._session.layout, ex._runtime.loop
    try:
        assert ex.submit(tasks.sleep_for, WARM_TASK).result(timeout=TIMEOUT) == WARM_TASK
        slow = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the held task to start", TIMEOUT)
        worker = parent_of(int(started.read_text()))
        following = ex.submit(tasks.square, 5)
        claim = layout.key("claims", following.task_id)
        wait_until(lambda: loop.run(store.exists(claim)), "the claim ahead", TIMEOUT)
        os.kill(worker, signal.SIGTERM)
        wait_until(lambda: not loop.run(store.exists(claim)), "the hand-back", TIMEOUT)
        # Its slot's task runs on through the grace; the worker only renews its lease.
        before, window = _cpu_seconds(worker), 3.0
        time.sleep(window)  # a measuring window, not a wait for a condition
        assert _cpu_seconds(worker) - before < window / 6
        release.write_text("go")
        assert slow.result(timeout=TIMEOUT) == int(started.read_text())
        assert following.result(timeout=TIMEOUT) == 25  # run by the worker that replaced it
        registry = loop.run(ex._session.workers())
        gone = next(w for w in registry if w.get("pid") == worker)
        assert "handed back" in str(gone.get("reason")) and "claimed ahead" in str(gone["reason"])
    finally:
        release.write_text("go")
        ex.cleanup(force=True)


def test_a_task_process_is_out_of_reach_of_a_sigterm_to_its_workers_process_group():
    """A local scale-down SIGTERMs a worker's process group. A task process that is still
    starting (not yet ignoring SIGTERM) must not die of it and fail its task."""
    from starburst_executor.worker.child import TaskProcess

    process = TaskProcess()
    process.start()
    try:
        assert process.pid is not None
        assert os.getpgid(process.pid) != os.getpgid(0)
    finally:
        process.stop()
