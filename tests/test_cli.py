"""The ``starburst`` command on a live local session, output parsed from --json."""

from __future__ import annotations

import concurrent.futures
import json
import time

import tasks
from helpers import starburst

from starburst_executor import DetachedExecutor


def test_sessions_status_extend_cleanup_on_a_live_session(prefix):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    futures = [ex.submit(tasks.fail_if, i, 1) for i in range(3)]
    concurrent.futures.wait(futures, timeout=120)

    rows = json.loads(starburst("sessions", "--json").stdout)
    row = next(r for r in rows if r["session_id"] == sid)
    assert (row["total"], row["completed"], row["failed"]) == (3, 2, 1)

    status = json.loads(starburst("status", sid, "--json").stdout)
    assert status["progress"] == 1.0 and status["failed"] == 1

    before = ex.deadline
    extended = json.loads(starburst("extend", sid, "60", "--json").stdout)
    assert extended["deadline"] > before.isoformat()

    done = starburst("cleanup", sid, "--force", "--json")
    assert done.returncode == 0, done.stderr
    assert sid not in starburst("sessions").stdout


def test_errors_are_one_line_with_documented_exit_codes(prefix):
    bad = starburst("status", "not-a-session")
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "invalid session id" in bad.stderr
    missing = starburst("status", "session-0000000000000000")
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert starburst("no-such-command").returncode == 2


def test_local_status_reports_the_running_server(prefix, starburst_home):
    out = json.loads(starburst("local", "status", "--json").stdout)
    assert out["running"] is True and out["endpoint_url"].startswith("http://127.0.0.1:")
    assert out["home"] == str(starburst_home.resolve())


def test_watch_collect_logs_cancel(prefix, tmp_path):
    ex = DetachedExecutor(max_workers=1)
    sid = ex.session_id
    try:
        futures = [ex.submit(tasks.chatty, i) for i in range(3)]
        futures.append(ex.submit(tasks.fail_if, 9, 9))

        watch = starburst("status", sid, "--watch", "--interval", "0.2", "--json")
        assert watch.returncode == 0, watch.stderr
        updates = [json.loads(line) for line in watch.stdout.splitlines()]
        assert updates[-1]["total"] == 4 and updates[-1]["progress"] == 1.0
        assert updates[-1]["pending"] == updates[-1]["running"] == 0

        out = tmp_path / "outcomes.pkl"
        collected = json.loads(starburst("collect", sid, "--json", "--out", str(out)).stdout)
        assert [c["state"] for c in collected] == ["completed"] * 3 + ["failed"]
        assert [c["value"] for c in collected[:3]] == [0, 1, 2]
        assert "CustomError" in collected[3]["error"]
        import cloudpickle

        with open(out, "rb") as f:
            assert [o.task_id for o in cloudpickle.load(f)] == [f.task_id for f in futures]

        task_log = starburst("logs", sid, "--task", futures[1].task_id)
        assert "hello from 1" in task_log.stdout and "careful with 1" in task_log.stdout
        worker_logs = starburst("logs", sid)
        header = next(line for line in worker_logs.stdout.splitlines() if line.startswith("== "))
        assert sid in header and header.endswith(".log")
        assert "hello from 0" in worker_logs.stdout

        # cancel: hold the only worker, queue two tasks, cancel them from the CLI
        started, release = tmp_path / "started", tmp_path / "release"
        ex.submit(tasks.touch_then_wait, str(started), str(release))
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        queued = [ex.submit(tasks.square, i) for i in range(2)]
        one = json.loads(starburst("cancel", sid, "--task", queued[0].task_id, "--json").stdout)
        assert one["cancelled"] == 1
        rest = json.loads(starburst("cancel", sid, "--json").stdout)
        assert rest["cancelled"] == 1  # the running task cannot be cancelled
        release.write_text("go")
        concurrent.futures.wait(ex.futures, timeout=60)
        assert all(f.cancelled() for f in queued)
        assert ex.status().cancelled == 2
    finally:
        ex.cleanup(force=True)


def test_doctor_without_aws_credentials(prefix):
    result = starburst("doctor", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["python"]["level"] == "ok"
    assert checks["aws credentials"]["level"] == "warn"
    assert "aws configure" in checks["aws credentials"]["fix"]
    assert checks["local server"]["level"] == "ok"
    text = starburst("doctor").stdout
    assert "[WARN] aws credentials" in text and "fix:" in text
