"""Per-call latency, submit to result, p50 and p95, next to ProcessPoolExecutor.

StarburstExecutor starts a worker per call, so every call here is a cold worker
(locally forked from the worker template; ``STARBURST_FORKSERVER=0`` measures plain
subprocesses).
ProcessPoolExecutor is measured both warm (one pool) and cold (a new pool per call),
in the same process, on the same machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import time
from collections.abc import Callable

from starburst_executor import StarburstExecutor


def trivial(x: int) -> int:
    return x + 1


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1)}


def measure(call: Callable[[int], int], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        assert call(i) == i + 1
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()

    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(trivial, 0).result()
        warm = measure(lambda i: pool.submit(trivial, i).result(), args.calls)

    def cold_pool(i: int) -> int:
        with concurrent.futures.ProcessPoolExecutor(1) as fresh:
            return fresh.submit(trivial, i).result()

    cold = measure(cold_pool, args.calls)

    with StarburstExecutor(max_workers=1) as ex:
        ex.submit(trivial, 0).result()  # starts the local server if needed
        starburst = measure(lambda i: ex.submit(trivial, i).result(), args.calls)

    report = {
        "calls": args.calls,
        "process_pool_warm": percentiles(warm),
        "process_pool_cold": percentiles(cold),
        "starburst_ephemeral_cold_worker": percentiles(starburst),
    }
    base = report["process_pool_cold"]["p50_ms"]
    report["ratio_p50_vs_process_pool_cold"] = round(
        report["starburst_ephemeral_cold_worker"]["p50_ms"] / base, 1
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
