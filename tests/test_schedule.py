"""The stage-aware polling schedule: pure rules, then the poller following them."""

from __future__ import annotations

import pytest

from bot.events import Snapshot
from bot.schedule import Schedule
from bot.sim import Simulator, start
from bot.store import SCHEDULE, Store
from tests.conftest import wait_for
from tests.test_poller import polling, until_polled

SCHEDULE_RULES = Schedule(interval=30, slow_interval=600, train_min=3600)


def snap(status: str, stage: str, stage_status: str = "PROCESSING") -> Snapshot:
    return Snapshot(status=status, stage=stage, stage_status=stage_status)


@pytest.mark.parametrize(
    ("snapshot", "in_stage_for", "delay"),
    [
        (snap("MAKING", "AUDIT"), 0, 600),
        (snap("MAKING", "PROCESS"), 10_000, 600),
        (snap("MAKING", "TRAIN"), 0, 600),
        (snap("MAKING", "TRAIN"), 3600 - 100, 100),  # wakes exactly when training may end
        (snap("MAKING", "TRAIN"), 3600 - 20, 30),
        (snap("MAKING", "TRAIN"), 7200, 30),
        (snap("MAKING", "CONFIRM", "WAIT_PROCESS"), 0, 30),
        (snap("MAKING", "CONFIRM", "PROCESSING"), 0, 30),
        (snap("MAKING", "SOMETHING_NEW"), 0, 30),
    ],
)
def test_delay_by_stage(snapshot: Snapshot, in_stage_for: float, delay: float):
    now = 1_000_000.0
    assert SCHEDULE_RULES.delay(snapshot, now - in_stage_for, now) == delay


def test_flat_when_not_configured():
    flat = Schedule(interval=30)
    assert flat.delay(snap("MAKING", "AUDIT"), 0, 0) == 30
    assert flat.delay(snap("MAKING", "TRAIN"), 0, 0) == 30


def test_requests_per_task_hour_drop_on_a_typical_task():
    """Audit 1 h, training 3 h (shortest expected 2 h), then a demo: flat vs stage-aware."""
    rules = Schedule(interval=30, slow_interval=600, train_min=7200)
    stages = [("AUDIT", 3600.0), ("TRAIN", 3 * 3600.0)]
    polls, now = 0, 0.0
    for stage, length in stages:
        since, end = now, now + length
        while now < end:
            polls += 1
            now += rules.delay(snap("MAKING", stage), since, now)
    flat_polls = (4 * 3600) / 30
    assert flat_polls / polls >= 3


async def test_the_poller_reads_early_stages_slowly(store: Store):
    sim = await start(Simulator(audit_seconds=3600))
    try:
        task = sim.sim.create_task()
        await store.track(task.task_id, channel=None, title=None, tracked_by="cli")
        slow = Schedule(interval=0.02, slow_interval=3600)
        async with polling(store, sim, interval=0.02, schedule=slow):
            await until_polled(sim, task.task_id)

            async def recorded() -> bool:
                record = await store.get(task.task_id)
                return bool(record and record.snapshot)

            await wait_for(recorded)
        due = await store.redis.zscore(SCHEDULE, task.task_id)
        record = await store.get(task.task_id)
        assert record is not None and record.polled_at is not None
        assert due is not None and due - record.polled_at == pytest.approx(3600, abs=1)
        assert sum(1 for r in sim.sim.requests if r["task_id"] == task.task_id) == 1
    finally:
        await sim.close()
