"""Remote errors read like local ones: file, line and source of the user's code; the
exception's own class when it can be rebuilt, and why not when it cannot; store errors
that tell missing credentials from an unreachable endpoint."""

from __future__ import annotations

import linecache
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import tasks

from starburst_executor import DetachedExecutor, StarburstExecutor
from starburst_executor.errors import (
    CredentialsMissing,
    EndpointUnreachable,
    RemoteError,
    WorkerDied,
)

TIMEOUT = 120

SCRIPT = """\
from starburst_executor import StarburstExecutor

def boom(x):
    y = x + 1
    raise ValueError(f"bad {y}")

if __name__ == "__main__":
    with StarburstExecutor(max_workers=1) as ex:
        try:
            ex.submit(boom, 1).result(timeout=120)
        except ValueError as err:
            print(err.__cause__)
"""


def test_traceback_of_a_script_function_names_its_file_line_and_source(prefix, tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    frame = f'  File "{script}", line 5, in boom'
    assert frame in lines, done.stdout
    assert lines[lines.index(frame) + 1].strip() == 'raise ValueError(f"bad {y}")'
    assert "<dynamic-code>" not in done.stdout


def test_traceback_of_a_notebook_cell_shows_the_cells_source(prefix):
    """A notebook cell's file exists only in the client's linecache (as IPython does it):
    the worker cannot read it, the client fills the source lines in."""
    cell = "/tmp/ipykernel_4242/3141592653.py"  # does not exist on disk
    source = textwrap.dedent(
        """\
        def divide(a, b):
            ratio = a / b
            return ratio
        """
    )
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    try:
        with StarburstExecutor(max_workers=1) as ex, pytest.raises(ZeroDivisionError) as info:
            ex.submit(namespace["divide"], 1, 0).result(timeout=TIMEOUT)
    finally:
        linecache.cache.pop(cell, None)
    lines = str(info.value.__cause__).splitlines()
    frame = f'  File "{cell}", line 2, in divide'
    assert frame in lines
    assert lines[lines.index(frame) + 1].strip() == "ratio = a / b"


def test_exception_with_other_init_arguments_is_rebuilt(prefix):
    with StarburstExecutor(max_workers=1) as ex, pytest.raises(tasks.CodedError) as info:
        ex.submit(tasks.raise_coded, 7).result(timeout=TIMEOUT)
    err = info.value
    assert (err.code, err.detail, str(err)) == (7, "see the manual", "failed with code 7")
    assert "raise CodedError" in str(err.__cause__)


def test_exception_that_cannot_travel_says_why(prefix):
    with StarburstExecutor(max_workers=1) as ex, pytest.raises(RemoteError) as info:
        ex.submit(tasks.raise_holding_lock).result(timeout=TIMEOUT)
    err = info.value
    assert err.type_name == "tasks.HoldsLockError" and err.remote_message == "it holds a lock"
    assert "install the module" not in str(err)
    assert "could not pickle HoldsLockError" in str(err) and "lock" in err.reason


def test_worker_died_names_the_exit_code_once(prefix):
    with StarburstExecutor(max_workers=1) as ex, pytest.raises(WorkerDied) as info:
        ex.submit(os._exit, 3).result(timeout=TIMEOUT)
    assert info.value.exit_status == 3
    assert str(info.value).count("exit code 3") == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_missing_credentials_and_unreachable_endpoint_are_told_apart(
    prefix, starburst_home, monkeypatch
):
    from starburst_executor.store.local_server import LocalServer

    endpoint = LocalServer(starburst_home).ensure_running().endpoint_url
    # A custom endpoint and no credentials anywhere (the fixtures strip AWS_*).
    with pytest.raises(CredentialsMissing) as missing:
        DetachedExecutor(endpoint_url=endpoint, bucket="starburst")
    text = str(missing.value)
    assert "AWS_ACCESS_KEY_ID" in text and "STARBURST_S3_ENDPOINT" in text
    assert "local status" not in text

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy-loopback-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-loopback-only")
    nowhere = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EndpointUnreachable) as unreachable:
        DetachedExecutor(endpoint_url=nowhere, bucket="starburst")
    text = str(unreachable.value)
    assert f"cannot connect to {nowhere}: connection refused" in text
    assert "check that an S3 server listens there" in text and "STARBURST_S3_ENDPOINT" in text
    # Told by the refused connect itself, not after botocore's connect retries (30 s).
    assert isinstance(unreachable.value.__cause__, ConnectionRefusedError)
    with pytest.raises(EndpointUnreachable) as on_attach:
        DetachedExecutor.attach(
            "session-0123456789abcdef", endpoint_url=nowhere, bucket="starburst"
        )
    assert isinstance(on_attach.value.__cause__, ConnectionRefusedError)
    assert "local status" not in text
