"""Monte Carlo estimate of pi, reproducible with seed=, with a progress bar.

python examples/monte_carlo.py [tasks] [samples per task]
"""

from __future__ import annotations

import random
import sys

from starburst_executor import StarburstExecutor


def estimate(samples: int) -> float:
    # The executor seeded `random` for this task from (seed, task index).
    inside = sum(random.random() ** 2 + random.random() ** 2 <= 1.0 for _ in range(samples))
    return 4.0 * inside / samples


def main(tasks: int = 8, samples: int = 50_000) -> float:
    with StarburstExecutor(max_workers=2, seed=2026) as ex:
        estimates = list(ex.map(estimate, [samples] * tasks, progress=True))
    value = sum(estimates) / len(estimates)
    print(f"pi ~ {value:.6f} from {tasks} tasks x {samples} samples (seed 2026)")
    return value


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
