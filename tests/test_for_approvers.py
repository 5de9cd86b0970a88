"""Issue 15, "for the people deciding": no self-approval, a quorum of approvals, and reasons
with a category and a timecode. End to end: simulator, fake Slack, private Redis, the app."""

from __future__ import annotations

import json

from bot.decisions import SELF_APPROVAL
from tests.harness import Bot, run_bot
from tests.test_slack_flow import _ephemeral_to, _succeeded, button_values, sim_operations


async def _tracked_in_slack(bot: Bot, by: str) -> tuple[str, dict[str, str]]:
    """A task tracked with `/ivh track` by `by`, posted; its id and its buttons' values."""
    task = bot.sim.sim.create_task()
    answer = await bot.command(f"track {task.task_id}", user=by)
    assert answer.status_code == 200 and "Tracking" in answer.text, answer.text
    record = await bot.posted(task.task_id)
    assert record.tracked_by == by
    return task.task_id, button_values(bot.parent(record))


async def test_whoever_tracked_a_task_may_not_approve_it_but_may_reject_it(sim, fake, redis_url):
    async with run_bot(sim, fake, redis_url, PREVENT_SELF_APPROVAL=True) as bot:
        task_id, values = await _tracked_in_slack(bot, by="U0KIM")

        await bot.click("approve", values["approve"], user="U0KIM")
        await bot.until(lambda: _ephemeral_to(bot, "U0KIM", SELF_APPROVAL))
        assert await sim_operations(bot, task_id) == []
        record = await bot.record(task_id)
        assert "Approved" not in json.dumps(bot.parent(record).blocks)

        await bot.click("reject", values["reject"], user="U0KIM")  # rejecting is allowed
        await bot.fake.wait_for("views.open")

        await bot.click("approve", values["approve"], user="U0ANA")  # anyone else approves
        await bot.until(lambda: _succeeded(bot, task_id))
        [agree] = await sim_operations(bot, task_id)
        assert agree["operate"] == "AGREE"


async def test_without_the_setting_whoever_tracked_a_task_may_approve_it(bot: Bot):
    task_id, values = await _tracked_in_slack(bot, by="U0KIM")
    await bot.click("approve", values["approve"], user="U0KIM")
    await bot.until(lambda: _succeeded(bot, task_id))
    [agree] = await sim_operations(bot, task_id)
    assert agree["operate"] == "AGREE"


# --- a quorum of approvals ------------------------------------------------------------------


def _text_of(message) -> str:
    return message.text + json.dumps(message.blocks, ensure_ascii=False)


async def _shows(bot: Bot, record, words: str) -> bool:
    return words in _text_of(bot.parent(record))


async def test_two_approvals_are_needed_and_a_second_vote_of_one_user_counts_once(
    sim, fake, redis_url
):
    async with run_bot(sim, fake, redis_url, REQUIRED_APPROVALS=2) as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        parent = bot.parent(record)
        assert "Needs 2 approvals." in _text_of(parent)
        assert "one of the 2 it needs" in _text_of(parent)  # the Approve confirm dialog
        approve = button_values(parent)["approve"]

        await bot.click("approve", approve, user="U0ANA")
        await bot.until(lambda: _ephemeral_to(bot, "U0ANA", "counted: 1 of 2"))
        assert "Approvals 1 of 2: <@U0ANA>" in _text_of(bot.parent(record))
        await bot.click("approve", approve, user="U0ANA")  # again: still one vote
        await bot.until(lambda: _ephemeral_to(bot, "U0ANA", "counts once"))
        assert "Approvals 1 of 2: <@U0ANA>" in _text_of(bot.parent(record))
        assert await sim_operations(bot, task.task_id) == []

        await bot.click("approve", approve, user="U0BO")
        await bot.until(lambda: _succeeded(bot, task.task_id))
        [agree] = await sim_operations(bot, task.task_id)
        assert agree["operate"] == "AGREE"
        decision = await bot.store.decision(task.task_id, 1)
        assert decision is not None and decision.approvers == ["U0ANA", "U0BO"]
        [told] = [m for m in bot.thread(record) if "approved" in m.text]
        assert "Approved by <@U0ANA> and <@U0BO>" in _text_of(told)


async def test_one_reject_decides_at_once_and_the_next_round_starts_without_votes(
    sim, fake, redis_url
):
    async with run_bot(sim, fake, redis_url, REQUIRED_APPROVALS=2) as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        round_one = button_values(bot.parent(record))
        await bot.click("approve", round_one["approve"], user="U0ANA")
        await bot.until(lambda: _ephemeral_to(bot, "U0ANA", "counted: 1 of 2"))

        await bot.click("reject", round_one["reject"], user="U0BO")
        [call] = await bot.fake.wait_for("views.open")
        view = call.args["view"]
        view = json.loads(view) if isinstance(view, str) else view
        await bot.submit_reason(view["private_metadata"], "green outline", user="U0BO")

        async def round_two_posted() -> bool:
            loaded = await bot.store.view(task.task_id)
            return bool(loaded and loaded.view.round == 2 and loaded.view.upload is not None)

        await bot.until(round_two_posted)
        [reject] = await sim_operations(bot, task.task_id)
        assert (reject["operate"], reject["reason"]) == ("REJECT", "green outline")
        record = await bot.record(task.task_id)
        parent = bot.parent(record)
        assert "Needs 2 approvals." in _text_of(parent)  # round 1's vote is not round 2's

        round_two = button_values(parent)["approve"]
        await bot.click("approve", round_two, user="U0ANA")
        await bot.until(lambda: _shows(bot, record, "Approvals 1 of 2: <@U0ANA>"))
        assert len(await sim_operations(bot, task.task_id)) == 1
