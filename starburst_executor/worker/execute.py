"""Running one call: decode the payload, run it with its output captured, build the outcome.

``run_call`` never raises: whatever the task does (an exception whose ``__str__``
raises, a ``__reduce__`` that calls ``sys.exit``, a result that cannot be pickled),
the answer is an ``Outcome``. It runs in the worker's task process (detached
sessions) or in the worker itself (one worker per task).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from .._core.codec import Outcome, decode_call
from .._core.layout import task_index
from .._core.seeds import apply_task_seed
from .logfmt import StampedLines


class _Tee(io.TextIOBase):
    """Writes to the real stream and keeps a copy for the task's outcome."""

    def __init__(self, real: TextIO | io.TextIOBase) -> None:
        self.real = real
        self.copy = io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        with contextlib.suppress(Exception):
            self.real.write(s)
        return len(s)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self.real.flush()


@contextlib.contextmanager
def _captured(tid: str) -> Iterator[tuple[_Tee, _Tee]]:
    # The worker's log gets each line stamped with its time and task; the outcome
    # keeps the task's own text.
    out, err = _Tee(StampedLines(sys.stdout, tid)), _Tee(StampedLines(sys.stderr, tid))
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        warnings.catch_warnings(),
    ):
        # A fresh filter state per task: each task shows its own warnings, not only the
        # first task on this worker that raised them.
        warnings.simplefilter("default")
        yield out, err


def run_call(
    tid: str,
    payload: bytes,
    *,
    key: str,
    seed: int | None,
    meta: dict[str, Any],
    pieces: Mapping[str, bytes] | None = None,
    immutable: dict[str, Any] | None = None,
) -> Outcome:
    """Run the call stored in ``payload`` (its big ``pieces`` by digest) and return its
    outcome; never raises."""
    started = time.time()
    try:
        fn, args, kwargs = decode_call(payload, key=key, pieces=pieces, immutable=immutable)
    except BaseException as err:
        outcome = Outcome.failure(tid, err, **meta)
    else:
        with _captured(tid) as (out, err_stream):
            try:
                if seed is not None:
                    apply_task_seed(seed, task_index(tid))
                value = fn(*args, **kwargs)
            except BaseException as exc:  # the task's failure is its outcome
                outcome = Outcome.failure(tid, exc, **meta)
            else:
                outcome = Outcome.success(tid, value, **meta)
        outcome.stdout = out.copy.getvalue()
        outcome.stderr = err_stream.copy.getvalue()
    outcome.started, outcome.finished = started, time.time()
    return outcome
