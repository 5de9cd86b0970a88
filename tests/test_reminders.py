"""Reminders and escalation of rounds nobody decides: on a controlled clock, counted."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot.config import Settings
from bot.model import QuietHours
from bot.reminders import Policy, Reminders, mentions
from bot.store import ESCALATIONS, PENDING, REMINDERS
from tests.harness import Bot, run_bot

HOUR = 3600.0


def policy(**changes: object) -> Policy:
    values: dict = {
        "remind_after": 4 * HOUR,
        "remind_every": 4 * HOUR,
        "escalate_after": 24 * HOUR,
        "escalate_to": mentions(["U0BOSS", "S0LEADS"]),
        "quiet": None,
    }
    return Policy(**(values | changes))


def reminders(bot: Bot, rules: Policy) -> Reminders:
    """A replica's reminders loop, driven by the test through run_once(now)."""
    assert bot.runtime.slack is not None
    return Reminders(bot.store, bot.runtime.slack.publisher._thread, rules, lambda: "<@U0ANA>")


async def waiting_task(bot: Bot) -> tuple[str, float, object]:
    task = bot.sim.sim.create_task()
    await bot.track(task.task_id)
    record = await bot.posted(task.task_id)
    ready = await bot.store.ready_at(task.task_id, 1)
    assert ready is not None
    return task.task_id, ready, record


def nudges(bot: Bot, record) -> list[str]:
    return [m.text for m in bot.thread(record) if m.text.startswith(("Reminder", "Escalated"))]


async def test_a_waiting_round_is_reminded_then_escalated_once(bot: Bot):
    _, ready, record = await waiting_task(bot)
    one = reminders(bot, policy())
    assert await one.run_once(ready + 3 * HOUR) == 0  # not yet
    assert await one.run_once(ready + 4 * HOUR + 1) == 1
    assert await one.run_once(ready + 5 * HOUR) == 0  # every 4 hours, not every look
    assert await one.run_once(ready + 8 * HOUR + 2) == 1
    assert await one.run_once(ready + 24 * HOUR + 3) == 2  # a reminder and the escalation
    assert await one.run_once(ready + 25 * HOUR) == 0  # escalated once only
    said = nudges(bot, record)
    assert said[:2] == ["Reminder: round 1 has waited 4 h", "Reminder: round 1 has waited 8 h"]
    escalated = [m for m in bot.thread(record) if m.text.startswith("Escalated")]
    assert len(escalated) == 1 and escalated[0].reply_broadcast
    shown = json.dumps(escalated[0].blocks)
    assert "<@U0BOSS>" in shown and "<!subteam^S0LEADS>" in shown
    reminded = next(m for m in bot.thread(record) if m.text.startswith("Reminder"))
    assert "<@U0ANA>" in json.dumps(reminded.blocks)


async def test_two_replicas_send_each_reminder_once(bot: Bot):
    import asyncio

    _, ready, record = await waiting_task(bot)
    replicas = [reminders(bot, policy()) for _ in range(3)]
    sent = await asyncio.gather(*(r.run_once(ready + 4 * HOUR + 1) for r in replicas))
    assert sum(sent) == 1
    assert len(nudges(bot, record)) == 1


async def test_no_reminder_after_the_round_is_decided(bot: Bot):
    task_id, ready, record = await waiting_task(bot)
    value = json.dumps({"task": task_id, "round": 1}, separators=(",", ":"))
    await bot.click("approve", value)

    async def decided() -> bool:
        return await bot.store.decision(task_id, 1) is not None

    await bot.until(decided)
    one = reminders(bot, policy())
    assert await one.run_once(ready + 30 * HOUR) == 0
    assert await bot.store.take_waiting(REMINDERS, ready + 99 * HOUR, None) == []
    assert nudges(bot, record) == []


async def test_quiet_hours_defer_a_reminder_to_their_end(bot: Bot):
    _, ready, _ = await waiting_task(bot)
    quiet = QuietHours.parse("20-08", "UTC")
    one = reminders(bot, policy(quiet=quiet, escalate_after=None))
    # Find a moment past the reminder time that is quiet, and the end of those quiet hours.
    at = ready + 4 * HOUR + 1
    while not quiet.quiet_at(at):
        at += HOUR
    assert await one.run_once(at) == 0
    assert await one.run_once(quiet.ends_after(at) - 1) == 0
    assert await one.run_once(quiet.ends_after(at) + 1) == 1


async def test_a_round_an_earlier_version_left_waiting_is_queued_once_at_start(
    sim, fake, redis_url
):
    """Only a round's start puts it in /ivh pending and the reminder sets, and the version
    before them kept none: a round waiting at the upgrade was never listed nor reminded of.
    A start queues it, once: starts together or later add nothing, and an escalation sent
    (taken out of its set) is not brought back."""
    async with run_bot(sim, fake, redis_url) as bot:
        task_id, ready, _ = await waiting_task(bot)
        for key in (PENDING, REMINDERS, ESCALATIONS):  # as the earlier version left it
            await bot.store.set_waiting(key, task_id, 1, None)
        assert task_id not in (await bot.command("pending")).text

    async with run_bot(sim, fake, redis_url) as bot:  # this version starts
        assert task_id in (await bot.command("pending")).text
        assert await bot.store.pending() == [(task_id, 1, ready)]
        assert await bot.store.take_waiting(REMINDERS, ready, then=ready) == [(task_id, 1)]
        starts = await asyncio.gather(*(bot.store.queue_earlier_waiting() for _ in range(3)))
        assert starts == [0, 0, 0]
        assert await bot.store.take_waiting(ESCALATIONS, ready, None) == [(task_id, 1)]  # sent

        for key in (PENDING, REMINDERS, ESCALATIONS):  # left by the earlier version again,
            await bot.store.set_waiting(key, task_id, 1, None)
        # and three replicas start at once: one of them queues it
        starts = await asyncio.gather(*(bot.store.queue_earlier_waiting() for _ in range(3)))
        assert sorted(starts) == [0, 0, 1]
        assert await bot.store.take_waiting(ESCALATIONS, ready, None) == [(task_id, 1)]  # sent

    async with run_bot(sim, fake, redis_url) as bot:  # started again, later
        assert await bot.store.pending() == [(task_id, 1, ready)]
        assert await bot.store.take_waiting(ESCALATIONS, 1e12, None) == []
        assert await bot.store.take_waiting(REMINDERS, 1e12, None) == [(task_id, 1)]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"QUIET_HOURS": "8pm-8am"}, "QUIET_HOURS"),
        ({"QUIET_HOURS": "25-08"}, "QUIET_HOURS"),
        ({"REMIND_TZ": "Mars/Olympus"}, "REMIND_TZ"),
        ({"ESCALATE_TO": "bob"}, "ESCALATE_TO"),
        ({"ESCALATE_AFTER": "3600"}, "ESCALATE_TO"),
    ],
)
def test_wrong_reminder_settings_name_themselves(value, problem):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **value)  # type: ignore[call-arg]
    assert problem in str(caught.value)


async def test_an_escalation_slack_refuses_is_tried_again_and_the_loop_goes_on(bot: Bot):
    _, ready, record = await waiting_task(bot)
    one = reminders(bot, policy(remind_after=0))
    bot.fake.fail("chat.postMessage", error="internal_error", count=1)
    assert await one.run_once(ready + 24 * HOUR + 1) == 0  # refused: not lost
    assert await one.run_once(ready + 24 * HOUR + 60) == 0  # not due again yet
    assert await one.run_once(ready + 24 * HOUR + 400) == 1  # tried again
    assert len([m for m in bot.thread(record) if m.text.startswith("Escalated")]) == 1


async def test_slack_unreachable_does_not_stop_the_reminders(bot: Bot, caplog):
    import asyncio

    _, ready, _ = await waiting_task(bot)
    clock = [ready + 4 * HOUR + 1]
    one = Reminders(
        bot.store,
        bot.runtime.slack.publisher._thread,
        policy(),
        lambda: "x",
        clock=lambda: clock[0],
    )
    await bot.fake.close()  # Slack is gone: a connection error, not a Slack answer
    loop = asyncio.create_task(one.run())
    try:
        await bot.until(lambda: "Slack unreachable" in caplog.text, within=30)
        assert not loop.done()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
