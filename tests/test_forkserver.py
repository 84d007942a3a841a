"""Local workers (per call, and a detached session's pool) are forked from a template
that has imported everything."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tasks
from helpers import parent_of, session_workers, wait_until

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor._procs import pid_alive

TIMEOUT = 120


def test_per_call_workers_are_forked_from_one_template(prefix):
    with StarburstExecutor(max_workers=2) as ex:
        parents = {f.result(timeout=TIMEOUT) for f in [ex.submit(os.getppid) for _ in range(4)]}
        assert len(parents) == 1 and os.getpid() not in parents
        (template,) = parents
        cmdline = Path(f"/proc/{template}/cmdline").read_bytes().split(b"\0")
        assert b"starburst_executor.worker.forkserver" in cmdline
        # Each call still runs in a fresh process with the environment of its own task.
        pids = [f.result(timeout=TIMEOUT) for f in [ex.submit(os.getpid) for _ in range(3)]]
        assert len(set(pids)) == 3
        task_ids = [
            f.result(timeout=TIMEOUT)
            for f in [ex.submit(tasks.env, "STARBURST_TASK_ID") for _ in range(2)]
        ]
        assert task_ids == [f.task_id for f in ex.futures[-2:]]


def template_of_a_call(ex: StarburstExecutor) -> int:
    """The template that forked the worker of one call of ``ex``."""
    template = ex.submit(os.getppid).result(timeout=TIMEOUT)
    cmdline = Path(f"/proc/{template}/cmdline").read_bytes().split(b"\0")
    assert b"starburst_executor.worker.forkserver" in cmdline
    return template


def test_executors_in_turn_share_a_template_and_a_live_one_is_kept(prefix, monkeypatch, tmp_path):
    """A process that creates executor after executor starts the template once. A
    template in use stays while another working directory needs its own, and the idle
    one is let go only when yet another setup comes."""
    with StarburstExecutor(max_workers=1) as first:
        template = template_of_a_call(first)
    with StarburstExecutor(max_workers=1) as second:
        assert template_of_a_call(second) == template
        home = os.getcwd()
        monkeypatch.chdir(tmp_path)  # a template imports from its working directory
        with StarburstExecutor(max_workers=1) as elsewhere:
            other = template_of_a_call(elsewhere)
            assert other != template
        monkeypatch.chdir(home)
        assert template_of_a_call(second) == template  # in use meanwhile: kept
    with StarburstExecutor(max_workers=1) as third:
        assert template_of_a_call(third) == template
    # The idle template of the other directory was let go when this one was taken.
    wait_until(lambda: not pid_alive(other), "the idle template to exit")


def test_a_forked_client_starts_its_own_template(prefix):
    """The parent's template answers on the parent's pipe: a forked child, with the
    parent's executor open across the fork or not, must not use it, and the parent's
    executor goes on with its own."""
    script = """
        import os, sys
        from starburst_executor import StarburstExecutor
        from starburst_executor.launch import local

        def child(parent_template):
            assert not local._templates, "the parent's templates were inherited"
            with StarburstExecutor(max_workers=1) as ex:
                assert ex.submit(os.getppid).result(timeout=120) != parent_template

        def fork(parent_template):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    child(parent_template)
                    code = 0
                finally:
                    os._exit(code)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

        with StarburstExecutor(max_workers=1) as ex:
            template = ex.submit(os.getppid).result(timeout=120)
            fork(template)  # with the executor open across the fork
            assert ex.submit(os.getppid).result(timeout=120) == template
        fork(template)  # with the template idle
        with StarburstExecutor(max_workers=1) as ex:
            assert ex.submit(os.getppid).result(timeout=120) == template
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])


def test_a_reused_pid_is_told_from_its_earlier_worker():
    """The template is shared by the process's executors: a handle one kept for a worker
    that exited must not take a later worker with the same pid for its own, nor see
    what that one reports."""
    import io
    import types

    from starburst_executor.launch.local import ForkedWorker, ForkServer

    server = ForkServer.__new__(ForkServer)
    server._pids, server._forks, server._exits, server._stored = queue.Queue(), {}, {}, set()
    server.proc = types.SimpleNamespace(poll=lambda: None)  # type: ignore[assignment]

    def feed(*lines: bytes) -> None:
        server.proc.stdout = io.BytesIO(b"".join(lines))  # type: ignore[attr-defined]
        server._read()

    feed(b'{"pid": 42}\n')
    earlier = ForkedWorker(*server._pids.get_nowait(), server)
    assert earlier.poll() is None
    feed(b'{"stored": 42}\n', b'{"exited": 42, "code": 0}\n', b'{"pid": 42}\n')
    later = ForkedWorker(*server._pids.get_nowait(), server)
    assert earlier.poll() == 0 and earlier.stored()
    assert later.poll() is None and not later.stored()  # nothing of the earlier's
    feed(b'{"exited": 42, "code": 3}\n')
    assert later.poll() == 3 and not later.stored() and earlier.poll() == 0
    assert not server._exits and not server._stored  # forgotten once their handles read


def test_the_template_can_be_turned_off(prefix, monkeypatch):
    monkeypatch.setenv("STARBURST_FORKSERVER", "0")
    with StarburstExecutor(max_workers=1) as ex:
        assert ex.submit(os.getppid).result(timeout=TIMEOUT) == os.getpid()


def test_a_detached_sessions_workers_are_forked_and_keep_their_logs(prefix):
    ex = DetachedExecutor(max_workers=1)
    try:
        # The task runs in the worker's task process; the worker is the template's child.
        worker = ex.submit(os.getppid).result(timeout=TIMEOUT)
        template = parent_of(worker)
        cmdline = Path(f"/proc/{template}/cmdline").read_bytes().split(b"\0")
        assert b"starburst_executor.worker.forkserver" in cmdline
        assert worker in session_workers(ex.session_id)
        failing = ex.submit(tasks.fail_if, 1, 1)
        with pytest.raises(tasks.CustomError):
            failing.result(timeout=TIMEOUT)
        # The worker's output reaches its log file (not /dev/null), traceback included.
        (log,) = ex.worker_logs()
        wait_until(
            lambda: "raise CustomError" in Path(log).read_text(), "the failure in the worker log"
        )
    finally:
        ex.cleanup(force=True)
    assert session_workers(ex.session_id) == []


def test_a_forked_worker_opens_the_s3_client_its_template_made(prefix, starburst_home, monkeypatch):
    """The template makes (without opening) the S3 client of the store it last forked
    a worker for; the next worker of that store opens it instead of making its own."""
    monkeypatch.setenv("STARBURST_LOG_LEVEL", "DEBUG")
    with StarburstExecutor(max_workers=1) as ex:
        futures = [ex.submit(os.getpid) for _ in range(3)]
        assert len({f.result(timeout=TIMEOUT) for f in futures}) == 3
        logs = [
            (starburst_home / "logs" / ex.session_id / f"{f.worker_id}.log").read_text()
            for f in futures
        ]
    made = "S3 client for"
    assert made in logs[-1], logs[-1]
    assert sum(made in log for log in logs) >= len(logs) - 1


def test_a_per_call_worker_says_its_outcome_is_stored_before_it_exits(prefix):
    """The client reads a forked worker's outcome when the worker says it is stored,
    not after its exit; none of those workers outlives the executor."""
    with StarburstExecutor(max_workers=2) as ex:
        pids = {f.result(timeout=TIMEOUT) for f in [ex.submit(os.getpid) for _ in range(4)]}
        handles = {w.pid: w for w in ex._runtime.launcher._forked[ex.session_id]}
        # Each said so, on the template's reply pipe.
        assert pids <= handles.keys() and all(handles[pid].stored() for pid in pids)
        sid = ex.session_id
    assert session_workers(sid) == []
