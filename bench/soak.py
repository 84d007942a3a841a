"""Soak: 10,000 tasks, 8 workers, 5% injected S3 faults, 3 workers killed mid-run.

Prints tasks, faults injected, workers killed, lost results (must be 0), re-executions
and wall time. Run with ``make soak`` (not part of ``make test``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_proxy import FaultProxy

from starburst_executor import DetachedExecutor
from starburst_executor.store.local_server import LocalServer, read_credentials


def work(i: int) -> int:
    return i * 7 + 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--faults", type=float, default=0.05)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="starburst-soak-"))
    os.environ["STARBURST_HOME"] = str(home)
    server = LocalServer(home)
    info = server.ensure_running()
    access, secret = read_credentials(home)
    os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    rng = random.Random(7)
    killed = 0
    with FaultProxy(info.endpoint_url, args.faults, seed=11) as proxy:
        t0 = time.perf_counter()
        ex = DetachedExecutor(
            max_workers=args.workers,
            lease_seconds=10,
            endpoint_url=proxy.url,
            bucket="starburst",
            prefix="soak",
        )
        futures = [ex.submit(work, i) for i in range(args.tasks)]
        submitted = time.perf_counter() - t0
        kill_at = sorted(rng.uniform(0.2, 0.7) for _ in range(args.kills))
        done = 0
        while done < args.tasks:
            done = sum(f.done() for f in futures)
            if kill_at and done >= kill_at[0] * args.tasks:
                kill_at.pop(0)
                registry = ex._runtime.loop.run(ex._session.workers())
                pids = [w["pid"] for w in registry if w.get("state") == "running"]
                alive = [p for p in pids if Path(f"/proc/{p}").exists()]
                if alive:
                    os.kill(rng.choice(alive), signal.SIGKILL)
                    killed += 1
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        lost = sum(
            1 for i, f in enumerate(futures) if f.exception() is not None or f.result() != work(i)
        )
        status = ex.status()
        ex.cleanup(force=True)
    server.stop()
    report = {
        "tasks": args.tasks,
        "workers": args.workers,
        "fault_fraction": args.faults,
        "requests_through_proxy": proxy.requests,
        "faults_injected": proxy.faults,
        "faults_by_kind": dict(proxy.injected),
        "workers_killed": killed,
        "lost_results": lost,
        "completed": status.completed,
        "failed": status.failed,
        "reexecutions": status.reexecuted,
        "submit_s": round(submitted, 1),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if lost == 0 and status.completed == args.tasks else 1


if __name__ == "__main__":
    sys.exit(main())
