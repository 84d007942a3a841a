"""starburst-executor: run Python functions on AWS (or locally) like ProcessPoolExecutor.

The public names are re-exported here; everything else is private.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Quiet by default: applications choose whether and where the library's records go.
logging.getLogger("starburst_executor").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from ._core.futures import TaskFuture
    from ._core.session import SessionStatus
    from ._progress import progress
    from .detached import DetachedExecutor, SessionInfo, TaskOutcome, list_sessions
    from .ephemeral import StarburstExecutor

__all__ = [
    "DetachedExecutor",
    "SessionInfo",
    "SessionStatus",
    "StarburstExecutor",
    "TaskFuture",
    "TaskOutcome",
    "__version__",
    "list_sessions",
    "progress",
]

_LAZY = {
    "DetachedExecutor": "detached",
    "SessionInfo": "detached",
    "TaskOutcome": "detached",
    "list_sessions": "detached",
    "progress": "_progress",
    "SessionStatus": "_core.session",
    "StarburstExecutor": "ephemeral",
    "TaskFuture": "_core.futures",
}


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import starburst_executor` cheap (no SDK import until used).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'starburst_executor' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)
