"""Never lose a result: injected S3 faults, killed clients, a restarted server, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import tasks
from fault_proxy import FaultProxy
from helpers import parent_of, wait_until

from starburst_executor import DetachedExecutor
from starburst_executor._core.codec import decode_batch, decode_call
from starburst_executor.store.local_server import LocalServer, read_credentials

TIMEOUT = 240


@pytest.fixture
def via_proxy(starburst_home, prefix, monkeypatch):  # type: ignore[no-untyped-def]
    """Route the library and its workers through a fault-injecting proxy."""
    info = LocalServer(starburst_home).ensure_running()
    access, secret = read_credentials(starburst_home)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    def start(fraction: float, seed: int = 1) -> FaultProxy:
        proxy = FaultProxy(info.endpoint_url, fraction, seed=seed).__enter__()
        monkeypatch.setenv("STARBURST_S3_ENDPOINT", proxy.url)
        monkeypatch.setenv("STARBURST_BUCKET", "starburst")
        started.append(proxy)
        return proxy

    started: list[FaultProxy] = []
    yield start
    for proxy in started:
        proxy.__exit__()


def test_every_task_has_exactly_one_outcome_under_injected_faults(via_proxy, tmp_path):
    proxy = via_proxy(0.08)
    path = tmp_path / "ran.txt"
    ex = DetachedExecutor(max_workers=3, lease_seconds=6)
    try:
        futures = [ex.submit(tasks.append_index, str(path), i) for i in range(150)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(150))
        status = ex.status()
        assert status.completed == 150 and status.failed == 0
    finally:
        ex.cleanup(force=True)
    assert proxy.faults >= 20, proxy.injected
    assert set(proxy.injected) == {"error500", "slowdown503", "reset", "delay", "lost_response"}
    ran = Counter(int(x) for x in path.read_text().split())
    assert sorted(ran) == list(range(150))  # every task ran; reruns (lease takeovers) allowed
    assert sum(ran.values()) - 150 <= status.reexecuted


def test_client_killed_mid_submit_loop_keeps_every_flushed_call(prefix, tmp_path):
    """Submits are pipelined: SIGKILL loses at most the calls after the last flush,
    and never leaves a half-written task."""
    script = textwrap.dedent(
        """
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor(max_workers=2)
        print(ex.session_id, flush=True)
        for i in range(100_000):
            ex.submit(pow, i, 2)
            if i % 50 == 49:
                ex.flush()
                print(i + 1, flush=True)  # calls 0..i are durable
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    for _ in range(4):
        proc.stdout.readline()
    proc.kill()  # SIGKILL in the middle of the submit loop
    proc.wait()
    flushed = [int(line) for line in proc.stdout.read().split()] or [200]
    last_flush = flushed[-1]
    ex = DetachedExecutor.attach(sid)
    try:
        indices = [int(f.task_id[1:]) for f in ex.futures]
        assert set(range(last_flush)) <= set(indices)  # every flushed call is there
        # Lost: only calls after the last flush (one more flush may have ended unprinted).
        assert max(indices) < last_flush + 100
        layout, loop, store = ex._session.layout, ex._runtime.loop, ex._session.store
        stored = {}
        for o in loop.run(store.list_objects(layout.dir("tasks"))).objects:
            first, count = layout.task_range(o.key)  # only task objects: no junk, no part
            body = loop.run(store.get(o.key)).body
            payloads = [body] if count == 1 else decode_batch(body, count, key=o.key)
            for index, payload in enumerate(payloads, first):
                stored[index] = decode_call(payload, key=o.key)  # whole, never half-written
        assert sorted(stored) == indices
        assert all(stored[i] == (pow, (i, 2), {}) for i in indices)
        results = [f.result(timeout=TIMEOUT) for f in ex.futures]
        assert results == [i * i for i in indices]
        assert ex.status().completed == len(indices)
    finally:
        ex.cleanup(force=True)


def test_interpreter_exit_makes_every_submitted_call_durable(prefix):
    script = textwrap.dedent(
        """
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor(max_workers=1, min_workers=0)
        print(ex.session_id, flush=True)
        for i in range(300):
            ex.submit(pow, i, 2)
        # no flush, no with block: the interpreter's exit stores the calls
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=TIMEOUT,
        check=True,
    )
    sid = out.stdout.split()[0]
    ex = DetachedExecutor.attach(sid, launch_workers=False)
    try:
        assert [f.task_id for f in ex.futures] == [f"t{i:09d}" for i in range(300)]
    finally:
        ex.cleanup(force=True)


@pytest.mark.long
def test_restarted_local_server_is_ridden_through(tmp_path, monkeypatch):
    home = tmp_path / "own-home"
    monkeypatch.setenv("STARBURST_HOME", str(home))
    monkeypatch.setenv("STARBURST_PREFIX", "restart")
    server = LocalServer(home)
    first = server.ensure_running()
    ex = DetachedExecutor(max_workers=2, lease_seconds=6)
    try:
        futures = [ex.submit(tasks.sleep_for, 0.05) for _ in range(60)]
        futures[5].result(timeout=TIMEOUT)
        os.kill(first.pid, signal.SIGKILL)  # the S3 server dies mid-session
        os.waitpid(first.pid, 0)
        second = server.ensure_running()  # same data, same port
        assert second.endpoint_url == first.endpoint_url
        assert [f.result(timeout=TIMEOUT) for f in futures] == [0.05] * 60
        assert ex.status().completed == 60
        ex.cleanup(force=True)
    finally:
        server.stop()


def test_sigterm_mid_task_hands_it_back_to_another_worker(prefix, tmp_path, monkeypatch):
    monkeypatch.setenv("STARBURST_TERM_GRACE", "1")  # the 120 s Spot notice, shortened
    started, release = tmp_path / "started", tmp_path / "release"
    ex = DetachedExecutor(max_workers=1, lease_seconds=600)  # takeover would take 10 min
    try:
        future = ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the task to start")
        first_pid = int(started.read_text())  # the task process; its parent is the worker
        started.unlink()
        os.kill(parent_of(first_pid), signal.SIGTERM)
        # Handed back: a new worker (launched by the executor) claims it at once.
        wait_until(started.exists, "the task to be handed back and run again")
        release.write_text("go")
        second_pid = future.result(timeout=TIMEOUT)
        assert second_pid != first_pid
    finally:
        release.write_text("go")
        ex.cleanup(force=True)


def test_no_credentials_in_manifest_registry_logs_or_errors(prefix, starburst_home):
    _, secret = read_credentials(starburst_home)
    ex = DetachedExecutor(max_workers=1)
    try:
        future = ex.submit(tasks.fail_if, 1, 1)
        with pytest.raises(tasks.CustomError) as info:
            future.result(timeout=TIMEOUT)
        store, layout = ex._runtime.store, ex._session.layout
        everything = ex._runtime.loop.run(store.list_objects(layout.root))
        for obj in everything.objects:
            body = ex._runtime.loop.run(store.get(obj.key)).body
            assert secret.encode() not in body, obj.key
        for log in Path(starburst_home / "logs" / ex.session_id).glob("*.log"):
            assert secret not in log.read_text()
        assert secret not in str(info.value) and secret not in repr(ex.status())
    finally:
        ex.cleanup(force=True)
