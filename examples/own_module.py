"""Your own modules on the workers: ``mymodel.py`` beside this script travels with the session.

``fit_line`` is imported from a sibling module that is not installed anywhere;
cloudpickle sends it by reference, so the workers need the module itself. The
session ships the user's own modules (those outside the standard library and
site-packages) once, content-addressed, and the workers import that copy,
whatever their working directory and ``PYTHONPATH``. Edit ``mymodel.py`` and the
next session runs the new code, without rebuilding any image.
"""

from __future__ import annotations

import random
from pathlib import Path

from mymodel import fit_line

from starburst_executor import DetachedExecutor


def noisy_line(seed: int, slope: float = 2.0, intercept: float = 1.0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(x, slope * x + intercept + rng.gauss(0, 0.01)) for x in range(20)]


def main() -> None:
    here = str(Path(__file__).resolve().parent)
    with DetachedExecutor(max_workers=2) as ex:
        fits = list(ex.map(fit_line, [noisy_line(seed) for seed in range(4)], chunksize=1))
        shipped = ex.shipped_code
    for seed, (slope, intercept, _) in enumerate(fits):
        print(f"seed {seed}: slope {slope:.2f}, intercept {intercept:.2f}")
    assert shipped is not None
    print(f"shipped with the session: {', '.join(shipped.modules)}")
    imported_from = {str(Path(where).parent) for _, _, where in fits}
    print(
        "workers imported mymodel from",
        "this folder" if imported_from == {here} else "the shipped copy",
    )


if __name__ == "__main__":
    main()
