"""Draw a session as a timeline: ``python examples/timeline.py [tasks] [workers] [out.png]``.

Tasks of uneven length, one straggler and a few failures, on the embedded local S3
server; the picture shows each worker's row, its cold start, idle gaps, the
failures in red and the throughput curve. Needs the plot extra (matplotlib).
"""

from __future__ import annotations

import random
import sys
import time

from starburst_executor import DetachedExecutor


def work(seconds: float, fail: bool) -> float:
    time.sleep(seconds)
    if fail:
        raise RuntimeError(f"failed after {seconds:.2f}s")
    return seconds


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    out = sys.argv[3] if len(sys.argv) > 3 else "timeline.png"
    rng = random.Random(2026)
    with DetachedExecutor(max_workers=workers) as ex:
        for i in range(tasks):
            seconds = 3.0 if i == tasks // 2 else rng.uniform(0.1, 0.8)  # one straggler
            ex.submit(work, seconds, fail=(i % 13 == 5))
        ex.collect(wait=True)
        print(f"{ex.status()}")
        print(f"timeline written to {ex.plot(out)}")


if __name__ == "__main__":
    main()
