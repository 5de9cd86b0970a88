"""The Redis store and the shared rate limiter, against a private Redis."""

import asyncio
import time

from bot.events import Snapshot, build_events
from bot.ratelimit import JITTER, SLACK, RedisRateLimiter
from bot.store import (
    ESCALATIONS,
    EVENTS_STREAM,
    REMINDERS,
    Claim,
    Store,
    TaskState,
    limiter_keys,
    lock_key,
    rate_key,
)
from tests.conftest import commands_at_redis, wait_for

WAITING = Snapshot(status="MAKING", stage="CONFIRM", stage_status="WAIT_PROCESS", round=1)
TRAINING = Snapshot(status="MAKING", stage="TRAIN", stage_status="PROCESSING")


async def test_tracking_is_idempotent(store: Store):
    first, started = await store.track("t-1", channel="C1", title="Anna", tracked_by="U1")
    again, started_again = await store.track("t-1", channel="C2", title="x", tracked_by="U2")
    assert started and not started_again
    assert again == first
    assert first.channel == "C1" and first.tracked_by == "U1"
    assert [entry["kind"] for entry in await store.history("t-1")] == ["tracked"]


async def test_a_task_is_leased_to_one_poller_until_rescheduled(store: Store):
    await store.track("t-1", channel=None, title=None, tracked_by="cli", now=100.0)
    assert await store.lease_due(now=101.0, limit=10, lease=60) == ["t-1"]
    assert await store.lease_due(now=102.0, limit=10, lease=60) == []
    assert await store.lease_due(now=161.5, limit=10, lease=60) == ["t-1"]  # lease ran out


async def test_concurrent_recordings_of_one_transition_append_one_event(store: Store):
    await store.track("t-1", channel=None, title=None, tracked_by="cli")
    record = await store.get("t-1")
    assert record is not None
    events = build_events("t-1", None, WAITING, at=1.0)
    results = await asyncio.gather(
        *(store.record_progress(record, WAITING, events, now=1.0, next_poll=2.0) for _ in range(10))
    )
    assert sum(results) == 1
    assert len(await store.events()) == 1
    assert await store.redis.xlen(EVENTS_STREAM) == 1


async def test_a_finished_task_leaves_the_schedule(store: Store):
    await store.track("t-1", channel=None, title=None, tracked_by="cli", now=1.0)
    record = await store.get("t-1")
    assert record is not None
    done = Snapshot(status="SUCCESS", stage="END", stage_status="SUCCESS")
    await store.record_progress(record, done, [], now=2.0, next_poll=None)
    assert (await store.get("t-1")).state == TaskState.FINISHED
    assert await store.lease_due(now=1e12, limit=10, lease=1) == []


async def test_unknown_task_stops_polling_and_can_be_tracked_again(store: Store):
    record, _ = await store.track("t-1", channel=None, title=None, tracked_by="U1", now=1.0)
    await store.mark_unknown(record, "IVH code 110006: record does not exist", now=2.0)
    again = await store.get("t-1")
    assert again is not None and again.state == TaskState.UNKNOWN and "110006" in again.error
    assert await store.lease_due(now=1e12, limit=10, lease=1) == []
    [(_, event)] = await store.events()
    assert event.type == "unknown_task"
    _, started = await store.track("t-1", channel=None, title=None, tracked_by="U1", now=3.0)
    assert started and (await store.get("t-1")).state == TaskState.ACTIVE


async def test_an_unknown_task_leaves_the_gauge_and_the_waiting_sets_in_one_step(store: Store):
    """A task whose round waits, then unknown to IVH: it is no longer counted by stage and its
    round waits nowhere, all done by one command. Broken: the gauge was fixed and the round
    taken out of PENDING in two more commands after the transaction (a process killed in
    between left the gauge off by one), and the round stayed in REMINDERS and ESCALATIONS."""
    for task_id in ("t-0", "t-1"):  # t-0 loads the script: its first use costs a SCRIPT LOAD
        record, _ = await store.track(task_id, channel=None, title=None, tracked_by="U1", now=1.0)
        events = build_events(task_id, None, WAITING, at=2.0)
        assert await store.record_progress(record, WAITING, events, now=2.0, next_poll=3.0)
    assert await store.stage_counts() == {"CONFIRM/WAIT_PROCESS": 2}
    t0 = await store.get("t-0")
    assert t0 is not None
    await store.mark_unknown(t0, "IVH code 110006: record does not exist", now=3.0)
    t1 = await store.get("t-1")
    assert t1 is not None
    await store.open_connections(4)  # MONITOR takes one: no handshake on a new one inside

    async with commands_at_redis(store.redis) as sent:
        await store.mark_unknown(t1, "IVH code 110006: record does not exist", now=4.0)

    assert [command.split(" ")[0] for command in sent] == ["EVALSHA"]
    assert await store.stage_counts() == {}
    assert await store.pending() == []
    for key in (REMINDERS, ESCALATIONS):
        assert await store.take_waiting(key, upto=1e12, then=None) == []
    [(_, unknown)] = [(i, e) for i, e in await store.events() if e.type == "unknown_task"][1:]
    assert unknown.task_id == "t-1" and "110006" in unknown.message


def parked_in(told: list[float]):
    """A limiter's sleep that notes the wait it was told and never returns: the slots the
    limiter handed out count, not when this busy process would have woken."""

    async def sleep(seconds: float) -> None:
        told.append(seconds)
        await asyncio.Event().wait()

    return sleep


async def test_rate_limiter_spaces_requests_across_clients(redis):
    """One slot per caller, (1 + JITTER + SLACK) / rate apart, whichever of three clients
    asks. The slots are 2 s apart: a pause of this process between two callers (another
    process using the CPU) shorter than that cannot let a slot pass unclaimed. At 20/s
    (53 ms apart) such a pause made a caller find its slot free, and the test fail."""
    rate, callers = 0.5, 20
    told: list[float] = []
    limiters = [
        RedisRateLimiter(redis, rate_key("test"), rate, sleep=parked_in(told)) for _ in range(3)
    ]
    await asyncio.gather(*(redis.ping() for _ in range(callers)))  # connections ready first
    await RedisRateLimiter(redis, rate_key("warm"), rate).acquire()  # and the scripts loaded
    started = time.monotonic()
    asking = [asyncio.create_task(limiters[i % 3].acquire()) for i in range(callers)]

    async def all_told() -> bool:
        return len(told) == callers - 1  # the first waits for none

    await wait_for(all_told)
    took = time.monotonic() - started
    for caller in asking:
        caller.cancel()
    await asyncio.gather(*asking, return_exceptions=True)
    interval = (1 + JITTER + SLACK) / rate
    assert max(told) >= (callers - 1) * interval - took
    assert max(told) <= (callers - 1) * interval + 0.001


async def test_a_priority_caller_does_not_queue_behind_reserved_slots(redis):
    """Polls reserve slots ahead; a user's confirmation takes the next priority slot and is
    granted at once while the window has room (broken: it waited behind all ten). Slots
    0.5 s apart, for the reason above."""
    rate = 2.0
    polls_told: list[float] = []
    users_told: list[float] = []
    polls = RedisRateLimiter(redis, rate_key("test"), rate, sleep=parked_in(polls_told))
    users = RedisRateLimiter(redis, rate_key("test"), rate, sleep=parked_in(users_told))
    await asyncio.gather(*(redis.ping() for _ in range(10)))  # connections ready first,
    await RedisRateLimiter(redis, rate_key("warm"), rate).acquire()  # and the scripts loaded
    asking = [asyncio.create_task(polls.acquire()) for _ in range(10)]

    async def all_told() -> bool:
        return len(polls_told) == 9  # the first waits for none

    await wait_for(all_told)
    await asyncio.wait_for(users.acquire(priority=True), 5)
    for caller in asking:
        caller.cancel()
    await asyncio.gather(*asking, return_exceptions=True)
    interval = (1 + JITTER + SLACK) / rate
    assert max(polls_told) >= 8 * interval
    assert users_told == []  # no wait at all


async def test_background_callers_are_refused_while_a_priority_slot_is_reserved(redis):
    """A poll whose slot comes while a confirmation waits for its own slot is refused and
    reserves again (broken: it went first, taking the grant the confirmation needed).

    The confirmations' limiter is slow (priority slots about 18 minutes apart), so the second
    one's slot stays reserved however long this process is paused; the polls' limiter is
    fast (5 grants a second), so the grant budget has room for the poll: only the reserved
    priority slot can refuse it."""
    users_told: list[float] = []
    polls_told: list[float] = []
    users = RedisRateLimiter(redis, rate_key("test"), 0.001, sleep=parked_in(users_told))
    polls = RedisRateLimiter(redis, rate_key("test"), 5.0, sleep=parked_in(polls_told))
    await users.acquire(priority=True)  # the first priority slot: sent at once
    waiting = asyncio.create_task(users.acquire(priority=True))  # the next: parked in its sleep
    await wait_for(lambda: users_told, within=30, what="the confirmation waits")
    asking = asyncio.create_task(polls.acquire())
    try:
        await wait_for(lambda: polls_told or asking.done(), within=30, what="the poll answered")
        assert not asking.done(), "the poll was granted while a priority slot was reserved"
        assert len(polls_told) == 1  # refused at its free slot, it reserved the next one
    finally:
        for caller in (waiting, asking):
            caller.cancel()
        await asyncio.gather(waiting, asking, return_exceptions=True)


async def test_history_is_trimmed_to_its_cap(store: Store):
    from bot.store import HISTORY_MAX, history_key

    await store.track("t-1", channel=None, title=None, tracked_by="cli")
    for i in range(HISTORY_MAX + 50):
        record = await store.get("t-1")
        assert record is not None
        stage = TRAINING if i % 2 else WAITING
        await store.record_progress(record, stage, [], now=float(i), next_poll=float(i + 1))
    assert await store.redis.llen(history_key("t-1")) == HISTORY_MAX


async def test_a_finished_task_is_retired_after_the_retention(store: Store):
    from bot.store import RETENTION, task_key

    await store.track("t-1", channel=None, title=None, tracked_by="cli")
    await store.retire("t-1")
    ttl = await store.redis.ttl(task_key("t-1"))
    assert RETENTION - 5 < ttl <= RETENTION
    _, started = await store.track("t-1", channel=None, title=None, tracked_by="cli")
    assert not started  # still known while it lives


async def test_a_publisher_renews_only_events_it_still_owns(store: Store):
    """A slow publisher whose event was reclaimed must not steal it back with its heartbeat."""
    await store.ensure_group()
    await store.track("t-1", channel=None, title=None, tracked_by="cli")
    record = await store.get("t-1")
    assert record is not None
    await store.record_progress(
        record, WAITING, build_events("t-1", None, WAITING, at=1.0), now=1.0, next_poll=2.0
    )
    [(entry_id, _)] = await store.read_group("slow", 10, 100)
    assert await store.keep_owned(entry_id, "slow")
    [(taken, _)] = await store.reclaim("other", 0, 10)
    assert taken == entry_id
    assert not await store.keep_owned(entry_id, "slow")
    assert await store.keep_owned(entry_id, "other")


async def test_a_lock_has_one_holder_and_only_its_holder_releases_it(store: Store):
    held = await store.lock("parent:t-1", 60)
    assert held is not None
    assert await store.lock("parent:t-1", 60) is None
    stranger = store.redis.lock(lock_key("parent:t-1"), timeout=60, thread_local=False)
    await store.unlock(stranger)  # not its holder: nothing happens
    assert await store.lock("parent:t-1", 60) is None
    assert held is not None
    await store.unlock(held)
    assert await store.lock("parent:t-1", 60) is not None


async def test_an_unreadable_event_is_returned_as_none_not_raised(store: Store):
    await store.ensure_group()
    await store.redis.xadd(EVENTS_STREAM, {"type": "from_the_future", "task_id": "t-1"})
    [(_, event)] = await store.read_group("me", 10, 100)
    assert event is None


async def test_callers_woken_late_together_send_at_most_the_rate_and_queue_the_rest(redis):
    # Eight callers of several replicas come to send at the same moment (Redis's answers with
    # their slots reached them late, say): five may send, the other three take new slots.
    rate, callers = 5.0, 8
    first_waits: list[float] = []
    requeued_waits: list[float] = []

    def wakes_at_once():
        slots = 0

        async def sleep(seconds: float) -> None:
            nonlocal slots
            slots += 1
            if slots == 1:
                first_waits.append(seconds)
                return
            requeued_waits.append(seconds)
            await asyncio.Event().wait()  # queued again: stays there until the test ends

        return sleep

    limiters = [
        RedisRateLimiter(redis, rate_key("test"), rate, sleep=wakes_at_once())
        for _ in range(callers)
    ]
    tasks = [asyncio.create_task(limiter.acquire()) for limiter in limiters]

    async def settled() -> bool:
        return sum(task.done() for task in tasks) + len(requeued_waits) == callers

    await wait_for(settled)
    sent = sum(task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sent == rate
    assert len(requeued_waits) == callers - rate
    assert min(requeued_waits) > max(first_waits)  # behind every slot given out before


async def test_a_caller_woken_late_takes_the_next_slot_instead_of_sending(redis):
    now = 0.0
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        nonlocal now
        slept.append(seconds)
        now += seconds + (0.2 if len(slept) == 1 else 0.0)  # the first wake-up is 200 ms late

    await RedisRateLimiter(redis, rate_key("test"), 10.0).acquire()  # the slot now is taken
    late = RedisRateLimiter(redis, rate_key("test"), 10.0, clock=lambda: now, sleep=sleep)
    await late.acquire()
    assert len(slept) == 2 and slept[1] > slept[0]  # gave its slot up, went on the next one
    assert (
        await redis.llen(limiter_keys(rate_key("test")).grants) == 2
    )  # and asked no grant for the first


async def test_connections_are_opened_ahead_of_a_burst(store: Store):
    before = len(await store.redis.client_list())
    await store.open_connections(12)
    after = len(await store.redis.client_list())
    assert after - before >= 11  # twelve open now (one was), not one connection reused


async def test_a_claim_comes_with_the_task_as_it_stands_once_taken(store: Store):
    alice = Claim(user="U0ALICE", operate="AGREE", at=1.0, token="a")
    bob = Claim(user="U0BOB", operate="REJECT", at=2.0, token="b", reason="stiff")
    assert await store.claim("t-1", 1, alice, ttl=60) == (None, None)  # not tracked
    await store.release("t-1", 1, "a")
    await store.track("t-1", channel="C1", title="Anna", tracked_by="cli")
    holder, loaded = await store.claim("t-1", 1, alice, ttl=60)
    assert holder is None and loaded is not None and loaded.record.title == "Anna"
    holder, loaded = await store.claim("t-1", 1, bob, ttl=60)
    assert holder == alice and loaded is not None and loaded.record.channel == "C1"


async def test_an_idle_caller_is_granted_in_one_round_trip(redis):
    """Reserving a slot that is free now also grants the send (broken: a second script)."""

    async def scripts_run() -> int:
        stats = await redis.info("commandstats")
        return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))

    async def never(seconds: float) -> None:
        raise AssertionError(f"an idle caller was told to wait {seconds} s")

    limiter = RedisRateLimiter(redis, rate_key("test"), 1.0, sleep=never)
    await RedisRateLimiter(redis, rate_key("warm"), 1.0).acquire()  # the script is loaded
    before = await scripts_run()
    await limiter.acquire()
    assert await scripts_run() - before == 1
    assert await redis.llen(limiter_keys(rate_key("test")).grants) == 1  # and the grant is recorded
