"""Fixtures: one real SeaweedFS server per test run, an isolated key prefix per test.

The caller's ``AWS_*`` and ``STARBURST_*`` environment is stripped first, so a
developer's ``~/.aws`` or settings cannot change a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

for _name in list(os.environ):
    if _name.startswith(("AWS_", "STARBURST_")):
        del os.environ[_name]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# Local workers import the test modules' functions by name, as users' workers do theirs.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_TESTS, os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture(scope="session")
def starburst_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from starburst_executor.store.local_server import LocalServer

    home = tmp_path_factory.mktemp("starburst-home")
    os.environ["STARBURST_HOME"] = str(home)
    server = LocalServer(home)
    server.ensure_running()
    yield home
    _kill_workers(home)
    server.stop()


def _kill_workers(home: Path) -> None:
    """End any worker a test left behind (they carry STARBURST_HOME=home)."""
    marker = f"STARBURST_HOME={home}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in environ and b"starburst_executor.worker" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture
def prefix(
    starburst_home: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A key prefix of this test's own; the library and its workers use it."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    value = f"t-{digest}"
    monkeypatch.setenv("STARBURST_PREFIX", value)
    return value


@pytest.fixture
def location(starburst_home: Path, prefix: str):  # type: ignore[no-untyped-def]
    from starburst_executor._runtime import resolve_location

    return resolve_location(prefix=prefix)


@pytest.fixture
def store(location):  # type: ignore[no-untyped-def]
    """An S3Store on the test server, driven by a private event loop."""
    from starburst_executor._core.loop import LoopThread
    from starburst_executor.store.s3 import S3Store

    loc, creds = location
    loop = LoopThread("test-store")
    s3 = S3Store(loc, credentials=creds)
    s3.run = loop.run  # type: ignore[attr-defined]
    yield s3
    loop.run(s3.close())
    loop.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first: pytest-xdist hands tests out in collection order, and a minute-long
    test handed out last would end the run alone while the other workers idle."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``--dist loadgroup``, pytest-xdist groups a test by a suffix it writes into
    the node id's ``_nodeid`` slot. pytest 9.2 keeps node ids elsewhere: every group would
    be spread over the workers (each building its expensive session fixture again)
    without a word, so the run stops here instead."""
    from _pytest.nodes import Node

    dist = config.getoption("dist", default="no")
    if dist == "loadgroup" and "_nodeid" not in getattr(Node, "__slots__", ()):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} ignores xdist_group under --dist loadgroup "
            "(pytest-xdist cannot add the group to node ids): install the versions "
            "pyproject.toml pins (`make test` does)"
        )
