"""Every example runs on the local default, with small settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart(prefix):
    out = run_example("quickstart.py")
    assert "session id: session-" in out
    assert "40 results" in out
    assert "40 completed, 0 failed" in out


def test_monte_carlo_is_reproducible(prefix):
    first = run_example("monte_carlo.py", "4", "2000")
    second = run_example("monte_carlo.py", "4", "2000")
    assert "pi ~ " in first
    assert first == second  # seed=2026: the same numbers twice


def test_grid_search(prefix):
    assert "best: alpha=0.3 beta=8" in run_example("grid_search.py")


def test_detach_then_attach_pair(prefix):
    session_id = run_example("detach_submit.py").strip().splitlines()[-1]
    out = run_example("attach_collect.py", session_id)
    assert f"20 results: {[i * i for i in range(20)]}" in out


def test_asyncio(prefix):
    assert "fib(10, 20, 30) = [55, 6765, 832040]" in run_example("asyncio_use.py")


def test_error_handling(prefix):
    out = run_example("error_handling.py")
    assert "raised ValueError" in out
    assert "refused at submit: cannot pickle argument 0" in out
    assert "3 completed, 1 failed" in out
    assert "typed error: InvalidSessionId" in out


def test_own_module_beside_the_script_runs_on_workers_without_that_folder(prefix, tmp_path):
    # Workers start in the client's folder with its PYTHONPATH: neither holds examples/.
    assert str(EXAMPLES) not in os.environ.get("PYTHONPATH", "")
    out = run_example("own_module.py", cwd=tmp_path)
    assert "seed 3: slope 2.00, intercept 1.0" in out
    assert "shipped with the session: " in out and "mymodel" in out
    assert "workers imported mymodel from the shipped copy" in out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(name):
    covered = {
        "quickstart.py",
        "monte_carlo.py",
        "grid_search.py",
        "detach_submit.py",
        "attach_collect.py",
        "asyncio_use.py",
        "error_handling.py",
        "own_module.py",
        "mymodel.py",  # the sibling module own_module.py ships
        "timeline.py",
    }
    assert name in covered, f"examples/{name} has no test"


def test_timeline_writes_a_png(prefix, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "timeline.png"
    printed = run_example("timeline.py", "8", "2", str(out))
    assert f"timeline written to {out}" in printed and "8 tasks" in printed
    assert out.read_bytes().startswith(b"\x89PNG")
