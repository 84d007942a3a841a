"""Seeds, progress bars, logging quietness."""

from __future__ import annotations

import concurrent.futures
import io
import logging
import random
import subprocess
import sys

import tasks

from starburst_executor import DetachedExecutor, StarburstExecutor, progress
from starburst_executor._core.seeds import task_seed
from starburst_executor._progress import render_bar


def draw() -> float:
    return random.random()


def test_seeded_sessions_give_the_same_numbers_per_task(prefix):
    runs = []
    for _ in range(2):
        with DetachedExecutor(max_workers=2, seed=7) as ex:
            runs.append([f.result(timeout=120) for f in [ex.submit(draw) for _ in range(6)]])
            ex.cleanup(force=True)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 6  # each task its own stream
    expected = random.Random(task_seed(7, 3)).random()
    assert runs[0][3] == expected


def test_different_seeds_differ(prefix):
    with (
        StarburstExecutor(max_workers=2, seed=1) as a,
        StarburstExecutor(max_workers=2, seed=2) as b,
    ):
        assert a.submit(draw).result(timeout=120) != b.submit(draw).result(timeout=120)


def test_progress_yields_every_future_and_draws_a_bar(prefix):
    stream = io.StringIO()
    with StarburstExecutor(max_workers=2) as ex:
        futures = [ex.submit(tasks.square, i) for i in range(4)]
        done = list(progress(futures, desc="squares", stream=stream))
    assert set(done) == set(futures)
    assert all(isinstance(f, concurrent.futures.Future) for f in done)
    assert "4/4" in stream.getvalue() or "4/4" in stream.getvalue().replace(" ", "")


def test_map_with_progress_keeps_order(prefix, capsys):
    with StarburstExecutor(max_workers=2) as ex:
        assert list(ex.map(tasks.square, range(5), progress=True)) == [0, 1, 4, 9, 16]
    assert "5/5" in capsys.readouterr().err


def test_render_bar_eta():
    assert "ETA 0:10" in render_bar(10, 20, 10.0)
    assert "ETA ?" in render_bar(0, 20, 1.0)
    assert "20/20 100%" in render_bar(20, 20, 3.0)


def test_library_is_quiet_by_default():
    code = (
        "import logging, starburst_executor;"
        "logging.getLogger('starburst_executor').warning('hidden');"
        "print(logging.getLogger('starburst_executor').handlers)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "NullHandler" in out.stdout
    assert "hidden" not in out.stderr
    assert logging.getLogger("starburst_executor").propagate


def test_map_chunks_cost_under_a_request_per_item_and_leave_no_worker_idle():
    from starburst_executor._base import auto_chunksize

    # (items, workers) -> items per chunk
    cases = {(1000, 4): 63, (1000, 64): 15, (100, 64): 1, (10, 2): 5, (0, 4): 1, (7, 1): 7}
    for (items, workers), size in cases.items():
        assert auto_chunksize(items, workers) == size, (items, workers)
    for items in (1, 9, 63, 64, 65, 500, 1000, 10_000):
        for workers in (1, 2, 16, 64, 1000):
            size = auto_chunksize(items, workers)
            chunks = -(-items // size)
            assert chunks >= min(items, workers)  # every worker gets a chunk
            # 16 items a chunk, unless one item more per chunk could leave a worker idle
            assert size >= 16 or items // (size + 1) < workers
