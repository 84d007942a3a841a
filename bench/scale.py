"""The scale table: S3 requests per task and throughput against the number of workers.

Requests are counted by the S3 server itself (SeaweedFS's Prometheus endpoint,
``SeaweedFS_s3_request_total`` by request type), between the first submit and the
last result, so everything the client and every worker sent in that window is in:
discovery polls of idle workers, lost races, expiry scans, the client's result polls.
Warm-up (worker start, first tasks) is outside the window.

Run alone: ``python bench/scale.py --workers 2 4 8 16 --tasks 1000``; ``bench/run.py``
calls it for ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starburst_executor import DetachedExecutor
from starburst_executor.config import starburst_home
from starburst_executor.store.local_server import LocalServer

HERE = Path(__file__).resolve().parent
# AWS S3 standard, us-east-1: PUT, COPY, POST, LIST per 1,000; GET and others per 1,000.
PRICE_PER_1000 = {"write_list": 0.005, "read": 0.0004}
_METRIC = re.compile(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+([0-9.e+]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def trivial(x: int) -> int:
    return x + 1


def server_requests(bucket: str = "starburst") -> Counter[str]:
    """The server's own count of S3 requests to ``bucket``, by request type."""
    info = LocalServer(starburst_home()).ensure_running()
    with urllib.request.urlopen(info.metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("bucket") == bucket:
            counts[labels.get("type", "?")] += int(float(m.group(2)))
    return counts


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out = Counter(after)
    out.subtract(before)
    return +out


def _wait_registered(ex: DetachedExecutor, workers: int, timeout: float = 300) -> None:
    """Until ``workers`` workers have registered themselves as running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        registry = ex._runtime.loop.run(ex._session.workers())
        if sum(1 for w in registry if w.get("state") == "running") >= workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{workers} workers did not start within {timeout:g}s")


def drain_worker_counters(ex: DetachedExecutor) -> Counter[str]:
    """Stop the session's workers and sum the request counters they report on exit."""
    ex._runtime.loop.run(ex._session.request_stop())
    deadline = time.monotonic() + 60
    while True:
        registry = ex._runtime.loop.run(ex._session.workers())
        if all(w.get("state") == "exited" for w in registry) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    total: Counter[str] = Counter()
    for w in registry:
        total.update(w.get("requests", {}))
    return total


def scale_row(workers: int, tasks: int, *, use_map: bool = False) -> dict[str, Any]:
    """One session: ``workers`` warm workers, ``tasks`` trivial tasks, one submit each
    (or one ``map`` with default chunking), counted by the server."""
    ex = DetachedExecutor(max_workers=workers, session_timeout=600)
    try:
        ex.scale(workers)
        _wait_registered(ex, workers)
        warm = list(ex.map(trivial, range(workers * 2), chunksize=1))
        assert warm == [i + 1 for i in range(workers * 2)]
        before = server_requests()
        t0 = time.perf_counter()
        if use_map:
            assert list(ex.map(trivial, range(tasks))) == [i + 1 for i in range(tasks)]
        else:
            futures = [ex.submit(trivial, i) for i in range(tasks)]
            assert [f.result() for f in futures] == [i + 1 for i in range(tasks)]
        wall = time.perf_counter() - t0
        by_type = _delta(server_requests(), before)
    finally:
        ex.cleanup(force=True)
    total = sum(by_type.values())
    return {
        "workers": workers,
        "tasks": tasks,
        "map": use_map,
        "wall_s": wall,
        "tasks_per_s": tasks / wall,
        "requests_per_task": total / tasks,
        "by_type": {k: v / tasks for k, v in sorted(by_type.items())},
    }


def idle_cost(workers: int, settle_s: float, window_s: float) -> dict[str, Any]:
    """Requests per minute per idle worker, counted by the server over ``window_s`` once
    the workers have been idle for ``settle_s`` (their backoff has reached its maximum)."""
    ex = DetachedExecutor(max_workers=workers, session_timeout=3600)
    try:
        ex.scale(workers)
        _wait_registered(ex, workers)
        time.sleep(settle_s)
        before = server_requests()
        time.sleep(window_s)
        by_type = _delta(server_requests(), before)
    finally:
        ex.cleanup(force=True)
    per_min = sum(by_type.values()) / workers * 60 / window_s
    return {
        "workers": workers,
        "settle_s": settle_s,
        "window_s": window_s,
        "requests_per_min_per_worker": per_min,
        "by_type": dict(by_type),
    }


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b * x``; returns ``(a, b)``."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = cov / var if var else 0.0
    return mean_y - slope * mean_x, slope


def model(rows: list[dict[str, Any]], idle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Requests, S3 cost and per-prefix rates for 100 and 1,000 workers.

    Requests per task are split into a per-task part and a per-worker-second part,
    fitted on the one-submit rows as ``a + c * workers / (tasks per second)``: here the
    client's submit rate is the limit, so more workers means more worker-seconds per
    task. The model's fleet runs 1-second tasks, W workers busy at W tasks/s, so each
    task carries one worker-second: ``a + c``.
    """
    submit = [r for r in rows if not r["map"]]
    if len(submit) < 2:
        return []
    per_task, per_worker_s = _fit(
        [r["workers"] / r["tasks_per_s"] for r in submit],
        [r["requests_per_task"] for r in submit],
    )
    _, per_worker = _fit(
        [float(r["workers"]) for r in submit], [r["requests_per_task"] for r in submit]
    )
    largest = max(submit, key=lambda r: r["workers"])
    by_type = largest["by_type"]
    total = max(sum(by_type.values()), 1e-9)
    reads = sum(v for k, v in by_type.items() if k.upper() in {"GET", "HEAD"})
    read_share = reads / total
    out = []
    for fleet in (100, 1000):
        requests = per_task + per_worker_s
        usd = requests * (
            read_share * PRICE_PER_1000["read"] + (1 - read_share) * PRICE_PER_1000["write_list"]
        )
        rate = float(fleet)
        lists = by_type.get("LIST", 0.0) / max(largest["requests_per_task"], 1e-9) * requests
        out.append(
            {
                "workers": fleet,
                "requests_per_task": requests,
                "per_task": per_task,
                "per_worker_second": per_worker_s,
                "slope_per_worker": per_worker,
                "usd_per_million_tasks": usd * 1000,
                "requests_per_s": requests * rate,
                # tasks/ takes the payload PUT and GET and the workers' LISTs; claims/ and
                # results/ one write each per task (plus renewals of long tasks).
                "tasks_prefix_reads_per_s": rate * (1 + lists),
                "tasks_prefix_writes_per_s": rate,
                "idle_requests_per_min": (
                    idle["requests_per_min_per_worker"] * fleet if idle else float("nan")
                ),
            }
        )
    return out


def run(workers: list[int], tasks: int, idle_workers: int) -> dict[str, Any]:
    """The whole scale section of ``make bench``."""
    rows = []
    for count in workers:
        for use_map in (False, True):
            row = scale_row(count, tasks, use_map=use_map)
            rows.append(row)
            print(json.dumps(row), flush=True)
    idle = idle_cost(idle_workers, 90.0, 60.0) if idle_workers else None
    if idle:
        print(json.dumps(idle), flush=True)
    return {"rows": rows, "idle": idle, "model": model(rows, idle)}


def target_rows(
    res: dict[str, Any] | None, row: Callable[[str, str, str, bool | None], str]
) -> list[str]:
    """The scale targets of issue 16, for the report's target table."""
    if not res:
        return []
    out = []
    for r in res["rows"]:
        if not r["map"] and r["workers"] in (2, 16, 64):
            out.append(
                row(
                    f"S3 requests per task, one submit each, {r['workers']} workers (server count)",
                    f"{r['requests_per_task']:.2f}",
                    "<= 7",
                    r["requests_per_task"] <= 7,
                )
            )
    maps = [r for r in res["rows"] if r["map"]]
    if maps:
        r = max(maps, key=lambda r: r["workers"])
        out.append(
            row(
                f"S3 requests per item, map default chunking, {r['workers']} workers",
                f"{r['requests_per_task']:.3f}",
                "<= 1",
                r["requests_per_task"] <= 1,
            )
        )
    if res["idle"]:
        idle = res["idle"]
        out.append(
            row(
                f"{idle['workers']} idle workers, requests per minute each (server count)",
                f"{idle['requests_per_min_per_worker']:.2f}",
                "<= 4",
                idle["requests_per_min_per_worker"] <= 4,
            )
        )
    return out


def report(res: dict[str, Any] | None) -> list[str]:
    """The scale section of RESULTS.md."""
    if not res:
        return []
    types = sorted({k for r in res["rows"] for k in r["by_type"]})
    lines = [
        "## Scale: requests per task against the number of workers",
        "",
        f"{res['rows'][0]['tasks']:,} trivial tasks per row, counted by the S3 server itself "
        "(SeaweedFS `SeaweedFS_s3_request_total`) from the first submit to the last result: "
        "the client's requests and every worker's, idle polls included. One run per row.",
        "",
        "| workers | call | tasks/s | requests per task | " + " | ".join(types) + " |",
        "|---|---|---|---|" + "---|" * len(types),
    ]
    for r in res["rows"]:
        per_type = " | ".join(f"{r['by_type'].get(t, 0.0):.2f}" for t in types)
        call = "map (default chunks)" if r["map"] else "submit"
        lines.append(
            f"| {r['workers']} | {call} | {r['tasks_per_s']:.1f} | "
            f"{r['requests_per_task']:.2f} | {per_type} |"
        )
    lines.append("")
    if res["idle"]:
        idle = res["idle"]
        lines.append(
            f"Idle cost: {idle['workers']} workers with nothing to do, after "
            f"{idle['settle_s']:.0f} s of idling, sent "
            f"{idle['requests_per_min_per_worker']:.2f} requests per minute each "
            f"over {idle['window_s']:.0f} s (by type: {idle['by_type']})."
        )
        lines.append("")
    if res["model"]:
        lines += [
            "Model for larger fleets: requests per task fitted on the one-submit rows as "
            f"{res['model'][0]['per_task']:.2f} per task + "
            f"{res['model'][0]['per_worker_second']:.2f} per worker-second (polls, steal "
            "checks, scans); the fleet runs 1-second tasks, so W workers run W tasks/s and "
            "each task carries one worker-second; AWS S3 standard prices:",
            "",
            "| workers | requests per task | USD per million tasks | requests/s | "
            "tasks/ prefix reads/s | tasks/ prefix writes/s | idle fleet requests/min |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in res["model"]:
            lines.append(
                f"| {m['workers']:,} | {m['requests_per_task']:.2f} | "
                f"{m['usd_per_million_tasks']:.2f} | {m['requests_per_s']:,.0f} | "
                f"{m['tasks_prefix_reads_per_s']:,.0f} | {m['tasks_prefix_writes_per_s']:,.0f} | "
                f"{m['idle_requests_per_min']:,.0f} |"
            )
        slope = res["model"][0]["slope_per_worker"]
        lines += [
            "",
            f"Against the worker count alone the rows grow by {slope:+.3f} requests per task "
            "per added worker on this machine, where the client's submits are the limit (more "
            "workers, same tasks/s: more idle worker-seconds per task). Per prefix, "
            "AWS sustains about 3,500 writes and 5,500 reads per second: a 1,000-worker fleet "
            "of 1-second tasks stays below both on `tasks/`, `claims/` and `results/`; "
            "shorter tasks need the spread keys described in docs/architecture.md.",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--idle-workers", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.workers, args.tasks, args.idle_workers)
    print("\n".join(report(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
