"""Detach in one interpreter, attach in another; exactly-once under six workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import tasks

from starburst_executor import DetachedExecutor

TIMEOUT = 180


def _python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_submit_detach_exit_then_attach_in_a_new_interpreter(prefix):
    sid = (
        _python(
            """
        from starburst_executor import DetachedExecutor
        def cube(x):  # defined in __main__: travels by value
            return x ** 3
        ex = DetachedExecutor(max_workers=3)
        for i in range(50):
            ex.submit(cube, i)
        print(ex.detach())
        """
        )
        .strip()
        .splitlines()[-1]
    )
    out = _python(
        f"""
        import json
        from concurrent.futures import as_completed
        from starburst_executor import DetachedExecutor
        ex = DetachedExecutor.attach({sid!r})
        results = sorted(f.result() for f in as_completed(ex.futures, timeout={TIMEOUT}))
        status = ex.status()
        print(json.dumps({{"results": results, "completed": status.completed,
                           "total": status.total, "n": len(ex.futures)}}))
        ex.cleanup(force=True)
        """
    )
    data = json.loads(out.strip().splitlines()[-1])
    assert data["n"] == 50
    assert data["results"] == [i**3 for i in range(50)]
    assert data["completed"] == 50 == data["total"]


def test_six_workers_run_each_of_300_tasks_exactly_once(prefix, tmp_path: Path):
    path = tmp_path / "indices.txt"
    ex = DetachedExecutor(max_workers=6)
    try:
        futures = [ex.submit(tasks.append_index, str(path), i) for i in range(300)]
        assert sorted(f.result(timeout=TIMEOUT) for f in futures) == list(range(300))
        counts = Counter(int(line) for line in path.read_text().split())
        assert sorted(counts) == list(range(300))
        assert set(counts.values()) == {1}
        workers = ex._runtime.loop.run(ex._session.workers())
        assert len(workers) >= 2  # the work really was shared
        assert ex.status().completed == 300
    finally:
        ex.cleanup(force=True)
