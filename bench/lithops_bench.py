"""Lithops' localhost backend, measured for bench/run.py (runs in bench/.venv-lithops).

Prints one JSON object: trivial-task throughput with call_async per task and with map,
the efficiency of 200 ms tasks on 2 workers, and call_async latency.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import lithops


def trivial(x: int) -> int:
    return x + 1


def sleepy(_: int) -> float:
    time.sleep(0.2)
    return 0.2


def main() -> None:
    tasks, workers = int(sys.argv[1]), int(sys.argv[2])
    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": "WARNING"},
        "localhost": {"worker_processes": workers, "runtime": sys.executable},
    }
    fexec = lithops.FunctionExecutor(config=config)
    fexec.get_result(fexec.call_async(trivial, 0))  # runtime deployed and warm

    t0 = time.perf_counter()
    futures = [fexec.call_async(trivial, i) for i in range(tasks)]
    assert fexec.get_result(futures) == [i + 1 for i in range(tasks)]
    submit_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    assert fexec.get_result(fexec.map(trivial, range(tasks))) == [i + 1 for i in range(tasks)]
    map_wall = time.perf_counter() - t0

    t0 = time.perf_counter()
    fexec.get_result(fexec.map(sleepy, range(20)))
    sleepy_wall = time.perf_counter() - t0

    latencies = []
    for i in range(10):
        t0 = time.perf_counter()
        fexec.get_result(fexec.call_async(trivial, i))
        latencies.append(time.perf_counter() - t0)
    fexec.clean()
    print(
        json.dumps(
            {
                "version": lithops.__version__,
                "tasks": tasks,
                "submit_tasks_per_s": tasks / submit_wall,
                "map_tasks_per_s": tasks / map_wall,
                "efficiency_200ms": (20 * 0.2 / workers) / sleepy_wall,
                "latency_p50_ms": statistics.median(latencies) * 1000,
            }
        )
    )


if __name__ == "__main__":
    main()
