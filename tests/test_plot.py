"""The timeline of a real session, checked in the pixels of the PNG it writes."""

from __future__ import annotations

import json

import pytest
import tasks
from helpers import starburst

from starburst_executor import DetachedExecutor
from starburst_executor.plot import COLORS

pytest.importorskip("matplotlib")


def _rgb(hex_color: str) -> tuple[float, float, float]:
    return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _bands(image, hex_color: str, min_pixels: int = 15) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Horizontal bands of pixel rows holding at least ``min_pixels`` of the color (legend
    swatches and anti-aliased edges hold fewer)."""
    import numpy as np

    target = np.array(_rgb(hex_color))
    close = (np.abs(image[:, :, :3] - target) < 0.02).all(axis=2)
    rows = [y for y in range(close.shape[0]) if close[y].sum() >= min_pixels]
    bands: list[tuple[int, int]] = []
    for y in rows:
        if bands and y == bands[-1][1] + 1:
            bands[-1] = (bands[-1][0], y)
        else:
            bands.append((y, y))
    return bands


def test_plot_draws_one_row_per_worker_with_failures_marked(prefix, tmp_path):
    import matplotlib.image

    ex = DetachedExecutor(max_workers=2)
    try:
        # Two tasks that wait for each other: two workers, for certain.
        meet = tmp_path / "meet"
        meet.mkdir()
        together = [ex.submit(tasks.barrier, str(meet), i, 2, 1.5) for i in range(2)]
        rest = [ex.submit(tasks.sleep_for, 0.3) for _ in range(4)]
        failing = ex.submit(tasks.fail_after, 1.5)
        for future in [*together, *rest]:
            future.result(timeout=120)
        assert failing.exception(timeout=120) is not None
        workers = {f.worker_id for f in ex.futures}
        assert len(workers) == 2

        path = ex.plot(tmp_path / "timeline.png")
        image = matplotlib.image.imread(str(path))
        green = _bands(image, COLORS["ok"])
        red = _bands(image, COLORS["error"])
        # One band of bars per worker; the failure sits on one of those rows.
        assert len(green) == 2, green
        assert len(red) == 1, red
        assert any(g[0] - 2 <= red[0][0] and red[0][1] <= g[1] + 2 for g in green)

        out = tmp_path / "cli.png"
        result = starburst("plot", ex.session_id, "--out", str(out), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["path"] == str(out)
        assert len(_bands(matplotlib.image.imread(str(out)), COLORS["ok"])) == 2
    finally:
        ex.cleanup(force=True)
