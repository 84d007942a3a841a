"""Workers and ``python -c`` children import the adapted CPython module by name.

What only pytest needs lives here, not in that module: every worker, task process and
spawned child that runs one of its functions imports it, and pytest would add a third
of a second of CPU to each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_HERE, os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(autouse=True)
def _starburst_prefix(prefix: str) -> str:
    """Every test (and its workers and children) gets a key prefix of its own."""
    return prefix
