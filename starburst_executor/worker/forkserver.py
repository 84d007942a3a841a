"""A template process that forks per-call workers with everything already imported.

::

    client (LocalLauncher)               template (this module)       worker
    ──────────────────────               ──────────────────────       ──────
    spawn ──{"env", "log"} on stdin───▶  fork() ───────────────────▶  setsid; stdout, stderr
          ◀──{"pid"} on stdout────────                                to its log; environ
    poll  ◀──{"exited", "code"}───────   waitpid on SIGCHLD           replaced; runner.main()

Starting ``python -m starburst_executor.worker`` costs an interpreter and the imports
of botocore, aiobotocore and cloudpickle: half a second, seconds on a loaded machine.
The template pays that once; a fork costs milliseconds. Between forks it also makes
(without opening) the S3 client the next worker of the same store will use. Each
worker still gets the whole environment the client would have given a subprocess
(sent per request), its own session and process group, and its own log file. The
template exits when the client closes its stdin, that is when the client exits; its
workers run on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import sys
import traceback
from typing import Any

from ..config import ENV_STORED_FD, ENV_TASK

REAP_INTERVAL = 0.5  # a fallback: a worker's exit wakes the template (SIGCHLD)


def _child(request: dict[str, Any], channel: tuple[int, ...], logging_fd: int) -> None:
    """In the forked worker: become the process ``python -m ...worker`` would have been.
    Closing ``logging_fd`` tells the template its output now goes to its log."""
    code = 1
    try:
        os.setsid()
        # Opened before the template's channel is closed: were the request pipe (fd 0)
        # closed first, the log would be opened as fd 0 and then replaced by /dev/null.
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        # A per-call worker's own end of the reply pipe (not inherited by its children):
        # it says there when its task's outcome is stored, so the client need not wait
        # for its exit (config.ENV_STORED_FD).
        stored = os.dup(channel[1]) if request["env"].get(ENV_TASK) else None
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in {log, null, *channel, logging_fd} - {0, 1, 2}:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        if stored is not None:
            os.environ[ENV_STORED_FD] = str(stored)
        from .runner import main

        code = main()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    # Requests arrive on fd 0, replies leave on a private copy of fd 1; fd 1 itself is
    # pointed at /dev/null so that nothing printed here can corrupt the replies.
    requests = 0
    replies = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    from ..store import s3
    from . import runner  # the imports every worker would pay for

    s3.prewarm()
    # A worker's exit writes a byte to this pipe, so it is reported at once.
    woken, wake = os.pipe()
    os.set_blocking(woken, False)
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Everything loaded so far lives as long as the template: out of the collector's
    # sight, a worker's collections do not touch (and so copy) the template's pages.
    gc.freeze()

    children: set[int] = set()
    buffered = b""

    def reply(message: dict[str, Any]) -> None:
        os.write(replies, json.dumps(message).encode() + b"\n")

    while True:
        ready, _, _ = select.select([requests, woken], [], [], REAP_INTERVAL)
        if woken in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(woken, 512):
                    pass
        if requests in ready:
            chunk = os.read(requests, 65536)
            if not chunk:
                return  # the client is gone; the workers run on
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                request = json.loads(line)
                sys.stdout.flush()
                sys.stderr.flush()
                logging, logging_fd = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(logging)
                    _child(request, (requests, replies, woken, wake), logging_fd)
                os.close(logging_fd)
                # The pid is reported once the worker's output goes to its log: that is
                # how a client attaching meanwhile tells the session's worker from a
                # reused pid (``_procs.writes_under``). EOF when the child closed its end.
                with contextlib.suppress(OSError):
                    os.read(logging, 1)
                os.close(logging)
                children.add(pid)
                reply({"pid": pid})
                with contextlib.suppress(Exception):  # only a missed saving, never fatal
                    runner.stock_store_client(request["env"])
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                reply({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
