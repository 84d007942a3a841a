"""The claim protocol under real races and real lease expiry, on SeaweedFS."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from starburst_executor._core import claims
from starburst_executor._core.layout import SessionLayout, new_session_id, task_id


def test_racing_workers_each_task_has_exactly_one_winner(store, prefix):
    layout = SessionLayout(prefix, new_session_id())
    tids = [task_id(i) for i in range(40)]

    async def contender(name: str) -> list[str]:
        won = []
        for tid in tids:
            if await claims.try_claim(store, layout, tid, name) is not None:
                won.append(tid)
        return won

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*(contender(f"w-racer{i:02d}") for i in range(6))))

    results = store.run(race())
    winners = Counter(t for won in results for t in won)
    assert sorted(winners) == tids
    assert set(winners.values()) == {1}


def _wait_until_expired(store, layout, tid, lease):  # type: ignore[no-untyped-def]
    """Poll the server's clock (not ours) until the claim's lease has run out."""
    deadline = time.monotonic() + lease + 10
    while time.monotonic() < deadline:
        listing = store.run(store.list_objects(layout.dir("claims")))
        info = next(o for o in listing.objects if o.key.endswith(tid))
        if claims.lease_expired(info, listing.server_time, lease):
            return info
        time.sleep(0.25)
    raise AssertionError("lease never expired by the server's clock")


def test_expired_claim_is_taken_over_once_and_old_holder_loses_renewal(store, prefix):
    layout = SessionLayout(prefix, new_session_id())
    tid = task_id(0)
    lease = 2.0
    held = store.run(claims.try_claim(store, layout, tid, "w-first1"))
    assert held is not None

    listing = store.run(store.list_objects(layout.dir("claims")))
    fresh = listing.objects[0]
    assert not claims.lease_expired(fresh, listing.server_time, lease)

    info = _wait_until_expired(store, layout, tid, lease)

    async def two_takers():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            claims.take_over(store, layout, info, tid, "w-second"),
            claims.take_over(store, layout, info, tid, "w-third1"),
        )

    outcomes = [o for o in store.run(two_takers()) if o is not None]
    assert len(outcomes) == 1
    previous, new = outcomes[0]
    assert previous.worker_id == "w-first1" and new.attempt == 2
    assert store.run(claims.renew(store, layout, held)) is None
    assert store.run(claims.renew(store, layout, new)) is not None


def test_renewal_keeps_a_claim_from_being_taken_over(store, prefix):
    layout = SessionLayout(prefix, new_session_id())
    tid = task_id(0)
    held = store.run(claims.try_claim(store, layout, tid, "w-holder"))
    stale = store.run(store.list_objects(layout.dir("claims"))).objects[0]
    renewed = store.run(claims.renew(store, layout, held))
    assert renewed is not None and renewed.etag != held.etag
    # A taker working from the listing before the renewal must lose.
    assert store.run(claims.take_over(store, layout, stale, tid, "w-taker1")) is None


def test_cancel_claim_blocks_workers(store, prefix):
    layout = SessionLayout(prefix, new_session_id())
    tid = task_id(3)
    assert store.run(claims.try_claim(store, layout, tid, "client", state="cancelled"))
    assert store.run(claims.try_claim(store, layout, tid, "w-worker")) is None
    read = store.run(claims.read_claim(store, layout, tid))
    assert read is not None and read.state == "cancelled"


def test_an_owners_claim_says_so_through_renewals_and_a_takeover_does_not(store, prefix):
    """An owner that loses a task reads the winner's claim: only another owner's claim
    means a shared shard (a steal, a takeover or a hand-back's claimer does not)."""
    layout = SessionLayout(prefix, new_session_id())
    mine, stolen = task_id(0), task_id(1)
    claim = store.run(claims.try_claim(store, layout, mine, "w-owner-a", owner=True))
    assert claim is not None and claim.owner
    assert store.run(claims.try_claim(store, layout, mine, "w-owner-b", owner=True)) is None
    read = store.run(claims.read_claim(store, layout, mine))
    assert read is not None and read.owner and read.worker_id == "w-owner-a"
    renewed = store.run(claims.renew(store, layout, claim))
    assert renewed is not None and renewed.owner and renewed.renewals == 1
    read = store.run(claims.read_claim(store, layout, mine))
    assert read is not None and read.owner and read.etag == renewed.etag
    store.run(claims.try_claim(store, layout, stolen, "w-stealer"))
    read = store.run(claims.read_claim(store, layout, stolen))
    assert read is not None and not read.owner
