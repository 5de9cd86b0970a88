"""The poller against the IVH simulator and a private Redis: transitions become events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from bot.events import EventType
from bot.ivh import IvhClient, RetryPolicy
from bot.poller import Poller
from bot.ratelimit import RedisRateLimiter
from bot.schedule import Schedule
from bot.sim import RunningSimulator, Simulator, start
from bot.sim.state import Fault
from bot.store import IVH_RATE, Store, TaskState, rate_key
from tests.conftest import busiest_window, grants_at_redis, wait_for

SLOW = 3600.0  # phases that only end when a test advances them


@pytest.fixture
async def sim(train_record: str) -> AsyncIterator[RunningSimulator]:
    running = await start(
        Simulator(
            audit_seconds=SLOW,
            train_seconds=SLOW,
            deliver_seconds=SLOW,
            train_record=train_record,
        )
    )
    yield running
    await running.close()


def ivh_client(sim: RunningSimulator, store: Store | None = None, qps: float = 0) -> IvhClient:
    limiter = RedisRateLimiter(store.redis, IVH_RATE, qps) if store and qps else None
    return IvhClient(
        sim.url,
        sim.sim.appkey,
        sim.sim.access_token,
        retry=RetryPolicy(attempts=2, base=0.01, cap=0.02),
        timeout=httpx.Timeout(2.0),
        limiter=limiter,
    )


@contextlib.asynccontextmanager
async def polling(
    store: Store,
    sim: RunningSimulator,
    *,
    interval: float = 0.02,
    qps: float = 1000,
    schedule: Schedule | None = None,
) -> AsyncIterator[Poller]:
    async with ivh_client(sim, store, qps) as ivh:
        poller = Poller(store, ivh, interval=interval, max_qps=qps, schedule=schedule)
        task = asyncio.create_task(poller.run())
        try:
            yield poller
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def event_types(store: Store, task_id: str) -> list[str]:
    return [e.type.value for _, e in await store.events() if e.task_id == task_id]


async def until_events(store: Store, task_id: str, count: int) -> list[str]:
    async def enough() -> bool:
        return len(await event_types(store, task_id)) >= count

    await wait_for(enough)
    return await event_types(store, task_id)


async def until_polled(sim: RunningSimulator, task_id: str, times: int = 1) -> None:
    """Wait until the simulator has answered `times` more progress reads for the task."""
    seen = sum(1 for r in sim.sim.requests if r["task_id"] == task_id)

    async def polled() -> bool:
        now = sum(1 for r in sim.sim.requests if r["task_id"] == task_id)
        return now >= seen + times

    await wait_for(polled)


@pytest.mark.parametrize("train_record", ["current", "history"])
async def test_two_rounds_then_success(store: Store, sim: RunningSimulator):
    task = sim.sim.create_task()
    await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    async with polling(store, sim), ivh_client(sim) as ivh:
        await until_polled(sim, task.task_id)
        assert await event_types(store, task.task_id) == []  # AUDIT: nothing to say
        sim.sim.advance(task.task_id)  # -> TRAIN
        sim.sim.advance(task.task_id)  # -> CONFIRM / WAIT_PROCESS, round 1
        [awaiting] = await until_events(store, task.task_id, 1)
        assert awaiting == "awaiting_confirmation"
        await ivh.customer_confirm(task.task_id, "REJECT", "lips out of sync")
        await until_events(store, task.task_id, 2)
        sim.sim.advance(task.task_id)  # training round 2 ends
        await until_events(store, task.task_id, 3)
        await ivh.customer_confirm(task.task_id, "AGREE")
        await until_events(store, task.task_id, 4)
        sim.sim.advance(task.task_id)  # delivered
        await until_events(store, task.task_id, 5)

    events = [e for _, e in await store.events() if e.task_id == task.task_id]
    assert [(e.type, e.round) for e in events] == [
        (EventType.AWAITING_CONFIRMATION, 1),
        (EventType.LEFT_CONFIRMATION, 1),
        (EventType.AWAITING_CONFIRMATION, 2),
        (EventType.LEFT_CONFIRMATION, 2),
        (EventType.SUCCEEDED, 2),
    ]
    assert events[0].demo_urls and events[2].demo_urls
    assert set(events[0].demo_urls).isdisjoint(events[2].demo_urls)
    assert events[-1].assets and events[-1].assets[0]["AssetType"] == "IMAGE"
    record = await store.get(task.task_id)
    assert record is not None and record.state == TaskState.FINISHED and record.round == 2


async def test_failure_is_one_event_with_the_message(store: Store, sim: RunningSimulator):
    task = sim.sim.create_task(fail_at="TRAIN", fail_message="footage too dark")
    await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    async with polling(store, sim):
        await until_polled(sim, task.task_id)
        sim.sim.advance(task.task_id)
        sim.sim.advance(task.task_id)
        await until_events(store, task.task_id, 1)
    [(_, event)] = [(i, e) for i, e in await store.events() if e.task_id == task.task_id]
    assert (event.type, event.fail_message) == (EventType.FAILED, "footage too dark")
    assert (await store.get(task.task_id)).state == TaskState.FINISHED


async def test_a_task_ivh_does_not_know_stops_being_polled(store: Store, sim: RunningSimulator):
    await store.track("no_such_task", channel=None, title=None, tracked_by="U0ALICE")
    async with polling(store, sim):
        [kind] = await until_events(store, "no_such_task", 1)
    assert kind == "unknown_task"
    record = await store.get("no_such_task")
    assert record is not None and record.state == TaskState.UNKNOWN and "110006" in record.error
    assert sum(1 for r in sim.sim.requests if r["task_id"] == "no_such_task") == 1


async def test_each_transition_is_one_event_across_restarts_and_twin_pollers(
    store: Store, sim: RunningSimulator
):
    task = sim.sim.create_task(audit_seconds=0, train_seconds=0)
    await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    async with polling(store, sim):
        await until_events(store, task.task_id, 1)
    # A restarted poller, and then two at once, keep reading the same state.
    async with polling(store, sim):
        await until_polled(sim, task.task_id, 5)
    async with polling(store, sim), polling(store, sim):
        await until_polled(sim, task.task_id, 10)
    assert await event_types(store, task.task_id) == ["awaiting_confirmation"]


async def test_one_broken_task_does_not_stall_the_others(
    store: Store, sim: RunningSimulator, caplog: pytest.LogCaptureFixture
):
    broken = sim.sim.create_task(audit_seconds=0, train_seconds=0)
    healthy = sim.sim.create_task(audit_seconds=0, train_seconds=0)
    sim.sim.add_fault(Fault(action="getprogress", task_id=broken.task_id, kind="garbage", count=50))
    for task in (broken, healthy):
        await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    with caplog.at_level(logging.WARNING):
        async with polling(store, sim):
            await until_events(store, healthy.task_id, 1)

            async def broken_recorded() -> bool:
                record = await store.get(broken.task_id)
                return record is not None and record.failures >= 1

            await wait_for(broken_recorded)
    record = await store.get(broken.task_id)
    assert record is not None and record.state == TaskState.ACTIVE and "RequestID" in record.error
    assert any("RequestID" in message for message in caplog.messages)


async def test_a_stopping_poller_makes_the_polls_it_cuts_short_due_again(
    store: Store, sim: RunningSimulator
):
    """A deploy stops a replica in the middle of its polls: their tasks are due at once for
    another replica (broken: they sat out their 2-minute lease, unread)."""
    import time

    from bot.store import SCHEDULE

    task = sim.sim.create_task()
    sim.sim.add_fault(Fault(action="getprogress", task_id=task.task_id, kind="hold"))
    await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    async with polling(store, sim):
        await until_polled(sim, task.task_id)  # the request arrived and is held there
        leased_until = await store.redis.zscore(SCHEDULE, task.task_id)
        assert leased_until is not None and leased_until > time.time() + 60
    due = await store.redis.zscore(SCHEDULE, task.task_id)
    assert due is not None and due <= time.time()


async def test_the_qps_cap_holds_at_the_simulator_across_two_pollers(
    store: Store, sim: RunningSimulator
):
    """Rule: IVH_MAX_QPS is one budget for all pollers. Two pollers (each its own limiter on
    the shared key) send only what the limiter in Redis granted, and it grants at most `qps`
    within any window, counted on Redis's clock, which decides the grants. Broken (the limiter
    granting every acquire at once, without Redis) no grant was counted for 50 polls.

    How many requests reach the simulator within one of its seconds depends on this machine's
    load too: `bench/poll_cycle.py --replicas 2` prints that peak."""
    qps, tasks = 20, 50
    for _ in range(tasks):
        task = sim.sim.create_task()
        await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
    sim.sim.requests.clear()
    async with (
        grants_at_redis(store.redis, rate_key("ivh")) as grants,
        polling(store, sim, interval=SLOW, qps=qps),
        polling(store, sim, interval=SLOW, qps=qps),
    ):

        async def all_polled() -> bool:
            return len({r["task_id"] for r in sim.sim.requests}) >= tasks

        await wait_for(all_polled, within=30)
    assert len(sim.sim.requests) >= tasks
    assert len(grants) >= len(sim.sim.requests)  # every request waited for its grant
    assert busiest_window(grants, qps) <= qps
