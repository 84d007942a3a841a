"""Small helpers shared by test modules."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def starburst(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``starburst`` command in a fresh interpreter with this environment
    (and ``env`` on top of it)."""
    return subprocess.run(
        [sys.executable, "-m", "starburst_executor.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def wait_until(condition: Callable[[], object], what: str, timeout: float = 180) -> float:
    """Wait for ``condition()`` to be truthy (generous deadline); returns the seconds taken."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def parent_of(pid: int) -> int:
    """The parent of ``pid``: the worker of a detached worker's task process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent for {pid}")


def session_workers(session_id: str) -> list[int]:
    """Live local processes of ``session_id``'s workers (and their task processes):
    those whose output goes to the session's log folder, however they were started."""
    from starburst_executor._procs import writers_under
    from starburst_executor.config import starburst_home

    return writers_under(starburst_home() / "logs" / session_id)
