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


def write_whole(path: str | Path, text: str) -> None:
    """Write ``text`` so that a test sees the file only once it is whole (a test waits
    for the file to exist, then reads it)."""
    part = Path(f"{path}.part")
    part.write_text(text)
    part.replace(path)


def wait_for_file(path: str, timeout: float = 900.0) -> str:
    """Block until ``path`` exists: lets a test hold a worker busy deterministically.
    The timeout only ends a task whose test died without cleaning up: a test on a
    loaded machine may take minutes to reach its release, and must not fail for it."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.02)
    return "released"


def touch_then_wait(started: str, release: str) -> int:
    write_whole(started, str(os.getpid()))
    wait_for_file(release)
    return os.getpid()


def kill_worker_first_time(marker: str) -> str:
    """SIGKILLs the worker running it (the parent of a detached worker's task process)
    the first time; succeeds when run again."""
    import signal

    if not Path(marker).exists():
        write_whole(marker, str(os.getppid()))
        os.kill(os.getppid(), signal.SIGKILL)
    return "survived"


def kill_worker() -> None:
    """SIGKILLs the worker running it, every time (a detached worker's task process)."""
    import signal

    os.kill(os.getppid(), signal.SIGKILL)


def kill_own_process(marker: str) -> None:
    """Records that it ran, then SIGKILLs its own process (a segfault's effect)."""
    import signal

    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def record_and_return(marker: str, value: object) -> object:
    """Appends a line to ``marker`` per execution, then returns ``value``."""
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    return value


def hold_the_gil(seconds: float, marker: str) -> str:
    """Blocks in C with the GIL held (libc sleep through PyDLL), like an extension that
    never releases it; counts its executions in ``marker``."""
    import ctypes

    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    ctypes.PyDLL(None).sleep(int(seconds))
    return "held"


class StrRaises(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of StrRaises fails")


class ReduceExits(Exception):
    """An exception whose pickling calls ``sys.exit``."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import sys

        sys.exit(3)


def raise_str_raises() -> None:
    raise StrRaises("boom")


def raise_reduce_exits() -> None:
    raise ReduceExits("bye")


def worker_pid() -> int:
    """The pid of the worker running this task (the task process's parent)."""
    return os.getppid()


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


class CodedError(Exception):
    """An exception whose __init__ takes other arguments than its args."""

    def __init__(self, code: int, *, detail: str) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code
        self.detail = detail


def raise_coded(code: int) -> None:
    raise CodedError(code, detail="see the manual")


class HoldsLockError(Exception):
    def __init__(self, message: str) -> None:
        import threading

        super().__init__(message)
        self.lock = threading.Lock()


def raise_holding_lock() -> None:
    raise HoldsLockError("it holds a lock")


def barrier(folder: str, i: int, n: int, hold: float = 0.0, timeout: float = 60.0) -> int:
    """Returns ``hold`` seconds after ``n`` tasks reached it: they ran at once, on ``n``
    different workers."""
    write_whole(Path(folder, str(i)), str(os.getpid()))
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).iterdir())) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(Path(folder).iterdir()))} of {n} arrived")
        time.sleep(0.02)
    time.sleep(hold)
    return os.getpid()


def fail_after(seconds: float) -> None:
    time.sleep(seconds)
    raise CustomError(f"failed after {seconds}s")


def env(name: str) -> str | None:
    return os.environ.get(name)


def append_index_slowly(path: str, i: int, seconds: float) -> int:
    """Runs longer than a lease, so it survives only if its lease keeps being renewed."""
    time.sleep(seconds)
    return append_index(path, i)


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


def env_names() -> list[str]:
    """The names of the worker's environment variables."""
    return sorted(os.environ)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def segfault() -> None:
    """Crashes its process with SIGSEGV (a bad pointer in C)."""
    import ctypes

    ctypes.string_at(0)


def leave_a_process_behind() -> int:
    """Start a process that outlives this task, with this task's output; its pid."""
    import subprocess

    return subprocess.Popen(["sleep", "600"], start_new_session=True).pid
