"""Ctrl-C: a real SIGINT sent to a script, as a terminal sends it, inside a ``with``
block and in a script that never closes its executor."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from starburst_executor import DetachedExecutor

TIMEOUT = 120

EPHEMERAL = """
import sys, tasks
from starburst_executor import StarburstExecutor
marks = sys.argv[1]
with StarburstExecutor(max_workers=2) as ex:
    print(ex.session_id, flush=True)
    futures = [
        ex.submit(tasks.touch_then_wait, f"{marks}/started-{i}", f"{marks}/never")
        for i in range(6)
    ]
    print("submitted", flush=True)
    futures[0].result()
"""

DETACHED = """
import sys, tasks
from starburst_executor import DetachedExecutor
marks = sys.argv[1]
with DetachedExecutor(max_workers=1) as ex:
    print(ex.session_id, flush=True)
    ex.submit(tasks.touch_then_wait, f"{marks}/started-0", f"{marks}/release").result()
"""


def _without_with(script: str) -> str:
    """The same script with the executor left open: the interrupt reaches the exit hook."""
    head, body = script.split("as ex:\n")
    opened = head.replace("with ", "ex = ", 1).rstrip() + "\n"
    lines = [ln.removeprefix("    ") for ln in body.splitlines()]
    return opened + "\n".join(lines) + "\n"


SCRIPT_FORMS = pytest.mark.parametrize("form", ["with", "no-with"])


def _script(script: str, form: str) -> str:
    return script if form == "with" else _without_with(script)


def _start(script: str, marks: Path) -> subprocess.Popen[str]:
    """The script as a terminal's shell starts it: with SIGINT's default handling (a
    process pool's worker, xdist's included, may have it ignored, and children inherit
    that)."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(marks)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(paths: list[Path], proc: subprocess.Popen[str]) -> None:
    """Until each file holds the pid its task writes into it."""
    deadline = time.monotonic() + TIMEOUT
    while not all(p.exists() and p.read_text() for p in paths):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _interrupt(proc: subprocess.Popen[str]) -> tuple[float, str]:
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT)
    return time.monotonic() - sent, err


@SCRIPT_FORMS
def test_ctrl_c_cancels_queued_calls_and_stops_running_workers(prefix, tmp_path, form):
    proc = _start(_script(EPHEMERAL, form), tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()  # the session id
    # Every call is submitted before the interrupt: on a loaded machine the first two
    # may start while the loop still submits.
    assert proc.stdout.readline().strip() == "submitted", proc.communicate()
    started = [tmp_path / "started-0", tmp_path / "started-1"]
    _wait_for(started, proc)
    pids = [int(p.read_text()) for p in started]
    took, err = _interrupt(proc)
    print(f"stopped {took:.2f}s after SIGINT")
    # Without the interrupt handling, `with` waits for all six calls (each up to 60 s).
    assert took < 20, f"took {took:.1f}s to stop"
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    line = next(ln for ln in err.splitlines() if ln.startswith("starburst: interrupted"))
    # Six calls on two workers: two run, the rest are queued, but for one the
    # dispatcher may be starting just as the interrupt lands.
    found = re.search(r"cancelled (\d+) queued call\(s\), stopped (\d+) running worker", line)
    assert found, line
    cancelled, stopped = int(found[1]), int(found[2])
    assert stopped == 2 and cancelled + stopped in (5, 6), line
    assert not any(_running(pid) for pid in pids)
    assert not (tmp_path / "started-2").exists()  # no queued call ever started


@SCRIPT_FORMS
def test_ctrl_c_in_a_detached_executor_leaves_the_session_running(prefix, tmp_path, form):
    proc = _start(_script(DETACHED, form), tmp_path)
    assert proc.stdout is not None
    sid = proc.stdout.readline().strip()
    _wait_for([tmp_path / "started-0"], proc)
    took, err = _interrupt(proc)
    assert took < 20, f"took {took:.1f}s to stop"
    assert f"session {sid} keeps running" in err
    assert f"DetachedExecutor.attach('{sid}')" in err
    ex = DetachedExecutor.attach(sid)
    try:
        assert ex.status().running == 1  # the worker goes on without its client
        (tmp_path / "release").write_text("go")
        assert ex.futures[0].result(timeout=TIMEOUT) == int((tmp_path / "started-0").read_text())
    finally:
        ex.cleanup(force=True)
