"""A module of the user's own, beside ``own_module.py``: not installed anywhere.

The workers import it from the copy their session shipped (see ``own_module.py``).
"""

from __future__ import annotations

from pathlib import Path


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float, str]:
    """Least-squares slope and intercept, and where this module was imported from."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = sxy / sxx
    return slope, mean_y - slope * mean_x, str(Path(__file__).resolve())
