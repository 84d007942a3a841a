"""``make bench``, second part: every figure at 0 ms and at 20 ms per request, one run.

The 20 ms column puts ``latency_proxy.LatencyProxy`` between the local S3 server and
everything that talks to it (the client and its workers, which get the proxy as their
endpoint), so every request takes 20 ms more, as on AWS. The 0 ms column talks to the
server directly. Both columns run in the same process, one after the other, on the
same loaded machine. Writes bench/latency_results.json and the "At real S3 latency"
section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latency_proxy import LatencyProxy
from scale import drain_worker_counters

from starburst_executor import DetachedExecutor
from starburst_executor._core.codec import PieceCache, encode_call_pieces
from starburst_executor._core.loop import LoopThread
from starburst_executor.config import LOCAL_BUCKET
from starburst_executor.store import s3 as s3_module
from starburst_executor.store.local_server import LocalServer, read_credentials
from starburst_executor.store.s3 import S3Store

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"

Where = dict[str, Any]
SERVER_PID = 0  # the local S3 server's: its CPU time bounds throughput on this machine


def server_cpu_s() -> float:
    fields = Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def machine_cpu_s() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the whole machine so far, all cores summed: every
    process here (server, proxy, client, workers, task processes, and any other load)
    counts. From /proc/stat: user nice system idle iowait irq softirq steal (guest time is
    already in user and nice); idle, iowait and steal (the hypervisor's) are not busy."""
    head = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    fields = [int(x) for x in head[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields)
    return (total - fields[3] - fields[4] - fields[7]) / tick, total / tick


def machine_share(before: tuple[float, float], n: int) -> dict[str, float]:
    """The machine's CPU spent per call since ``before``, and how busy its cores were:
    near 1.0, the figure is bound by this machine's cores, not by waiting."""
    busy, total = machine_cpu_s()
    spent = max(busy - before[0], 1e-9)
    return {
        "machine_cpu_ms_per_call": spent / n * 1000,
        "machine_busy": spent / max(total - before[1], 1e-9),
        "machine_bound_per_s": (os.cpu_count() or 1) * n / spent,
    }


def trivial(x: int) -> int:
    return x + 1


def sleep_half(_: int) -> float:
    time.sleep(0.5)
    return 0.5


def warm(where: Where, workers: int, **settings: Any) -> DetachedExecutor:
    ex = DetachedExecutor(max_workers=workers, **settings, **where)
    ex.scale(workers)
    assert list(ex.map(trivial, range(workers * 2), chunksize=1)) == [
        i + 1 for i in range(workers * 2)
    ]
    return ex


def warm_call(where: Where, calls: int) -> dict[str, float]:
    ex = warm(where, 1)
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        assert ex.submit(trivial, i).result() == i + 1
        samples.append(time.perf_counter() - t0)
    ex.cleanup(force=True)
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(samples) * 1000,
        "p95_ms": ordered[round(0.95 * (len(ordered) - 1))] * 1000,
    }


def submits(where: Where, n: int) -> dict[str, float]:
    """One ``submit`` per call, no workers: until ``submit`` returns, and until durable."""
    ex = DetachedExecutor(max_workers=1, **where)
    sid = ex.detach()
    client = DetachedExecutor.attach(sid, launch_workers=False, **where)
    machine = machine_cpu_s()
    t0 = time.perf_counter()
    for i in range(n):
        client.submit(trivial, i)
    returned = time.perf_counter() - t0
    client.flush()
    durable = time.perf_counter() - t0
    shares = machine_share(machine, n)
    assert client.status().total == n
    client.cleanup(force=True)
    return {"submit_s": returned, "durable_s": durable, "submits_per_s": n / durable, **shares}


def throughput(where: Where, n: int, workers: int, use_map: bool) -> dict[str, float]:
    ex = warm(where, workers)
    before = Counter(ex._runtime.store.counter.snapshot())
    server_before = server_cpu_s()
    machine = machine_cpu_s()
    t0 = time.perf_counter()
    if use_map:
        assert list(ex.map(trivial, range(n))) == [i + 1 for i in range(n)]
    else:
        futures = [ex.submit(trivial, i) for i in range(n)]
        assert [f.result() for f in futures] == [i + 1 for i in range(n)]
    wall = time.perf_counter() - t0
    server = server_cpu_s() - server_before
    shares = machine_share(machine, n)
    client = Counter(ex._runtime.store.counter.snapshot())
    client.subtract(before)
    by_op = client + drain_worker_counters(ex)  # worker counters include their warm-up
    ex.cleanup(force=True)
    out = {
        "tasks_per_s": n / wall,
        "wall_s": wall,
        "requests_per_task": sum(by_op.values()) / n,
        "server_cpu_ms_per_task": server / n * 1000,
        # The most tasks/s this machine's cores allow with the server's share alone.
        "server_bound_tasks_per_s": (os.cpu_count() or 1) * n / server,
        **shares,
    }
    out.update({f"req_{op}": count / n for op, count in by_op.items()})
    return out


def efficiency(where: Where, n: int, workers: int) -> dict[str, float]:
    ex = warm(where, workers)
    t0, epoch = time.perf_counter(), time.time()
    futures = [ex.submit(sleep_half, i) for i in range(n)]
    submitted = time.perf_counter() - t0
    concurrent.futures.wait(futures)
    wall = time.perf_counter() - t0
    # Where the time beyond the ideal went: from the first task's start to the last
    # one's end, as the workers recorded them (same machine, same clock), the rest
    # being the first pickup and the last result's delivery.
    outcomes = [f._outcome for f in futures if f._outcome is not None]
    ex.cleanup(force=True)
    span = max(o.finished for o in outcomes) - min(o.started for o in outcomes)
    by_worker: dict[str, list[Any]] = {}
    for o in outcomes:
        by_worker.setdefault(o.worker_id, []).append(o)
    firsts = [min(o.started for o in runs) for runs in by_worker.values()]
    gaps = []
    for runs in by_worker.values():
        ordered = sorted(runs, key=lambda o: o.started)
        gaps += [b.started - a.finished for a, b in itertools.pairwise(ordered)]
    return {
        "efficiency": (n * 0.5 / workers) / wall,
        "wall_s": wall,
        "submit_s": submitted,
        "run_span_s": span,
        "span_efficiency": (n * 0.5 / workers) / span,
        # Diagnostics: how far apart the workers' first starts were, the longest pause
        # between two tasks of one worker, and the tasks of the busiest worker.
        "first_start_s": min(firsts) - epoch,  # the first pickup, from the first submit
        "last_result_lag_s": epoch + wall - max(o.finished for o in outcomes),
        "first_start_spread_s": max(firsts) - min(firsts),
        "max_gap_s": max(gaps, default=0.0),
        "most_tasks_on_one_worker": max(len(runs) for runs in by_worker.values()),
    }


def sleep_second(_: int) -> float:
    time.sleep(1.0)
    return 1.0


def burn(_: int) -> int:
    """About half a second of one core (pure Python, holds the GIL)."""
    total = 0
    for i in range(4_000_000):
        total += i * i
    return total


def slots(where: Where, workers: int) -> dict[str, float]:
    """``workers`` workers with ``cpu=2`` (2 slots each): 40 tasks that wait 1 s, against
    the ideal of every slot busy; and CPU-bound tasks with 2 slots against 1."""
    ex = warm(where, workers, cpu=2)
    t0 = time.perf_counter()
    concurrent.futures.wait([ex.submit(sleep_second, i) for i in range(40)])
    io_wall = time.perf_counter() - t0
    ex.cleanup(force=True)
    walls = {}
    for cpu in (1, 2):
        ex = warm(where, workers, cpu=cpu)
        t0 = time.perf_counter()
        concurrent.futures.wait([ex.submit(burn, i) for i in range(16)])
        walls[cpu] = time.perf_counter() - t0
        ex.cleanup(force=True)
    cores = os.cpu_count() or 1
    return {
        "io_efficiency": (40 * 1.0 / (workers * 2)) / io_wall,
        "io_wall_s": io_wall,
        "cpu_1_slot_s": walls[1],
        "cpu_2_slots_s": walls[2],
        "cpu_speedup": walls[1] / walls[2],
        # The most 2 slots can add over 1: the cores not already busy with 1 per worker.
        "cpu_bound": min(workers * 2, cores) / min(workers, cores),
    }


def closure(where: Where, n: int, megabytes: int, workers: int) -> dict[str, float]:
    """``n`` calls of a function closing over ``megabytes`` MB, against a small closure."""
    out: dict[str, float] = {}
    for label, size in (("small", 16), ("big", megabytes * 1024 * 1024)):
        data = os.urandom(size)

        def size_plus(i: int, data: bytes = data) -> int:
            return len(data) + i

        ex = warm(where, workers)
        ended: list[float] = []
        t0 = time.perf_counter()
        futures = [ex.submit(size_plus, i) for i in range(n)]
        for f in futures:
            f.add_done_callback(lambda _f, ended=ended: ended.append(time.perf_counter()))
        assert [f.result() for f in futures] == [size + i for i in range(n)]
        out[f"{label}_s"] = time.perf_counter() - t0
        # Where the time went: until the first result (for the big closure, its one
        # upload and each worker's one fetch), then the rest, task after task.
        out[f"{label}_first_s"] = min(ended) - t0
        out[f"{label}_rest_per_s"] = (n - 1) / max(max(ended) - min(ended), 1e-9)
        listing = ex._runtime.loop.run(ex._runtime.store.list_objects(ex._session.layout.root))
        out[f"{label}_stored_mb"] = sum(o.size for o in listing.objects) / 1e6
        ex.cleanup(force=True)
    out["ratio"] = out["big_s"] / out["small_s"]
    return out


def put_latency(endpoint: str, credentials: tuple[str, str], expect: bool) -> dict[str, float]:
    """p50 of a 10 kB PUT, with or without ``Expect: 100-continue``."""
    loop = LoopThread("bench-put")
    location = _location(endpoint)
    store = S3Store(location, credentials=credentials)
    try:
        client = loop.run(store._ensure())
        if expect:
            client.meta.events.unregister("before-call.s3", s3_module._no_expect_continue)
        samples = []
        for i in range(40):
            t0 = time.perf_counter()
            loop.run(store.put(f"bench-latency/put-{i}", b"x" * 10_000))
            samples.append(time.perf_counter() - t0)
        loop.run(store.delete_prefix("bench-latency/"))
        return {"p50_ms": statistics.median(samples[5:]) * 1000}
    finally:
        loop.run(store.close())
        loop.close()


def _location(endpoint: str) -> Any:
    from starburst_executor.config import StoreLocation

    return StoreLocation(bucket=LOCAL_BUCKET, prefix="bench-latency", endpoint_url=endpoint)


def put_rate(endpoint: str, credentials: tuple[str, str], n: int = 1000) -> dict[str, float]:
    """The ceiling of this client stack here: small PUTs per second, 64 in flight."""
    loop = LoopThread("bench-rate")
    store = S3Store(_location(endpoint), credentials=credentials)

    async def burst() -> None:
        gate = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with gate:
                await store.put(f"bench-latency/rate-{i}", b"x" * 300, if_none_match=True)

        await asyncio.gather(*(one(i) for i in range(n)))

    try:
        loop.run(store.put("bench-latency/rate-warm", b"x"))
        t0 = time.perf_counter()
        loop.run(burst())
        rate = n / (time.perf_counter() - t0)
        loop.run(store.delete_prefix("bench-latency/"))
        return {"puts_per_s": rate}
    finally:
        loop.run(store.close())
        loop.close()


def encode_cost(megabytes: int) -> dict[str, float]:
    """Client CPU to pickle (and hash) one call closing over ``megabytes`` MB: without a
    piece cache, and with one (as an executor has), its first call and the later ones."""
    data = os.urandom(megabytes * 1024 * 1024)

    def size_plus(i: int, data: bytes = data) -> int:
        return len(data) + i

    def ms(cache: PieceCache | None) -> list[float]:
        samples = []
        for i in range(5):
            t0 = time.perf_counter()
            encode_call_pieces(size_plus, (i,), {}, cache=cache)
            samples.append((time.perf_counter() - t0) * 1000)
        return samples

    cached = ms(PieceCache())
    return {
        "ms_per_call": statistics.median(ms(None)),
        "first_cached_ms": cached[0],
        "later_cached_ms": statistics.median(cached[1:]),
    }


def columns(
    zero: Where, slow: Where, credentials: tuple[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    """Each measure at 0 ms and then at the delay, back to back, so both columns see
    the same load on this shared machine."""
    w = args.workers
    steps: list[tuple[str, Callable[[Where], dict[str, float]]]] = [
        ("warm_call", lambda where: warm_call(where, args.calls)),
        ("submits", lambda where: submits(where, args.submits)),
        ("put_rate", lambda where: put_rate(where["endpoint_url"], credentials)),
        ("submit_tasks", lambda where: throughput(where, args.tasks, w, use_map=False)),
        ("map", lambda where: throughput(where, args.map_items, w, use_map=True)),
        ("efficiency", lambda where: efficiency(where, 40, w)),
        ("slots", lambda where: slots(where, 2)),
        ("closure", lambda where: closure(where, 50, args.closure_mb, w)),
        (
            "put_expect",
            lambda where: put_latency(where["endpoint_url"], credentials, expect=True),
        ),
        (
            "put_no_expect",
            lambda where: put_latency(where["endpoint_url"], credentials, expect=False),
        ),
    ]
    out: dict[str, Any] = {"0": {}, "delay": {}}
    for name, step in steps:
        for column, where in (("0", zero), ("delay", slow)):
            t0 = time.perf_counter()
            out[column][name] = step(where)
            took = time.perf_counter() - t0
            print(f"  {name} [{column}]: {took:.1f} s {out[column][name]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--submits", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--map-items", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--closure-mb", type=int, default=20)
    args = parser.parse_args()
    info = LocalServer().ensure_running()
    global SERVER_PID
    SERVER_PID = info.pid
    credentials = read_credentials(info.home)
    # Workers find the store by endpoint (the proxy's) and these loopback-only keys.
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = credentials
    os.environ.setdefault("STARBURST_PREFIX", "bench-latency")
    results: dict[str, Any] = {"delay_ms": args.delay_ms, "args": vars(args)}
    started = time.perf_counter()
    results["encode"] = encode_cost(args.closure_mb)
    with LatencyProxy(info.endpoint_url, args.delay_ms / 1000) as proxy:
        zero = {"endpoint_url": info.endpoint_url, "bucket": LOCAL_BUCKET}
        slow = {"endpoint_url": proxy.url, "bucket": LOCAL_BUCKET}
        results.update(columns(zero, slow, credentials, args))
    results["elapsed_s"] = time.perf_counter() - started
    results["load"] = os.getloadavg()[0]
    (HERE / "latency_results.json").write_text(json.dumps(results, indent=2))
    section = report(results)
    write_section(section)
    print(section)


def report(res: dict[str, Any]) -> str:
    zero, slow, d = res["0"], res["delay"], res["delay_ms"]
    a = res["args"]

    def pair(fn: Callable[[dict[str, Any]], str]) -> tuple[str, str]:
        return fn(slow), fn(zero)

    def row(name: str, fn: Callable[[dict[str, Any]], str], goal: str, ok: bool | None) -> str:
        at_d, at_0 = pair(fn)
        mark = "n/a" if ok is None else ("met" if ok else "**missed**")
        return f"| {name} | {at_d} | {at_0} | {goal} | {mark} |"

    c_slow = slow["closure"]
    rows = [
        row(
            "Warm single call, p50",
            lambda c: f"{c['warm_call']['p50_ms']:.0f} ms",
            "<= 150 ms",
            slow["warm_call"]["p50_ms"] <= 150,
        ),
        row(
            "One `submit` per call: submits/s until durable (flush)",
            lambda c: f"{c['submits']['submits_per_s']:.0f}/s",
            ">= 500/s",
            slow["submits"]["submits_per_s"] >= 500,
        ),
        row(
            f"{a['submits']:,} submits, until durable",
            lambda c: f"{c['submits']['durable_s']:.1f} s",
            "<= 20 s",
            slow["submits"]["durable_s"] <= 20,
        ),
        row(
            "Ceiling here: the machine's CPU per submit (every process on it), cores busy, "
            "and the most submits/s its cores allow",
            lambda c: (
                f"{c['submits']['machine_cpu_ms_per_call']:.2f} ms, "
                f"{c['submits']['machine_busy']:.0%} busy: "
                f"{c['submits']['machine_bound_per_s']:.0f}/s"
            ),
            "(explains submits/s)",
            None,
        ),
        row(
            f"{a['tasks']:,} trivial tasks on {a['workers']} workers, first submit to last result",
            lambda c: f"{c['submit_tasks']['tasks_per_s']:.0f} tasks/s",
            ">= 200 tasks/s",
            slow["submit_tasks"]["tasks_per_s"] >= 200,
        ),
        row(
            "Ceiling here: the S3 server's CPU per task, and the most tasks/s 2 cores allow it",
            lambda c: (
                f"{c['submit_tasks']['server_cpu_ms_per_task']:.1f} ms: "
                f"{c['submit_tasks']['server_bound_tasks_per_s']:.0f} tasks/s"
            ),
            "(explains tasks/s)",
            None,
        ),
        row(
            "Ceiling here: the machine's CPU per task (every process on it: server, proxy, "
            "client, workers, task processes), cores busy, and the most tasks/s its cores "
            "allow",
            lambda c: (
                f"{c['submit_tasks']['machine_cpu_ms_per_call']:.1f} ms, "
                f"{c['submit_tasks']['machine_busy']:.0%} busy: "
                f"{c['submit_tasks']['machine_bound_per_s']:.0f} tasks/s"
            ),
            "(explains tasks/s)",
            None,
        ),
        row(
            f"Parallel efficiency, 40 x 0.5 s on {a['workers']} workers",
            lambda c: f"{c['efficiency']['efficiency']:.2f}",
            ">= 0.95",
            slow["efficiency"]["efficiency"] >= 0.95,
        ),
        row(
            "... of which: the 40 tasks' own span, first start to last end (efficiency within it)",
            lambda c: (
                f"{c['efficiency']['run_span_s']:.2f} s of {c['efficiency']['wall_s']:.2f} s "
                f"({c['efficiency']['span_efficiency']:.2f})"
            ),
            "(explains efficiency)",
            None,
        ),
        row(
            "2 workers with `cpu=2`, 40 tasks waiting 1 s: efficiency against 4 slots",
            lambda c: f"{c['slots']['io_efficiency']:.2f}",
            ">= 0.9",
            slow["slots"]["io_efficiency"] >= 0.9,
        ),
        row(
            "CPU-bound tasks, 2 workers: speed-up of 2 slots over 1 (bound on this machine)",
            lambda c: (
                f"{c['slots']['cpu_speedup']:.2f} (bound {c['slots']['cpu_bound']:.1f}; "
                f"{c['slots']['cpu_1_slot_s']:.1f} s -> {c['slots']['cpu_2_slots_s']:.1f} s)"
            ),
            "report",
            None,
        ),
        row(
            "S3 requests per task, one `submit` per task",
            lambda c: f"{c['submit_tasks']['requests_per_task']:.2f}",
            "<= 7",
            max(c["submit_tasks"]["requests_per_task"] for c in (zero, slow)) <= 7,
        ),
        row(
            f"S3 requests per item, `map` of {a['map_items']:,} items",
            lambda c: f"{c['map']['requests_per_task']:.3f}",
            "<= 1",
            max(c["map"]["requests_per_task"] for c in (zero, slow)) <= 1,
        ),
        row(
            f"`map` of {a['map_items']:,} trivial items",
            lambda c: f"{c['map']['wall_s']:.2f} s",
            "(no target)",
            None,
        ),
        row(
            f"50 tasks closing over {a['closure_mb']} MB: stored",
            lambda c: f"{c['closure']['big_stored_mb']:.1f} MB",
            f"{a['closure_mb']} MB once",
            c_slow["big_stored_mb"] < a["closure_mb"] * 1.05 * 1.048576 + 1,
        ),
        row(
            f"50 tasks closing over {a['closure_mb']} MB vs a small closure",
            lambda c: (
                f"{c['closure']['big_s']:.1f} s vs {c['closure']['small_s']:.1f} s "
                f"= {c['closure']['ratio']:.1f}x"
            ),
            "<= 2x",
            c_slow["ratio"] <= 2,
        ),
        row(
            "... of which: until the first result (the big closure's one upload and each "
            "worker's one fetch), then tasks/s after it, big vs small",
            lambda c: (
                f"{c['closure']['big_first_s']:.2f} s vs {c['closure']['small_first_s']:.2f} s; "
                f"{c['closure']['big_rest_per_s']:.0f}/s vs "
                f"{c['closure']['small_rest_per_s']:.0f}/s"
            ),
            "(explains the closure ratio)",
            None,
        ),
        row(
            "10 kB PUT p50 with `Expect: 100-continue` -> without",
            lambda c: "",
            "one round trip",
            None,
        ),
    ]
    rows[-1] = (
        f"| 10 kB PUT p50, with `Expect: 100-continue` -> without (this change) | "
        f"{slow['put_expect']['p50_ms']:.1f} -> {slow['put_no_expect']['p50_ms']:.1f} ms | "
        f"{zero['put_expect']['p50_ms']:.1f} -> {zero['put_no_expect']['p50_ms']:.1f} ms | "
        f"one round trip | n/a |"
    )
    rows.append(
        row(
            "Ceiling here: small PUTs/s through this client stack, 64 in flight",
            lambda c: f"{c['put_rate']['puts_per_s']:.0f}/s",
            "(explains submits/s)",
            None,
        )
    )
    rows.append(
        f"| Client CPU to pickle and hash one call closing over {a['closure_mb']} MB: "
        "without a piece cache; with one (an executor's), first call and later calls | "
        f"{res['encode']['ms_per_call']:.0f} ms; {res['encode']['first_cached_ms']:.0f} ms "
        f"and {res['encode']['later_cached_ms']:.2f} ms | (same) | "
        "(explains the closure ratio) | n/a |"
    )
    ops = sorted(k for k in slow["submit_tasks"] if k.startswith("req_"))
    per_op = ", ".join(
        f"{k[4:]} {slow['submit_tasks'][k]:.2f} ({zero['submit_tasks'].get(k, 0):.2f})" for k in ops
    )
    return "\n".join(
        [
            BEGIN,
            f"## At real S3 latency ({d:g} ms per request) and at 0 ms",
            "",
            f"Generated by bench/latency_bench.py in one run ({res['elapsed_s']:.0f} s): the "
            f"{d:g} ms column puts a TCP proxy that delays every request {d:g} ms (so an "
            "upload waiting for `Expect: 100-continue` pays it twice) between the local "
            "server and both the client and its workers; the 0 ms column talks to the server "
            "directly. Each measure runs at 0 ms and then at the delay, back to back, once; "
            "the machine's 2 cores are shared by the server, the proxy, the client, the "
            "workers and whatever else runs there (its load average is printed below). "
            "Requests per task count the client's and the workers' requests (workers' warm-up "
            "included).",
            "",
            f"| measure | at {d:g} ms | at 0 ms | target (at {d:g} ms unless said) | |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"Requests per task by operation at {d:g} ms (0 ms): {per_op}.",
            "",
            f"Load average (1 min) at the end of the run: {res['load']:.1f} on "
            f"{os.cpu_count()} cores.",
            END,
        ]
    )


def write_section(section: str) -> None:
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
