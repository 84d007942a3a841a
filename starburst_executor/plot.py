"""A session as a picture: one row per worker, one bar per task, throughput below.

::

    w-3f2a… |■■■■ ■■■■■■■ ■■ ■■■■■            green: completed
    w-91c0… |  ■■■■■■ ■■■✕■■ ■■■■■■            red: failed, ✕: taken over from a lost worker
            +------------------------------ s since the session was created
    tasks/s |  ___/‾‾‾‾‾‾‾‾‾‾‾‾\\__

Each bar runs from when its worker started the task (just after claiming it) to its
outcome, from the timestamps every outcome carries in S3; a task that finished on
its second attempt or later was taken over after its first worker was lost. Gaps at
the left of a row are cold starts, gaps inside it idle time, a long bar at the end a
straggler. matplotlib is an optional extra: ``pip install 'starburst-executor[plot]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._core.futures import TaskFuture
from .errors import ConfigError

COLORS = {"ok": "#2ca02c", "error": "#d62728"}
THROUGHPUT_COLOR = "#1f77b4"


@dataclass(frozen=True)
class Bar:
    """One task on the timeline, in seconds since the session was created."""

    worker_id: str
    task_id: str
    start: float
    end: float
    kind: str  # "ok" or "error"
    taken_over: bool


def timeline(futures: Sequence[TaskFuture], origin: float) -> list[Bar]:
    """The bars of the finished, not cancelled, tasks among ``futures``."""
    bars = []
    for future in futures:
        outcome = future._outcome
        if outcome is None or outcome.kind not in COLORS or not outcome.worker_id:
            continue
        bars.append(
            Bar(
                worker_id=outcome.worker_id,
                task_id=outcome.task_id,
                start=outcome.started - origin,
                end=max(outcome.finished, outcome.started) - origin,
                kind=outcome.kind,
                taken_over=outcome.attempt > 1,
            )
        )
    return bars


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib: pip install 'starburst-executor[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    return plt


def render(bars: Sequence[Bar], path: Path, title: str) -> Path:
    """Draw ``bars`` to ``path`` (the format follows the suffix; PNG by default)."""
    if not bars:
        raise ConfigError(f"{title}: no finished task to draw yet")
    plt = _pyplot()
    workers = sorted(
        {b.worker_id for b in bars}, key=lambda w: min(b.start for b in bars if b.worker_id == w)
    )
    row = {w: i for i, w in enumerate(workers)}
    end = max(b.end for b in bars)
    height = 1.2 + 0.35 * len(workers)
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(10, height + 1.6),
        gridspec_kw={"height_ratios": [height, 1.6]},
    )
    for kind, color in COLORS.items():
        spans = [(b, row[b.worker_id]) for b in bars if b.kind == kind]
        for bar, y in spans:
            top.broken_barh(
                [
                    (bar.start, max(bar.end - bar.start, end / 500))
                ],  # a failure at once stays visible
                (y - 0.3, 0.6),
                facecolors=color,
            )
    taken = [b for b in bars if b.taken_over]
    if taken:
        top.scatter(
            [b.start for b in taken],
            [row[b.worker_id] for b in taken],
            marker="x",
            color="black",
            zorder=3,
            label="taken over",
        )
    top.set_yticks(range(len(workers)), [w[:10] for w in workers])
    top.set_ylim(len(workers) - 0.5, -0.5)
    top.set_ylabel("worker")
    counts = {k: sum(b.kind == k for b in bars) for k in COLORS}
    top.set_title(
        f"{title}: {len(bars)} tasks on {len(workers)} workers "
        f"(green completed {counts['ok']}, red failed {counts['error']}, "
        f"x taken over {len(taken)})",
        fontsize=9,
    )

    bins = max(10, min(200, len(bars) // 2))
    width = end / bins if end > 0 else 1.0
    finished = [0] * bins
    for b in bars:
        finished[min(bins - 1, int(b.end / width))] += 1
    centers = [(i + 0.5) * width for i in range(bins)]
    rates = [n / width for n in finished]
    bottom.plot(centers, rates, color=THROUGHPUT_COLOR)
    bottom.fill_between(centers, rates, color=THROUGHPUT_COLOR, alpha=0.2)
    bottom.set_ylabel("tasks/s")
    bottom.set_xlabel("seconds since the session was created")
    bottom.set_xlim(0, end * 1.01)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
