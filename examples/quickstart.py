"""Quickstart: start a detached session, detach, then attach from a new interpreter.

Runs on the embedded local S3 server (no AWS account needed): ``make demo``.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

from starburst_executor import DetachedExecutor


def simulate(seed: int) -> float:
    """A small Monte Carlo estimate of pi."""
    rng = random.Random(seed)
    inside = sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(20_000))
    return 4.0 * inside / 20_000


def main() -> None:
    ex = DetachedExecutor(max_workers=2)
    for i in range(40):
        ex.submit(simulate, i)
    print(f"session id: {ex.session_id}")
    print(f"status right after submitting: {ex.status()}")
    ex.detach()
    print("detached: the workers keep going; a new interpreter attaches now\n")

    attach = textwrap.dedent(
        f"""
        from concurrent.futures import as_completed
        from starburst_executor import DetachedExecutor

        ex = DetachedExecutor.attach({ex.session_id!r})
        estimates = [f.result() for f in as_completed(ex.futures, timeout=600)]
        print(f"attached to {{ex.session_id}}: {{len(estimates)}} results")
        print(f"mean estimate of pi: {{sum(estimates) / len(estimates):.4f}}")
        outcomes = ex.collect(wait=True, timeout=600)
        print(f"first three outcomes: {{[round(o.value, 4) for o in outcomes[:3]]}}")
        print(f"final status: {{ex.status()}}")
        ex.cleanup(force=True)
        """
    )
    subprocess.run([sys.executable, "-c", attach], check=True)


if __name__ == "__main__":
    main()
