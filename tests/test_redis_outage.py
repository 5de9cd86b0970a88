"""While Redis is down users get a sentence, /healthz says 503, and everything resumes after."""

from __future__ import annotations

import json

from bot.sim import RunningSimulator
from bot.store import lock_key, reply_lock
from handlers.guard import UNAVAILABLE
from tests.conftest import RedisProcess
from tests.fake_slack import FakeSlack
from tests.harness import run_bot


async def test_redis_down_then_back(
    sim: RunningSimulator, fake: FakeSlack, own_redis: RedisProcess
):
    async with run_bot(sim, fake, own_redis.url) as bot:
        task = sim.sim.create_task(deliver_seconds=3600)  # "Approved by" stays on the message
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        approve = next(
            e["value"]
            for b in bot.parent(record).blocks
            if b["type"] == "actions"
            for e in b["elements"]
            if e["action_id"] == "approve"
        )

        own_redis.stop()
        health = await bot.http.get("/healthz")
        assert health.status_code == 503 and health.json()["redis"] is False
        intake = await bot.http.post(
            "/tasks", json={"task_id": "t-2"}, headers={"Authorization": "Bearer intake-token"}
        )
        assert intake.status_code == 503 and "temporarily unavailable" in intake.json()["error"]
        status = await bot.command(f"status {task.task_id}")
        assert status.status_code == 200 and status.text == UNAVAILABLE
        click = await bot.click("approve", approve)
        assert click.status_code == 200
        await bot.until(lambda: _said(fake, UNAVAILABLE))
        assert not [r for r in sim.sim.requests if r["action"] == "customerconfirm"]

        own_redis.start()  # same port, same append-only file: nothing acknowledged is lost

        async def healthy() -> bool:
            return (await bot.http.get("/healthz")).status_code == 200

        await bot.until(healthy, within=20)
        assert (await bot.record(task.task_id)).slack_ts == record.slack_ts
        await bot.click("approve", approve)

        async def approved() -> bool:
            return "Approved by" in json.dumps(bot.parent(record).blocks)

        await bot.until(approved, within=20)


async def _said(fake: FakeSlack, text: str) -> bool:
    return any(text == (e.text or "") for e in fake.ephemeral)


async def test_a_decision_reply_posted_as_redis_went_down_is_not_posted_again(
    sim: RunningSimulator, fake: FakeSlack, own_redis: RedisProcess
):
    """bench/chaos.py, seed 83072 ("Round 2 approved" twice in a thread): the decider posted
    its reply, then Redis restarted before the reply was recorded and its lock released.
    Once the lock expired (two minutes), the publisher settling the round posted it again."""
    settings = {"DECISION_SETTLE_SECONDS": "0", "EVENT_RECLAIM_SECONDS": "1"}
    async with run_bot(sim, fake, own_redis.url, **settings) as bot:
        task = sim.sim.create_task(deliver_seconds=3600)
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        await bot.until(bot.published)
        value = json.dumps({"task": task.task_id, "round": 1}, separators=(",", ":"))

        posts = len(fake.calls_to("chat.postMessage"))
        fake.hold("chat.postMessage", apply_first=True)  # the reply is in; Slack's answer late
        await bot.click("approve", value)
        await fake.wait_for("chat.postMessage", count=posts + 1)
        own_redis.stop()
        fake.release("chat.postMessage")
        await bot.until(lambda: _said(fake, UNAVAILABLE))  # the decider could not record it
        own_redis.start()

        async def healthy() -> bool:
            return (await bot.http.get("/healthz")).status_code == 200

        await bot.until(healthy, within=20)
        # Two minutes later the dead holder's lock has expired: here it is let go at once.
        await bot.store.redis.delete(lock_key(reply_lock(task.task_id, 1)))
        await bot.until(lambda: bot.store.decision_replied(task.task_id, 1), within=20)
        await bot.until(bot.published, within=20)
        told = [m.text for m in bot.thread(record) if m.text == "Round 1 approved"]
        assert told == ["Round 1 approved"]
