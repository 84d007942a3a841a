"""The ``starburst`` command on a live local session, output parsed from --json."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys

import tasks

from starburst_executor import DetachedExecutor


def starburst(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "starburst_executor.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


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
