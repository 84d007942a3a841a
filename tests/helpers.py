"""Small helpers shared by test modules."""

from __future__ import annotations

import os
import subprocess
import sys


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
