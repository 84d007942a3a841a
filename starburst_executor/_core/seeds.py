"""Reproducible randomness: one child seed per task, derived from (seed, task index).

Like numpy's ``SeedSequence(seed).spawn``, children are independent streams that
depend only on the root seed and the task's position, never on which worker ran
the task or when. ``random`` is seeded from a SHA-256 derivation; numpy's global
generator, when numpy is importable, from ``SeedSequence(seed, spawn_key=(index,))``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random


def task_seed(seed: int, index: int) -> int:
    """The 64-bit seed of task ``index`` under root ``seed``."""
    digest = hashlib.sha256(f"starburst-seed:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def apply_task_seed(seed: int, index: int) -> None:
    """Seed ``random`` (and numpy's global generator, if numpy is installed)."""
    random.seed(task_seed(seed, index))
    if importlib.util.find_spec("numpy") is None:
        return
    import numpy

    state = numpy.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1)[0]
    numpy.random.seed(int(state))
