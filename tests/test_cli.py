"""The ``starburst`` command on a live local session, output parsed from --json."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from pathlib import Path

import pytest
import tasks
from helpers import starburst, wait_until

from starburst_executor import DetachedExecutor


def test_sessions_status_extend_cleanup_on_a_live_session(prefix, starburst_home):
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

    logs = starburst_home / "logs" / sid
    assert logs.is_dir()
    done = starburst("cleanup", sid, "--force", "--json")
    assert done.returncode == 0, done.stderr
    assert sid not in starburst("sessions").stdout
    assert not logs.exists()  # local logs go with the session


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

        collected = json.loads(starburst("collect", sid, "--json").stdout)
        assert [c["state"] for c in collected] == ["completed"] * 3 + ["failed"]
        assert [c["value"] for c in collected[:3]] == [0, 1, 2]
        assert "CustomError" in collected[3]["error"]
        import cloudpickle

        # --out writes the outcomes to the file and prints a count, not every outcome.
        out = tmp_path / "outcomes.pkl"
        written = starburst("collect", sid, "--out", str(out))
        assert written.returncode == 0, written.stderr
        assert written.stdout.splitlines() == [
            f"4 outcomes (3 completed, 1 failed, 0 cancelled) written to {out} "
            "(a pickled list of TaskOutcome)"
        ]
        with open(out, "rb") as f:
            assert [o.task_id for o in cloudpickle.load(f)] == [f.task_id for f in futures]
        summary = json.loads(starburst("collect", sid, "--json", "--out", str(out)).stdout)
        assert (summary["outcomes"], summary["completed"], summary["failed"]) == (4, 3, 1)

        task_log = starburst("logs", sid, "--task", futures[1].task_id)
        assert "hello from 1" in task_log.stdout and "careful with 1" in task_log.stdout
        worker_logs = starburst("logs", sid)
        header = next(line for line in worker_logs.stdout.splitlines() if line.startswith("== "))
        assert sid in header and header.endswith(".log")
        # Each line a task printed carries the time and the task id; failures show whole.
        stamped = re.compile(
            rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} {futures[0].task_id} \| hello from 0$",
            re.MULTILINE,
        )
        assert stamped.search(worker_logs.stdout), worker_logs.stdout
        failed_at = worker_logs.stdout.index(f"task {futures[3].task_id} failed:")
        assert "raise CustomError" in worker_logs.stdout[failed_at:]
        followed = starburst("logs", sid, "--follow").stdout.splitlines()
        labels = {line.split("] ", 1)[0] + "]" for line in followed}
        assert all(re.fullmatch(r"\[w-[0-9a-z-]+\]", label) for label in labels), labels
        assert any(line.endswith(f"{futures[1].task_id} | hello from 1") for line in followed)

        # --json prints JSON, for one task and for the worker logs
        one = json.loads(starburst("logs", sid, "--task", futures[3].task_id, "--json").stdout)
        assert one["task_id"] == futures[3].task_id and one["finished"] is True
        assert "CustomError: task 9 failed on purpose" in one["error"]
        assert "fail_if" in one["traceback"]
        lines = json.loads(starburst("logs", sid, "--json").stdout)
        assert any("hello from 0" in r["line"] for r in lines)
        assert {r["worker"] for r in lines} == {Path(r["log"]).stem for r in lines}

        # cancel --task on a finished task says why nothing was cancelled
        late = starburst("cancel", sid, "--task", futures[0].task_id)
        assert late.returncode == 0, late.stderr
        assert "0 task(s) cancelled: it already finished (completed)" in late.stdout

        # cancel: hold the only worker, queue three tasks, cancel them from the CLI. The
        # worker may claim the first one ahead (as ProcessPoolExecutor queues one call
        # more than it has processes), never the others.
        started, release = tmp_path / "started", tmp_path / "release"
        ex.submit(tasks.touch_then_wait, str(started), str(release))
        wait_until(started.exists, "the only worker to start the busy task")
        queued = [ex.submit(tasks.square, i) for i in range(3)]
        ex.flush()  # another process (the CLI) sees durable calls only
        one = json.loads(starburst("cancel", sid, "--task", queued[2].task_id, "--json").stdout)
        assert one["cancelled"] == 1
        busy = json.loads(
            starburst("cancel", sid, "--task", ex.futures[4].task_id, "--json").stdout
        )
        assert busy["cancelled"] == 0 and "a worker is running it" in busy["reason"]
        rest = json.loads(starburst("cancel", sid, "--json").stdout)
        release.write_text("go")
        concurrent.futures.wait(ex.futures, timeout=60)
        # The running task and a task claimed ahead cannot be cancelled: they complete.
        assert queued[1].cancelled() and queued[2].cancelled()
        assert rest["cancelled"] == 1 + queued[0].cancelled()
        assert queued[0].cancelled() or queued[0].result() == 0
        assert ex.status().cancelled == 2 + queued[0].cancelled()
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


def test_extend_refuses_non_positive_seconds_without_a_traceback(prefix):
    for seconds in ("-100", "0"):
        result = starburst("extend", "session-0000000000000000", seconds)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "extend needs a positive number of seconds" in result.stderr


def test_debug_is_accepted_after_the_subcommand(prefix):
    for argv in (["--debug", "status", "nope"], ["status", "nope", "--debug"]):
        result = starburst(*argv)
        assert result.returncode == 1  # the error is raised, not printed as one line
        assert "Traceback" in result.stderr and "InvalidSessionId" in result.stderr
    plain = starburst("status", "nope")
    assert "Traceback" not in plain.stderr


def test_bare_command_prints_the_help():
    result = starburst()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: starburst")
    for command in ("sessions", "status", "collect", "logs", "cleanup", "--debug"):
        assert command in result.stdout


def test_a_stopped_local_server_is_reported_not_started(prefix, tmp_path):
    """`local status` exits 3 when the server is down; the commands that only look say
    it is stopped and exit 3 too, and none of them starts it."""
    env = {"STARBURST_HOME": str(tmp_path / "home")}
    status = starburst("local", "status", "--json", env=env)
    assert status.returncode == 3
    assert json.loads(status.stdout)["running"] is False
    for argv in (
        ["sessions"],
        ["status", "session-0000000000000000"],
        ["logs", "session-0000000000000000"],
        ["collect", "session-0000000000000000"],
    ):
        result = starburst(*argv, env=env)
        assert result.returncode == 3, (argv, result.stderr)
        assert "local S3 server is stopped" in result.stderr
        assert "starburst local start" in result.stderr
    assert not (tmp_path / "home" / "server.json").exists()
    assert starburst("local", "status", env=env).returncode == 3


def _running(pid: int) -> bool:
    """Alive and not a zombie (the worker is this test process's child, unreaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.long
def test_bulk_cleanup_by_retention_and_all(prefix, starburst_home, tmp_path):
    finished = DetachedExecutor(max_workers=1)
    assert finished.submit(tasks.square, 3).result(timeout=120) == 9
    finished.shutdown()
    busy = DetachedExecutor(max_workers=1)
    started = tmp_path / "started"
    busy.submit(tasks.touch_then_wait, str(started), str(tmp_path / "never"))
    wait_until(lambda: started.exists() and started.read_text(), "the busy task to start")
    worker_pid = int(started.read_text())
    busy.detach()  # the session runs on without a client, as a detached session does
    ids = {finished.session_id, busy.session_id}

    def listed() -> set[str]:
        return {r["session_id"] for r in json.loads(starburst("sessions", "--json").stdout)}

    # Finished just now: younger than 7 days, so kept.
    kept = json.loads(starburst("cleanup", "--finished", "--older-than", "7d", "--json").stdout)
    assert kept["deleted"] == [] and ids <= listed()

    # The retention setting is the default age; the running session is never "finished".
    time.sleep(1.5)  # the finished session must be older than the 1 s retention
    plan = starburst("cleanup", "--finished", "--dry-run", env={"STARBURST_RETENTION": "1s"})
    assert f"would delete {finished.session_id}" in plan.stdout and ids <= listed()
    swept = starburst("cleanup", "--finished", "--json", env={"STARBURST_RETENTION": "1s"})
    assert json.loads(swept.stdout)["deleted"] == [finished.session_id]
    assert busy.session_id in listed() and finished.session_id not in listed()
    assert not (starburst_home / "logs" / finished.session_id).exists()

    # --all takes the running one too, and stops its worker.
    everything = json.loads(starburst("cleanup", "--all", "--json").stdout)
    assert everything["deleted"] == [busy.session_id]
    assert not listed() & ids
    assert not (starburst_home / "logs" / busy.session_id).exists()
    wait_until(lambda: not _running(worker_pid), "the cleaned-up session's worker to stop")

    usage = starburst("cleanup", "--older-than", "1d")
    assert usage.returncode == 1 and "one of" in usage.stderr
    bad = starburst("cleanup", "--finished", "--older-than", "soon")
    assert bad.returncode == 1 and "invalid duration 'soon'" in bad.stderr
