"""An opt-in smoke run on a real AWS account: `make aws-smoke` (never run by tests or CI).

It costs money (a few cents: 20 small Fargate tasks for a minute or two, plus S3 requests)
and creates, then removes, the resources of `starburst setup`. It uses your ordinary AWS
credentials and region (`aws configure`, `AWS_PROFILE`, `AWS_DEFAULT_REGION`) and refuses
to start unless `STARBURST_AWS_SMOKE=yes` says you mean it.

Steps: setup, image build (docker buildx), 20 Fargate tasks on a DetachedExecutor, detach
and attach from a second executor, collect, cleanup, teardown. Prints cold start to the
first result, wall time, and the session's cost from `ex.cost()`.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time


def starburst(*args: str) -> None:
    print("$ starburst", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "starburst_executor.cli", *args], check=True)


def square(x: int) -> int:
    return x * x


def main() -> int:
    if os.environ.get("STARBURST_AWS_SMOKE") != "yes":
        print(
            "this run uses your AWS account and costs a few cents; "
            "set STARBURST_AWS_SMOKE=yes to go ahead",
            file=sys.stderr,
        )
        return 2
    if os.environ.get("STARBURST_AWS_ENDPOINT"):
        print("STARBURST_AWS_ENDPOINT is set: unset it to reach AWS itself", file=sys.stderr)
        return 2
    from starburst_executor import DetachedExecutor

    starburst("setup")
    try:
        starburst("image", "build")
        os.environ["STARBURST_BACKEND"] = "ecs"
        started = time.monotonic()
        ex = DetachedExecutor(max_workers=20, cpu=0.25, memory="512MB", max_hourly_cost=2.0)
        futures = [ex.submit(square, i) for i in range(20)]
        first = next(concurrent.futures.as_completed(futures, timeout=900))
        cold = time.monotonic() - started
        session = ex.detach()
        again = DetachedExecutor.attach(session)
        outcomes = again.collect(wait=True, timeout=900)
        wall = time.monotonic() - started
        assert sorted(o.value for o in outcomes) == [i * i for i in range(20)], outcomes
        cost = again.cost()
        again.cleanup(force=True)
        print(f"first result (task {first.task_id}) after {cold:.1f} s")
        print(f"20 tasks, detach and attach: {wall:.1f} s wall time")
        print(f"cost so far: ${cost.get('actual_to_date', 0):.4f} ({cost.get('rate_source')})")
    finally:
        starburst("teardown", "--delete-data")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
