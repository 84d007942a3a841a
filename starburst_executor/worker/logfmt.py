"""What a task prints, as it reaches the worker's log: one prefix per line.

Several tasks run one after another on a worker, and ``starburst logs`` reads the
log of each worker: a line is only useful with its time and its task, so each line
a task writes to stdout or stderr is stamped ``<time> <task id> | <text>``, the
time in the format of the worker's own log records.
"""

from __future__ import annotations

import contextlib
import io
import time
from typing import TextIO


def stamp(now: float | None = None) -> str:
    """``2026-01-31 12:00:00,123``: the format of ``logging``'s ``asctime``."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


class StampedLines(io.TextIOBase):
    """Writes to ``real`` with ``<time> <task id> | `` at the start of every line."""

    def __init__(self, real: TextIO, task_id: str) -> None:
        self.real = real
        self.task_id = task_id
        self._at_line_start = True

    def write(self, s: str) -> int:
        out: list[str] = []
        for piece in s.splitlines(keepends=True):
            if self._at_line_start:
                out.append(f"{stamp()} {self.task_id} | ")
            out.append(piece)
            self._at_line_start = piece.endswith(("\n", "\r"))
        with contextlib.suppress(Exception):
            self.real.write("".join(out))
        return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.real.flush()
