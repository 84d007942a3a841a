"""Workers and ``python -c`` children import the adapted CPython module by name."""

from __future__ import annotations

import os
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_HERE, os.environ.get("PYTHONPATH", "")) if p
)
