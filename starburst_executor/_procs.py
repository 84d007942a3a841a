"""Process checks shared by the local server and the local launcher (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its parent counts as gone).

    A process of another user counts as alive: it exists, we just cannot signal it.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def writes_under(pid: int, folder: Path) -> bool:
    """True while ``pid`` runs with its standard output in a file under ``folder``.

    A local worker's output goes to ``<logs>/<session>/<worker>.log``, whether it was
    started as a subprocess or forked from the worker template (whose ``/proc`` environ
    is the template's): this tells a session's workers apart from a reused pid.
    """
    if not pid_alive(pid):
        return False
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return False
    return Path(target).parent == folder


def writers_under(folder: Path) -> list[int]:
    """The live processes whose standard output is a file under ``folder``: a local
    session's workers and their task processes (``writes_under``)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and writes_under(int(entry.name), folder)
    ]
