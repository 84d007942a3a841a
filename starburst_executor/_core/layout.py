"""The one owner of every S3 key. Nothing else builds a key by hand.

::

    <prefix>/sessions/<session_id>/
        manifest.json            settings, deadline, fingerprint    client: create; extend: IfMatch
        tasks/t000000000         payload (cloudpickle)              client: create-only
        tasks/t000000001         ...task ids sort in submission order
        tasks/t000000002.30      30 payloads, tasks t000000002 to    client: create-only
                                 t000000031 (a batch: calls that
                                 queued during one write); sorts
                                 right after its first id
        tasks/~released/t000000000.<etag>                           hand-back: create, then
                                 empty: the claim with <etag> was   delete the claim; the
                                 released; sorts after every task   next claimer deletes it
        tasks/~stop              stop marker: sorts after every id  cleanup: create
        claims/t000000000        lease JSON                         worker: create-only,
                                                                    renew/take over with IfMatch
        results/t000000000       the one outcome (ok/error/cancel)  create-only, first writer wins
        failed/t000000000        empty index marker: outcome failed
        cancelled/t000000000     empty index marker: outcome cancelled
        reexecuted/t000000000    empty marker: a worker took the task over (lease expired)
        workers/<worker_id>.json worker registry: pid, host, counters
        blobs/<sha256>           a pickled piece over 1 MiB (a big   client: PUT once per
                                 closure or argument), named by its  content; workers fetch
                                 hash; payloads refer to it          it once and cache it
    <prefix>/code/<sha256>.zip   the user's own modules, zipped     client: create-only,
                                 (shared by sessions: same code,    once per content; the
                                 same key, uploaded once)           worker checks the hash

The markers (``~released/...``, ``~stop``) sort after every task id, so the one
listing of task keys each worker polls with (from ``SUBMIT_WINDOW`` below the
highest task id it has seen) shows them at no extra cost: a handed-back task is
claimable by every live worker on its next poll, however far its view has moved on.

A task id is in exactly one task object, alone or in a batch; the key says which ids
a batch holds, so listings expand it without reading it. Claims, outcomes and markers
stay one key per task.

Reading state needs only listings: a task is pending when it has no claim,
running when it has a claim and no result, finished when it has a result; the
``failed/`` and ``cancelled/`` markers split finished results by kind. Ids are
checked against fixed patterns before a key is built, so no id can reach
outside its session's prefix.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from ..errors import CorruptObject, InvalidSessionId

SESSION_ID_RE = re.compile(r"^session-[0-9a-f]{16}$")
TASK_ID_RE = re.compile(r"^t[0-9]{9}$")
BATCH_RE = re.compile(r"^t([0-9]{9})\.([0-9]{1,4})$")
MAX_BATCH = 9999  # ids in one batch key, at most (the key's count has 4 digits)
WORKER_ID_RE = re.compile(r"^w-[0-9a-z-]{4,40}$")
CODE_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
STOP_MARKER = "~stop"
RELEASED_DIR = "~released/"
ETAG_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$")
MAX_TASKS = 10**9
KINDS = frozenset({"tasks", "claims", "results", "failed", "cancelled", "reexecuted", "workers"})


def new_session_id() -> str:
    """A fresh id such as ``session-3f9c0a1b2c3d4e5f``."""
    return f"session-{secrets.token_hex(8)}"


def new_worker_id() -> str:
    return f"w-{secrets.token_hex(6)}"


def ecs_worker_id(task_arn: str) -> str:
    """The registry id of the worker an ECS task runs, known before it registers."""
    return f"w-ecs-{task_arn.rsplit('/', 1)[-1][:24]}"


def check_session_id(session_id: object) -> str:
    """Return ``session_id`` when it matches the fixed pattern, else raise."""
    if not isinstance(session_id, str) or not SESSION_ID_RE.match(session_id):
        raise InvalidSessionId(
            f"invalid session id {session_id!r}: expected 'session-' followed by 16 hex "
            "digits, as printed by `ex.session_id` or `starburst sessions`"
        )
    return session_id


def check_task_id(task_id: object) -> str:
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise InvalidSessionId(
            f"invalid task id {task_id!r}: expected 't' followed by 9 digits, "
            "as shown by `future.task_id`"
        )
    return task_id


def task_id(index: int) -> str:
    """The id of the ``index``-th task of a session (0-based)."""
    if not 0 <= index < MAX_TASKS:
        raise ValueError(f"task index {index} out of range")
    return f"t{index:09d}"


def task_index(tid: str) -> int:
    return int(check_task_id(tid)[1:])


def check_worker_id(worker_id: str) -> str:
    if not WORKER_ID_RE.match(worker_id):
        raise InvalidSessionId(f"invalid worker id {worker_id!r}")
    return worker_id


def code_key(prefix: str, digest: str) -> str:
    """The key of a code bundle: content-addressed, shared by every session under ``prefix``."""
    if not CODE_DIGEST_RE.match(digest):
        raise CorruptObject(f"invalid code bundle digest {digest!r}: expected 64 hex digits")
    return f"{prefix}/code/{digest}.zip"


@dataclass(frozen=True)
class SessionLayout:
    """Keys of one session under a prefix."""

    prefix: str
    session_id: str

    def __post_init__(self) -> None:
        check_session_id(self.session_id)

    @staticmethod
    def sessions_root(prefix: str) -> str:
        return f"{prefix}/sessions/"

    @property
    def root(self) -> str:
        return f"{self.prefix}/sessions/{self.session_id}/"

    @property
    def manifest(self) -> str:
        return self.root + "manifest.json"

    def dir(self, kind: str) -> str:
        """The listing prefix of one kind of key (see the drawing above)."""
        if kind not in KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.root}{kind}/"

    def key(self, kind: str, tid: str) -> str:
        return self.dir(kind) + check_task_id(tid)

    def batch(self, first: str, count: int) -> str:
        """The key of the task object holding ``count`` calls from ``first`` on."""
        if count == 1:
            return self.key("tasks", first)
        if not 1 < count <= MAX_BATCH:
            raise ValueError(f"a batch holds 2 to {MAX_BATCH} tasks, not {count}")
        return f"{self.key('tasks', first)}.{count}"

    def task_range(self, key: str) -> tuple[int, int] | None:
        """``(first index, count)`` of the tasks a ``tasks/`` key holds (one, or a
        batch's); None for markers and anything else."""
        head = self.dir("tasks")
        if not key.startswith(head):
            return None
        name = key[len(head) :]
        if TASK_ID_RE.match(name):
            return int(name[1:]), 1
        match = BATCH_RE.match(name)
        if match is None:
            return None
        first, count = int(match[1]), int(match[2])
        return (first, count) if count > 1 and first + count <= MAX_TASKS else None

    def task_ids_of(self, key: str) -> list[str]:
        """The ids of the tasks a ``tasks/`` key holds, in order (empty: not a task)."""
        found = self.task_range(key)
        return [] if found is None else [task_id(i) for i in range(found[0], sum(found))]

    def after(self, kind: str, tid: str | None) -> str | None:
        """A ``StartAfter`` value that lists ``kind`` keys past ``tid`` (past a batch
        that starts at ``tid`` too: ``~`` sorts after its count)."""
        return None if tid is None else f"{self.key(kind, tid)}.~"

    @property
    def stop_marker(self) -> str:
        return self.dir("tasks") + STOP_MARKER

    def blob(self, digest: str) -> str:
        """A content-addressed piece of the session's payloads (see ``codec``)."""
        if not CODE_DIGEST_RE.match(digest):
            raise CorruptObject(f"invalid blob digest {digest!r}: expected 64 hex digits")
        return f"{self.root}blobs/{digest}"

    def worker(self, worker_id: str) -> str:
        return self.dir("workers") + check_worker_id(worker_id) + ".json"

    def released(self, tid: str, etag: str) -> str:
        """The marker saying the claim of ``tid`` with ``etag`` was handed back."""
        if not ETAG_RE.match(etag):
            raise ValueError(f"unexpected ETag {etag!r} for the released marker of {tid}")
        return f"{self.dir('tasks')}{RELEASED_DIR}{check_task_id(tid)}.{etag}"

    def released_of(self, key: str) -> tuple[str, str] | None:
        """``(task id, released ETag)`` of a released marker key, else None."""
        head = self.dir("tasks") + RELEASED_DIR
        if not key.startswith(head):
            return None
        tid, _, etag = key[len(head) :].partition(".")
        if not TASK_ID_RE.match(tid) or not ETAG_RE.match(etag):
            return None
        return tid, etag

    def tid_of(self, key: str) -> str | None:
        """The task id of ``<root>/<kind>/<id>``, or None for markers and anything else
        (a key one level deeper, outside the session, or a junk name)."""
        if not key.startswith(self.root):
            return None
        kind, _, name = key[len(self.root) :].partition("/")
        return name if kind in KINDS and TASK_ID_RE.match(name) else None
