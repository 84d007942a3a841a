"""Progress bars over futures: tqdm when it is installed, a plain line otherwise."""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar, cast

F = TypeVar("F", bound="concurrent.futures.Future[Any]")


class _PlainBar:
    """A one-line text bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, desc: str, stream: IO[str]) -> None:
        self.total, self.desc, self.stream = total, desc, stream
        self.done = 0
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._drawn >= 0.1 or self.done >= self.total:
            self._drawn = now
            self.stream.write(
                "\r" + render_bar(self.done, self.total, now - self.started, self.desc)
            )
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def render_bar(
    done: int, total: int, elapsed: float, desc: str = "", *, baseline: int = 0, width: int = 30
) -> str:
    """``desc [#####.....] 50/100 50% 0:12 elapsed, ETA 0:12``.

    ``baseline`` is how many were done when timing started (for the ETA's rate).
    """
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    eta = "?"
    if done > baseline and total > done:
        eta = _clock(elapsed / (done - baseline) * (total - done))
    elif total and done >= total:
        eta = "0:00"
    label = f"{desc} " if desc else ""
    return (
        f"{label}[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {fraction:4.0%} "
        f"{_clock(elapsed)} elapsed, ETA {eta}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _bar(total: int, desc: str, stream: IO[str] | None) -> Any:
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc or None, file=stream)
    except ImportError:
        return _PlainBar(total, desc, stream or sys.stderr)


def progress(futures: Iterable[F], *, desc: str = "", stream: IO[str] | None = None) -> Iterator[F]:
    """Yield ``futures`` as they complete, drawing a progress bar.

    Example::

        for future in progress(ex.futures, desc="simulations"):
            results.append(future.result())
    """
    pending = list(futures)
    bar = _bar(len(pending), desc, stream)
    try:
        for future in concurrent.futures.as_completed(pending):
            bar.update(1)
            yield cast(F, future)
    finally:
        bar.close()


def progress_iter(items: Iterator[Any], total: int, *, desc: str = "") -> Iterator[Any]:
    """Wrap an ordered result iterator (``map``) with a bar counting its items."""
    bar = _bar(total, desc, None)
    try:
        for item in items:
            bar.update(1)
            yield item
    finally:
        bar.close()
