"""The worker image proved without Docker.

The build context is laid out exactly as ``starburst image build`` lays it out;
a fresh virtualenv of the same Python minor version is installed from that
context alone by the context's own ``install.sh`` (the step the Dockerfile
runs: pip, the lock, the wheel of the running package). Workers then start from
that virtualenv in an empty folder, with only the variables the launcher passes,
and run, against the local S3 server, a function from a user module in a
temporary folder that no worker has on its path, which imports a third-party
package the lock pins.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from starburst_executor import DetachedExecutor
from starburst_executor.aws.image import build_context, plan_image
from starburst_executor.launch.local import LocalLauncher

# The virtualenv is built once per module: its tests stay on one xdist worker.
pytestmark = pytest.mark.xdist_group("image_venv")
TIMEOUT = 180
# What the worker needs (the package's own requirements come with it) plus one
# third-party package of the test environment that the package does not need.
REQUIREMENTS = "xmltodict\n"

MODEL = """\
import os
import sys

import xmltodict

VERSION = {version!r}


def fit(x):
    import starburst_executor

    return {{
        "version": VERSION,
        "parsed": xmltodict.parse(f"<a>{{x}}</a>")["a"],
        "model": __file__,
        "xmltodict": xmltodict.__file__,
        "starburst": starburst_executor.__file__,
        "prefix": sys.prefix,
        "path": sys.path,
        "cwd": os.getcwd(),
        "environ": sorted(os.environ),
    }}
"""


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(build context, virtualenv) made from the context alone, once: session-scoped, as
    an xdist worker may run this module's tests between other modules' tests, and a
    module fixture is then built again (a pip install each time)."""
    root = tmp_path_factory.mktemp("image")
    plan = plan_image(REQUIREMENTS)
    context = build_context(root / "context", plan)
    venv = root / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_NO_COMPILE"] = "1"  # the image compiles bytecode; here it only costs minutes
    install = subprocess.run(
        ["sh", str(context / "install.sh")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    yield context, venv


@pytest.fixture
def user_project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "userproj"
    (root / "mylib").mkdir(parents=True)
    (root / "mylib" / "__init__.py").write_text("")
    (root / "mylib" / "model.py").write_text(MODEL.format(version="v1"))
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for name in [n for n in sys.modules if n.partition(".")[0] == "mylib"]:
        del sys.modules[name]


def normal(pin: str) -> str:
    name, _, version = pin.partition("==")
    return f"{canonicalize_name(name)}=={version}"


def venv_executor(venv: Path) -> DetachedExecutor:
    """An executor whose workers run the virtualenv's Python with only the launcher's
    variables (those a container gets), in the current folder."""
    ex = DetachedExecutor(max_workers=1)
    launcher = ex._runtime.launcher
    assert isinstance(launcher, LocalLauncher)
    ex._runtime.launcher = LocalLauncher(
        launcher.logs_root, strip_aws_env=True, python=str(venv / "bin" / "python"), environ={}
    )
    return ex


def run_fit(venv: Path, x: int) -> dict[str, object]:
    from mylib.model import fit

    ex = venv_executor(venv)
    try:
        result: dict[str, object] = ex.submit(fit, x).result(timeout=TIMEOUT)
    finally:
        ex.cleanup(force=True)
    return result


def test_the_virtualenv_holds_the_lock_and_the_wheel_and_nothing_of_the_source(image_venv):
    context, venv = image_venv
    python = str(venv / "bin" / "python")
    show = subprocess.run(
        [
            python,
            "-c",
            "import starburst_executor, xmltodict, cloudpickle; "
            "print(starburst_executor.__file__); print(cloudpickle.__version__)",
        ],
        cwd=context,
        env={},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0, show.stderr
    package_file, cloudpickle_version = show.stdout.split()
    assert package_file.startswith(str(venv))  # installed from the wheel, not the checkout
    import cloudpickle

    assert cloudpickle_version == cloudpickle.__version__
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze"], env={}, capture_output=True, text=True, timeout=120
    ).stdout.splitlines()
    lock = (context / "requirements.lock").read_text().splitlines()
    assert {normal(pin) for pin in lock if "==" in pin} <= {normal(pin) for pin in frozen}


def test_a_user_module_runs_on_a_worker_from_the_image_environment(
    image_venv, user_project, tmp_path, monkeypatch, starburst_home, prefix
):
    _, venv = image_venv
    empty = tmp_path / "worker-cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)  # workers start here: nothing importable in it
    result = run_fit(venv, 7)
    assert result["version"] == "v1" and result["parsed"] == "7"
    assert result["prefix"] == str(venv)
    assert str(result["xmltodict"]).startswith(str(venv))
    assert str(result["starburst"]).startswith(str(venv))
    assert str(user_project) not in str(result["model"])
    assert not any(str(user_project) in p for p in result["path"])  # type: ignore[attr-defined]
    tests = str(Path(__file__).resolve().parent)
    assert not any(p.startswith(tests) for p in result["path"])  # type: ignore[attr-defined]
    assert result["cwd"] == str(empty)
    # Only what the launcher passes (Python itself may add LC_CTYPE, PEP 538).
    passed = {k for k in result["environ"] if not k.startswith("STARBURST_")}  # type: ignore[attr-defined]
    assert passed <= {"LC_CTYPE"}


def test_an_edit_between_sessions_reaches_the_image_worker(
    image_venv, user_project, tmp_path, monkeypatch, starburst_home, prefix
):
    _, venv = image_venv
    empty = tmp_path / "worker-cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    first = run_fit(venv, 1)
    (user_project / "mylib" / "model.py").write_text(MODEL.format(version="v2"))
    import mylib.model

    importlib.reload(mylib.model)
    second = run_fit(venv, 2)
    assert (first["version"], first["parsed"]) == ("v1", "1")
    assert (second["version"], second["parsed"]) == ("v2", "2")
    assert first["model"] != second["model"]  # another bundle, another folder
