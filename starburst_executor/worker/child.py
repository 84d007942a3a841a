"""The task process: a detached worker runs each task in a child interpreter.

::

    worker (claims, leases, S3)                    task process (user code only)
    ───────────────────────────                    ─────────────────────────────
    send(request) ──len + pickle({tid, payload})──▶ run_call(...)
    wait(timeout) ◀──len + Outcome.encode()──────── outcome
      │ renews the lease between waits: a task that holds the GIL, or blocks in C,
      │ cannot stop the renewal
      └ EOF / exit ──▶ the task killed its process: outcome WorkerDied, at once

The child is started once and reused for the next task, like a process pool of
one; after a crash the next task starts a fresh one. It ignores SIGTERM and
SIGINT (a Spot notice or Ctrl-C goes to the worker, which decides whether to
hand the task back) and dies with its parent (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
from typing import Any

HEADER = struct.Struct("!Q")


class ChildExited(Exception):
    """The task process ended without answering."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(describe_exit(returncode))
        self.returncode = returncode


def describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its pipe"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, body: bytes) -> None:
    _write_all(fd, HEADER.pack(len(body)) + body)


def _receive(fd: int) -> bytes | None:
    head = _read_exactly(fd, HEADER.size)
    if head is None:
        return None
    return _read_exactly(fd, HEADER.unpack(head)[0])


class TaskProcess:
    """The worker's handle on its task process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._to_child = -1
        self._from_child = -1

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        """Start the child now (it imports while the worker polls)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self.close()
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "starburst_executor.worker.child",
                    str(req_r),
                    str(res_w),
                    str(os.getpid()),
                ],
                pass_fds=(req_r, res_w),
                stdin=subprocess.DEVNULL,
                # Its own process group: a SIGTERM sent to the worker's group (a local
                # scale-down) must not kill it while it still starts, before it ignores
                # SIGTERM; it dies with the worker instead (``_die_with_parent``).
                start_new_session=True,
            )
        finally:
            os.close(req_r)
            os.close(res_w)
        self._to_child, self._from_child = req_w, res_r

    def fileno(self) -> int:
        """The pipe the answer comes on (for ``select`` over several task processes)."""
        return self._from_child

    def send(self, request: dict[str, Any]) -> None:
        """Hand the child one task. Raises ``ChildExited`` if it is gone."""
        self.start()
        try:
            _send(self._to_child, pickle.dumps(request, protocol=5))
        except (BrokenPipeError, OSError):
            raise ChildExited(self._reap()) from None

    def wait(self, timeout: float) -> bytes | None:
        """The child's answer, or None while it is still running after ``timeout``.

        Raises ``ChildExited`` when the child died instead of answering.
        """
        ready, _, _ = select.select([self._from_child], [], [], timeout)
        if not ready:
            return None
        answer = _receive(self._from_child)
        if answer is None:
            raise ChildExited(self._reap())
        return answer

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._reap()

    def _reap(self) -> int | None:
        code = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self._proc.wait(timeout=10)
        self.close()
        return code

    def stop(self, timeout: float = 5.0) -> None:
        """Close the pipes and wait for the child to exit (kill it past ``timeout``), so
        no process of this worker outlives it."""
        proc = self._proc
        self.close()
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self._proc = None

    def close(self) -> None:
        """Let the child go: it exits when its request pipe closes."""
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._to_child = self._from_child = -1
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None


def _die_with_parent(parent: int | None) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:
        os._exit(0)  # the worker died while this process started: run nothing


_PIECES: dict[str, bytes] = {}  # this process's last pieces: the next task often shares them
_IMMUTABLE: dict[str, Any] = {}  # of those, the ones that unpickle to bytes or str, unpickled
PIECES_KEPT_BYTES = 256 * 1024**2  # kept between tasks at most (one task's own are never evicted)


def _load_pieces(paths: dict[str, str]) -> dict[str, bytes]:
    """A payload's big pieces, read from the worker's files once per process; pieces
    of earlier tasks are kept, oldest out first, while they fit in PIECES_KEPT_BYTES."""
    wanted: dict[str, bytes] = {}
    for digest, path in paths.items():
        data = _PIECES.pop(digest, None)
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        wanted[digest] = data
    kept = sum(len(d) for d in wanted.values())
    for digest in list(_PIECES):  # oldest first: evict until this task's pieces fit too
        if kept + sum(len(d) for d in _PIECES.values()) <= PIECES_KEPT_BYTES:
            break
        del _PIECES[digest]
        _IMMUTABLE.pop(digest, None)
    _PIECES.update(wanted)  # newest last
    return wanted


def serve(request_fd: int, result_fd: int, parent: int | None = None) -> int:
    """The child's loop: one request in, one outcome out, until the pipe closes."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    from .execute import run_call

    while True:
        raw = _receive(request_fd)
        if raw is None:
            return 0
        request = pickle.loads(raw)
        # Shipped user code, unpacked by the worker: importable before unpickling.
        for folder in request.get("paths", ()):
            if folder not in sys.path:
                sys.path.insert(0, folder)
                importlib.invalidate_caches()
        outcome = run_call(
            request["task_id"],
            request["payload"],
            key=request["key"],
            seed=request["seed"],
            meta=request["meta"],
            pieces=_load_pieces(request.get("pieces", {})),
            immutable=_IMMUTABLE,
        )
        _send(result_fd, outcome.encode())


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
