"""Functions the tests run on workers (importable there through PYTHONPATH)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


class CustomError(Exception):
    pass


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise CustomError(f"task {x} failed on purpose")
    return x


def chatty(x: int) -> int:
    print(f"hello from {x}")
    warnings.warn(f"careful with {x}", UserWarning, stacklevel=1)
    return x


def append_index(path: str, i: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Block until ``path`` exists: lets a test hold a worker busy deterministically."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return "released"


def touch_then_wait(started: str, release: str) -> int:
    Path(started).write_text(str(os.getpid()))
    wait_for_file(release)
    return os.getpid()


def kill_self_first_time(marker: str) -> str:
    """SIGKILLs its own worker the first time; succeeds when run again."""
    import signal

    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def unpicklable_result(_: int) -> object:
    import threading

    return threading.Lock()


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


_INITIALIZED: list[str] = []


def init_marker(value: str) -> None:
    _INITIALIZED.append(value)


def read_marker() -> list[str]:
    return list(_INITIALIZED)


def identity(x: object) -> object:
    return x


def big_bytes(n: int) -> bytes:
    return b"x" * n


def length(data: bytes) -> int:
    return len(data)


class Unloadable(Exception):
    """Pickles by reference to a module the client cannot import (see raise_unloadable)."""


def raise_unloadable() -> None:
    # A class whose module exists only in the worker: the client cannot rebuild it.
    import sys
    import types

    module = types.ModuleType("worker_only_module")
    sys.modules["worker_only_module"] = module

    class WorkerOnlyError(Exception):
        pass

    WorkerOnlyError.__module__ = "worker_only_module"
    WorkerOnlyError.__qualname__ = "WorkerOnlyError"
    module.WorkerOnlyError = WorkerOnlyError  # type: ignore[attr-defined]
    raise WorkerOnlyError("only the worker knows this class")


def failing_init(reason: str) -> None:
    raise ValueError(f"initializer refused: {reason}")


def _exit_now() -> None:
    import sys

    sys.exit(3)


class ExitAtUnpickle:
    """A value whose unpickling (on the client) calls ``sys.exit``."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return _exit_now, ()


def return_exit_at_unpickle() -> ExitAtUnpickle:
    return ExitAtUnpickle()


def sleep_then_append(path: str, i: int, seconds: float) -> int:
    time.sleep(seconds)
    return append_index(path, i)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
