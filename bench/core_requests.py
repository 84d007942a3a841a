"""S3 requests per task and wall time for 1,000 trivial tasks, next to ProcessPoolExecutor.

Counts come from botocore/aiobotocore ``before-send`` event hooks: the client's
own counter, plus each worker's counter as it reports it in the session's
worker registry when it exits. Run: ``make bench-core`` (or this file with the
venv's python).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
from collections import Counter

from starburst_executor import DetachedExecutor


def trivial(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        assert [f.result() for f in [pool.submit(trivial, i) for i in range(args.tasks)]][-1]
    ppe = time.perf_counter() - t0

    t0 = time.perf_counter()
    ex = DetachedExecutor(max_workers=args.workers)
    created = time.perf_counter() - t0
    futures = [ex.submit(trivial, i) for i in range(args.tasks)]
    submitted = time.perf_counter() - t0
    results = [f.result(timeout=600) for f in futures]
    wall = time.perf_counter() - t0
    assert results == [i + 1 for i in range(args.tasks)]
    client = Counter(ex._runtime.store.counter.snapshot())
    ex.shutdown()  # workers exit and report their counters
    deadline = time.monotonic() + 60
    while True:
        registry = ex._runtime.loop.run(ex._session.workers())
        if all(w["state"] == "exited" for w in registry) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    workers: Counter[str] = Counter()
    stats: Counter[str] = Counter()
    for w in registry:
        workers.update(w["requests"])
        stats.update(w["stats"])
    client_before_shutdown = sum(client.values())
    total = client_before_shutdown + sum(workers.values())
    report = {
        "tasks": args.tasks,
        "workers": args.workers,
        "wall_s": round(wall, 3),
        "session_create_s": round(created, 3),
        "submit_s": round(submitted - created, 3),
        "tasks_per_s": round(args.tasks / wall, 1),
        "process_pool_wall_s": round(ppe, 3),
        "ratio_wall_vs_process_pool": round(wall / ppe, 1),
        "requests_per_task": round(total / args.tasks, 2),
        "client_requests": dict(client),
        "worker_requests": dict(workers),
        "worker_stats": dict(stats),
    }
    print(json.dumps(report, indent=2))
    ex.cleanup(force=True)


if __name__ == "__main__":
    main()
