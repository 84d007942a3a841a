"""A polling worker's choice of work (``_core/workview.py``), alone: listings and a
clock go in, decisions come out; no store, no worker process."""

from __future__ import annotations

from datetime import datetime, timezone

from starburst_executor._core.layout import SessionLayout, new_session_id, task_id
from starburst_executor._core.submits import SUBMIT_WINDOW
from starburst_executor._core.workview import (
    AHEAD_HOLD_MIN,
    AHEAD_LEAD,
    BURST_AFTER,
    BURST_MAX,
    DUE_MAX,
    FOREIGN_AFTER,
    IDLE_MAX_DELAY,
    IDLE_MIN_DELAY,
    STEAL_AFTER_MAX,
    STEAL_CHECK_MAX,
    Lookahead,
    Shard,
    WorkView,
)
from starburst_executor.store.base import Listing, ObjectInfo

LAYOUT = SessionLayout("p", new_session_id())
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def listing(*keys: str) -> Listing:
    return Listing([ObjectInfo(k, "e", NOW, 0) for k in sorted(keys)], NOW)


def tasks(*indexes: int) -> list[str]:
    return [LAYOUT.key("tasks", task_id(i)) for i in indexes]


def ids(*indexes: int) -> list[str]:
    return [task_id(i) for i in indexes]


def test_a_listing_adds_new_tasks_in_order_and_sees_the_markers():
    view = WorkView()
    view.absorb(listing(*tasks(0, 1, 3)), LAYOUT, now=10.0)
    assert view.tasks == ids(0, 1, 3) and view.top == 3 and view.saw_new
    assert view.first_poll == 10.0 and not view.arrivals  # a backlog, not a rate
    released = LAYOUT.released(task_id(1), "abc")
    view.absorb(listing(*tasks(0, 1, 2, 3, 4), released, LAYOUT.stop_marker), LAYOUT, now=11.0)
    assert view.tasks == ids(0, 1, 2, 3, 4)  # the late task 2 lands in its place
    assert view.released == [released] and view.stop_seen
    assert list(view.arrivals) == [(10.0, 2)]  # two new tasks since the poll at 10.0
    assert view.first_seen[task_id(2)] == 11.0 and view.first_seen[task_id(0)] == 10.0
    view.absorb(listing(*tasks(0, 1, 2, 3, 4)), LAYOUT, now=12.0)
    assert not view.saw_new and view.released == []


def test_the_next_listing_starts_a_submit_window_below_the_top():
    view = WorkView()
    assert view.listing_start() is None
    view.absorb(listing(*tasks(SUBMIT_WINDOW + 5)), LAYOUT, now=0.0)
    assert view.listing_start() == 5
    # ids that far below the top are never listed again, so they are not remembered
    assert all(int(t[1:]) > 5 for t in view.seen)


def test_a_batch_key_adds_each_of_its_tasks_and_junk_like_it_adds_none():
    view = WorkView()
    keys = [LAYOUT.batch(task_id(0), 3), *tasks(3), LAYOUT.batch(task_id(4), 60)]
    junk = [LAYOUT.key("tasks", task_id(70)) + s for s in (".1", ".x", ".99999", ".0")]
    view.absorb(listing(*keys, *junk), LAYOUT, now=1.0)
    assert view.tasks == ids(*range(64)) and view.top == 63
    assert list(view.first_seen) == ids(*range(64))  # in id order
    view.absorb(listing(LAYOUT.batch(task_id(64), 64)), LAYOUT, now=2.0)
    assert view.top == 127 and list(view.arrivals) == [(1.0, 64)]
    assert view.listing_start() == 127 - SUBMIT_WINDOW
    assert all(int(t[1:]) > 127 - SUBMIT_WINDOW for t in view.seen)
    # The next listing starts past every key of that id: a batch starting there sorts
    # after ``t<id>`` itself, and its ids are no longer remembered.
    start = LAYOUT.after("tasks", task_id(127 - SUBMIT_WINDOW))
    assert LAYOUT.batch(task_id(127 - SUBMIT_WINDOW), 5) < start
    assert start < LAYOUT.key("tasks", task_id(128 - SUBMIT_WINDOW))


def test_claimed_tasks_are_dropped_one_by_one_or_in_bulk():
    view = WorkView()
    view.absorb(listing(*tasks(*range(200))), LAYOUT, now=0.0)
    view.drop({task_id(0), task_id(57), task_id(999)})  # 999 was never pending
    assert len(view.tasks) == 198 and task_id(57) not in view.first_seen
    assert view.claimed_below == 1
    view.drop({task_id(i) for i in range(150)})  # a claims listing: more than 64 at once
    assert view.tasks == ids(*range(150, 200)) and view.claimed_below == 150
    assert list(view.first_seen) == ids(*range(150, 200))


def test_a_shard_owns_every_width_th_task_and_finds_its_first_few():
    shard = Shard(width=4, index=1)
    view = WorkView()
    view.absorb(listing(*tasks(*range(12))), LAYOUT, now=0.0)
    assert shard.own_pending(view) == ids(1, 5, 9)
    assert shard.own_pending(view, 2) == ids(1, 5)
    assert not shard.next_is_ours(view)  # tasks are pending
    view.drop(set(ids(*range(12))))
    assert not shard.next_is_ours(view)  # the next id, 12, is shard 0's
    view.absorb(listing(*tasks(*range(13))), LAYOUT, now=1.0)
    view.drop(set(ids(*range(13))))
    assert shard.next_is_ours(view)  # 13 is ours


def test_two_races_lost_to_another_owner_move_the_worker_to_the_next_shard():
    shard = Shard(width=3, index=2)
    shard.lost_race(to_owner=True)
    shard.collisions = 0  # a claim won in between (the runner resets it)
    shard.lost_race(to_owner=True)
    assert shard.index == 2
    # Steals from this worker (it ran late) neither count nor clear the count.
    for _ in range(5):
        shard.lost_race(to_owner=False)
    assert shard.index == 2 and shard.collisions == 1
    shard.lost_race(to_owner=True)
    assert shard.index == 0 and shard.collisions == 0


def test_the_rate_and_when_the_shards_next_task_is_due():
    shard = Shard(width=4, index=0)
    view = WorkView()
    view.absorb(listing(*tasks(0)), LAYOUT, now=0.0)
    assert shard.rate(view, 0.0) == 0.0 and shard.own_due(view, 0.0) is None
    view.absorb(listing(*tasks(*range(4))), LAYOUT, now=0.4)
    view.absorb(listing(*tasks(*range(8))), LAYOUT, now=0.8)
    # Two polls showed tasks: a burst or two, no stream yet, so nothing is "due".
    assert shard.rate(view, 0.8) > 0 and shard.own_due(view, 0.8) is None
    view.absorb(listing(*tasks(*range(11))), LAYOUT, now=1.0)  # 10 tasks in 1 s
    assert shard.rate(view, 1.0) == 10.0
    # top is 10: the shard's next id is 12, the 2nd after it, due two submits late
    assert shard.own_due(view, 1.0) == 1.0 + (2 + 2) / 10.0
    # an old rate is forgotten
    assert shard.rate(view, 100.0) == 0.0


def test_steals_wait_for_the_owner_then_take_the_oldest_first():
    shard = Shard(width=2, index=0)
    view = WorkView()
    view.absorb(listing(*tasks(1, 3)), LAYOUT, now=5.0)
    view.absorb(listing(*tasks(0, 1, 2, 3, 5)), LAYOUT, now=6.0)
    assert shard.steal_after(view, 6.0) == min(max(FOREIGN_AFTER, 2 * 2 / 3.0), STEAL_AFTER_MAX)
    after = shard.steal_after(view, 6.0)
    assert shard.steal_ready(view, 6.0) == 5.0 + after  # task 1, seen first
    # At 8.5 s the rate has fallen (3 tasks in 3.5 s): owners get the longest wait, 3 s
    assert shard.steal_after(view, 8.5) == STEAL_AFTER_MAX
    assert shard.stale_foreign(view, 8.5, 5) == ids(1, 3)  # not 5: seen 2.5 s ago
    assert shard.stale_foreign(view, 100.0, 1) == ids(1)
    view.drop(set(ids(1, 3, 5)))
    assert shard.steal_ready(view, 100.0) is None  # only own tasks left


def test_fruitless_steal_checks_back_off_to_a_cap_stretched_for_large_fleets():
    for width, cap in ((4, STEAL_CHECK_MAX), (64, STEAL_CHECK_MAX * 4)):
        shard, view = Shard(width=width), WorkView()
        for _ in range(20):
            shard.steal_checked_in_vain(view, 0.0)
        assert view.steal_wait == cap


def test_idle_polls_back_off_faster_in_a_large_fleet():
    assert Shard(width=2).idle_growth == 2.0
    assert Shard(width=16).idle_growth == 2.0
    assert Shard(width=64).idle_growth == 8.0


def test_the_pause_before_the_next_poll():
    shard = Shard(width=4, index=0)
    view = WorkView()
    assert shard.pause(view, 1e6, 0.0, hot=False) == IDLE_MAX_DELAY
    assert shard.pause(view, 0.5, 0.0, hot=False) == 0.5
    view.absorb(listing(*tasks(0)), LAYOUT, now=0.0)
    for n, now in ((4, 0.4), (8, 0.8), (11, 1.0)):  # a stream: three polls showed tasks
        view.absorb(listing(*tasks(*range(n))), LAYOUT, now=now)
    view.drop(set(ids(*range(11))))
    due = shard.own_due(view, 1.0)
    assert due is not None
    # while tasks arrive, sleep until the shard's next one is due (not the idle delay)
    assert shard.pause(view, IDLE_MIN_DELAY, 1.0, hot=False) == due - 1.0
    # ... but never longer than DUE_MAX, and not at all while hot
    assert shard.pause(view, IDLE_MIN_DELAY, -100.0, hot=False) == DUE_MAX
    assert shard.pause(view, IDLE_MIN_DELAY, 1.0, hot=True) == IDLE_MIN_DELAY


def test_a_large_fleets_owners_get_longer_before_their_tasks_are_stolen():
    view = WorkView()
    view.absorb(listing(*tasks(0)), LAYOUT, now=0.0)
    view.absorb(listing(*tasks(0, 1)), LAYOUT, now=1.0)  # a slow stream: 1 task/s
    assert Shard(width=4).steal_after(view, 1.0) == STEAL_AFTER_MAX
    # 64 workers: owners may sleep up to 4x DUE_MAX, and stealers wait as long
    assert Shard(width=64).steal_after(view, 1.0) == 4 * STEAL_AFTER_MAX


def test_a_claim_ahead_goes_out_before_the_first_running_task_is_expected_to_end():
    ahead = Lookahead()
    assert ahead.due([100.0]) is None  # no task finished yet: how long one takes is unknown
    ahead.ran(0.5)
    assert ahead.due([]) is None  # nothing runs
    # Twice the time a claim and a payload read take, before the earliest expected end.
    assert ahead.due([100.0, 100.2]) == 100.0 + 0.5 - 2 * AHEAD_LEAD
    ahead.prepared(0.3)  # the store got slower: claim earlier
    assert ahead.due([100.0]) < 100.0 + 0.5 - 2 * AHEAD_LEAD
    ahead.ran(5.0)  # a running estimate: one long task moves it, does not replace it
    assert 0.5 < ahead.run_time < 5.0
    quick = Lookahead()
    quick.ran(AHEAD_LEAD / 10)  # tasks faster than a claim: claiming ahead hides nothing
    assert quick.due([100.0]) is None


def test_tasks_shorter_than_a_claim_are_claimed_several_in_one_round_trip():
    ahead = Lookahead()
    assert ahead.burst() == 1  # how long a task takes is not known yet
    for _ in range(BURST_AFTER - 1):
        ahead.ran(0.0)
    assert ahead.burst() == 1  # a warm-up of a few quick calls is no evidence yet
    ahead.ran(0.0)
    assert ahead.burst() == 2  # then twice as many claims each task
    ahead.ran(0.0)
    assert ahead.burst() == 4
    for _ in range(10):
        ahead.ran(0.0)
    assert ahead.burst() == BURST_MAX
    ahead.claimed(0.0)  # claims got quick: no more at once than run in one claim's time
    for _ in range(10):
        ahead.claimed(AHEAD_LEAD / 4)
    ahead.ran(AHEAD_LEAD / 16)
    assert 1 < ahead.burst() < BURST_MAX
    ahead.ran(2 * AHEAD_LEAD)  # one long task: one claim at a time again
    assert ahead.burst() == 1
    for _ in range(20):
        ahead.ran(0.0)
    assert ahead.burst() > 1


def test_a_claim_ahead_is_held_at_most_a_bounded_time_and_not_retried_until_a_task_ends():
    ahead = Lookahead()
    ahead.ran(0.2)
    assert ahead.hold == AHEAD_HOLD_MIN  # short tasks: a second
    ahead.ran(10.0)
    assert ahead.hold == 2 * ahead.run_time + ahead.lead  # long ones: twice their time
    ahead.held_back = True  # one was handed back: its slot's task ran over
    assert ahead.due([0.0]) is None
    ahead.ran(1.0)  # a task ended
    assert ahead.due([0.0]) is not None
    assert Lookahead(alone=True).hold == float("inf")  # nobody else could run it sooner
