"""The claim protocol: who runs a task, for how long, and who may take it over.

::

    pending ──create claims/<t> (IfNoneMatch=*)──▶ claimed by W, attempt 1
       │                                              │ renew: PUT IfMatch=<etag> every lease/3
       │                                              │ result: PUT results/<t> (IfNoneMatch=*)
       │                                              ▼
       │                                         finished (exactly one outcome)
       │
       │   lease expired (claim LastModified + lease < server Date of a listing):
       │       GET claim, PUT IfMatch=<listed etag>, attempt + 1  ──▶ claimed by W'
       │       attempt > max_retries + 1 ──▶ outcome WorkerLost
       │
       ├──create claims/<t> {"state": "cancelled"} (client cancel) ──▶ outcome cancelled
       │
       └── hand-back (SIGTERM, Spot notice): PUT tasks/~released/<t>.<etag>, DELETE claim
           IfMatch=<etag> ──▶ pending; the next claimer deletes the marker

A 412 on any of these PUTs means "lost the race": the caller moves on. (S3's 409
ConditionalRequestConflict is not a lost race; the store retries it underneath.)
Expiry is judged on the server's clock only (the object's LastModified against
the Date header of the listing that saw it), so a skewed worker clock cannot
cause an early takeover. Claims hold a renewal counter so every renewal has a
new body, hence a new ETag.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from ..errors import ObjectNotFound, PreconditionFailed
from ..store.base import ObjectInfo, ObjectStore
from .layout import SessionLayout
from .writes import conditional_put

ClaimState = Literal["running", "cancelled"]


@dataclass(frozen=True)
class Claim:
    """A claim this process holds (or just read)."""

    task_id: str
    worker_id: str
    attempt: int
    etag: str
    state: ClaimState = "running"
    renewals: int = 0
    # Claimed by the owner of the task's shard (``_core/workview.py``), not by a steal, a
    # takeover or a hand-back's next claimer: an owner that loses a task to another owner
    # shares its shard.
    owner: bool = False

    def body(self) -> bytes:
        return json.dumps(
            {
                "task_id": self.task_id,
                "worker_id": self.worker_id,
                "attempt": self.attempt,
                "state": self.state,
                "renewals": self.renewals,
                "owner": self.owner,
                "written": time.time(),
            }
        ).encode()


def lease_expired(info: ObjectInfo, server_time: datetime, lease_seconds: float) -> bool:
    """True when the claim's lease ran out, judged by the server's clock only.

    LastModified has one-second resolution, so one second of slack is added.
    """
    return info.last_modified + timedelta(seconds=lease_seconds + 1) < server_time


async def try_claim(
    store: ObjectStore,
    layout: SessionLayout,
    task_id: str,
    worker_id: str,
    *,
    state: ClaimState = "running",
    owner: bool = False,
) -> Claim | None:
    """Create the claim of a pending task; None when somebody else got there first.
    ``owner``: the claimer owns the task's shard."""
    claim = Claim(task_id, worker_id, 1, "", state, owner=owner)
    etag = await conditional_put(
        store, layout.key("claims", task_id), claim.body(), if_none_match=True
    )
    return None if etag is None else Claim(task_id, worker_id, 1, etag, state, owner=owner)


async def renew(store: ObjectStore, layout: SessionLayout, claim: Claim) -> Claim | None:
    """Extend the lease; None when the claim was taken over (the lease is lost)."""
    nxt = dataclasses.replace(claim, etag="", renewals=claim.renewals + 1)
    try:
        etag = await conditional_put(
            store, layout.key("claims", claim.task_id), nxt.body(), if_match=claim.etag
        )
    except ObjectNotFound:
        return None
    if etag is None:
        return None
    return dataclasses.replace(nxt, etag=etag)


async def read_claim(store: ObjectStore, layout: SessionLayout, task_id: str) -> Claim | None:
    try:
        blob = await store.get(layout.key("claims", task_id))
    except ObjectNotFound:
        return None
    data = json.loads(blob.body)
    return Claim(
        task_id,
        str(data.get("worker_id", "")),
        int(data.get("attempt", 1)),
        blob.etag,
        "cancelled" if data.get("state") == "cancelled" else "running",
        int(data.get("renewals", 0)),
        owner=data.get("owner") is True,
    )


async def take_over(
    store: ObjectStore,
    layout: SessionLayout,
    expired: ObjectInfo,
    task_id: str,
    worker_id: str,
) -> tuple[Claim, Claim] | None:
    """Take an expired claim over; returns ``(previous, new)`` or None if we lost.

    The PUT is conditional on the ETag the listing showed, so a claim renewed
    since that listing is never taken.
    """
    previous = await read_claim(store, layout, task_id)
    if previous is None or previous.etag != expired.etag:
        return None
    nxt = Claim(task_id, worker_id, previous.attempt + 1, "", previous.state)
    try:
        etag = await conditional_put(
            store, layout.key("claims", task_id), nxt.body(), if_match=expired.etag
        )
    except ObjectNotFound:
        return None
    if etag is None:
        return None
    return previous, Claim(task_id, worker_id, nxt.attempt, etag, nxt.state)


async def hand_back(store: ObjectStore, layout: SessionLayout, claim: Claim) -> bool:
    """Release a claim we still hold (conditional on its ETag), so the task is pending
    again at once instead of after the lease. False when it was no longer ours.

    The released marker is written first: every worker's next listing of new task keys
    sees it (it sorts after every task id), even one whose view passed the task long
    ago. Should we die between the two requests, the claim's lease expires as usual and
    the marker is dropped as stale.
    """
    marker = layout.released(claim.task_id, claim.etag)
    await store.put(marker, b"")
    try:
        await store.delete(layout.key("claims", claim.task_id), if_match=claim.etag)
    except (PreconditionFailed, ObjectNotFound):
        await store.delete(marker)
        return False
    return True


async def claim_released(
    store: ObjectStore, layout: SessionLayout, marker: str, worker_id: str
) -> Claim | None:
    """Claim a task from its released marker; None when it is not claimable now.

    The marker is deleted once it is stale: the task was claimed again (a claim with
    another ETag than the released one exists) or finished. While the released claim
    itself is still there (the hand-back is between its two requests) it stays.
    """
    parsed = layout.released_of(marker)
    if parsed is None:
        return None
    tid, released_etag = parsed
    claim = await try_claim(store, layout, tid, worker_id)
    if claim is not None:
        await store.delete(marker)
        return claim
    current = await read_claim(store, layout, tid)
    if current is not None and current.etag != released_etag:
        await store.delete(marker)
    return None
