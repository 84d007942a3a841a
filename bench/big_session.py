"""A very large session, seen from its clients (issue 16): submit, ``status()``,
attach, one poll round over every pending future, and each client's memory.

Each client runs in a fresh interpreter, so its memory is its own: the submitting
client submits ``--tasks`` calls one ``submit`` at a time and detaches; a second
interpreter attaches, takes ``status()``, and runs one poll round over every future
(the background poller paused, so the round is counted alone). One worker serves the
session while it is submitted, so the attached session has done, running and pending
tasks, as a real one does. Run it alone: ``python bench/big_session.py --tasks 100000``;
``bench/run.py`` runs it as part of ``make bench`` and prints the JSON it returns.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trivial(x: int) -> int:
    return x


def submit_phase(n: int) -> dict[str, Any]:
    from starburst_executor import DetachedExecutor

    base = rss_mib()
    ex = DetachedExecutor(max_workers=1, session_timeout=3600)
    t0 = time.perf_counter()
    for i in range(n):
        ex.submit(trivial, i)
    ex.flush()  # the durability point: every call is in S3
    submit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    status = ex.status()
    status_s = time.perf_counter() - t0
    sid = ex.detach()
    return {
        "session_id": sid,
        "submit_s": submit_s,
        "submits_per_s": n / submit_s,
        "status_s_submitter": status_s,
        "status_at_submit": status.to_json(),
        "rss_mib_submitter": rss_mib(),
        "rss_mib_before": base,
    }


def attach_phase(sid: str) -> dict[str, Any]:
    from starburst_executor import DetachedExecutor

    base = rss_mib()
    t0 = time.perf_counter()
    ex = DetachedExecutor.attach(sid)
    attach_s = time.perf_counter() - t0
    futures = len(ex.futures)
    rss_attached = rss_mib()
    t0 = time.perf_counter()
    status = ex.status()
    status_s = time.perf_counter() - t0
    # The attached client delivers the finished tasks' results to their futures in the
    # background (a GET each): wait for that, as as_completed would, so the round below
    # is one round of a caught-up client, not the delivery of the backlog.
    t0 = time.perf_counter()
    deadline = t0 + 1800
    while sum(f.done() for f in ex.futures) < status.finished and time.perf_counter() < deadline:
        time.sleep(0.5)
    catch_up_s = time.perf_counter() - t0
    ex._poller.stop()  # one round, counted alone
    counter = ex._runtime.store.counter
    before = dict(counter.by_operation)
    t0 = time.perf_counter()
    ex._poller.sync()
    round_s = time.perf_counter() - t0
    after = dict(counter.by_operation)
    requests = {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op)}
    ex.cleanup(force=True)
    return {
        "attach_s": attach_s,
        "futures": futures,
        "status_s": status_s,
        "catch_up_s": catch_up_s,
        "status": status.to_json(),
        "poll_round_s": round_s,
        "poll_round_requests": requests,
        "rss_mib_attached": rss_attached,
        "rss_mib_before_attach": base,
    }


def _child(phase: str, arg: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", phase, arg],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run(n: int) -> dict[str, Any]:
    """Both phases, each in its own interpreter."""
    submitted = _child("submit", str(n))
    attached = _child("attach", submitted["session_id"])
    return {"tasks": n, **submitted, **attached}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--phase", choices=["submit", "attach"])
    parser.add_argument("arg", nargs="?")
    args = parser.parse_args()
    if args.phase == "submit":
        print(json.dumps(submit_phase(int(args.arg))))
    elif args.phase == "attach":
        print(json.dumps(attach_phase(args.arg)))
    else:
        print(json.dumps(run(args.tasks), indent=2))


if __name__ == "__main__":
    main()
