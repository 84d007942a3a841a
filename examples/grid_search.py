"""Grid search: score every (alpha, beta) pair on workers, keep the best.

python examples/grid_search.py
"""

from __future__ import annotations

import itertools
import math

from starburst_executor import DetachedExecutor, progress


def score(alpha: float, beta: int) -> tuple[float, float, int]:
    """A stand-in for cross-validation: a smooth function with one best point."""
    loss = (alpha - 0.3) ** 2 + (math.log2(beta) - 3) ** 2 / 10
    return loss, alpha, beta


def main() -> tuple[float, float, int]:
    grid = list(itertools.product([0.1, 0.2, 0.3, 0.4, 0.5], [2, 4, 8, 16]))
    with DetachedExecutor(max_workers=2) as ex:
        futures = [ex.submit(score, a, b) for a, b in grid]
        results = [f.result() for f in progress(futures, desc="grid")]
        ex.cleanup(force=True)
    best = min(results)
    print(f"best: alpha={best[1]} beta={best[2]} (loss {best[0]:.4f}) of {len(grid)} points")
    return best


if __name__ == "__main__":
    main()
