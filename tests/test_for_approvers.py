"""Issue 15, "for the people deciding": no self-approval, a quorum of approvals, and reasons
with a category and a timecode. End to end: simulator, fake Slack, private Redis, the app."""

from __future__ import annotations

import json
import logging

import pytest

from bot.decisions import SELF_APPROVAL, RejectForm
from tests.harness import Bot, run_bot, view_submission
from tests.test_slack_flow import (
    _ephemeral_to,
    _fault,
    _succeeded,
    button_values,
    handle_round_two_after_round_three,
    sim_operations,
)


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


async def test_a_refused_self_approval_is_no_vote(sim, fake, redis_url):
    settings = {"PREVENT_SELF_APPROVAL": True, "REQUIRED_APPROVALS": 2}
    async with run_bot(sim, fake, redis_url, **settings) as bot:
        task_id, values = await _tracked_in_slack(bot, by="U0KIM")
        await bot.click("approve", values["approve"], user="U0KIM")
        await bot.until(lambda: _ephemeral_to(bot, "U0KIM", SELF_APPROVAL))
        loaded = await bot.store.view(task_id)
        assert loaded is not None and loaded.view.votes is None
        await bot.click("approve", values["approve"], user="U0ANA")
        await bot.until(lambda: _ephemeral_to(bot, "U0ANA", "counted: 1 of 2"))


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

        view = await bot.reject_form(round_one["reject"], "U0BO")
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


async def test_when_the_final_approval_fails_at_tencent_the_next_approve_sends_it(
    sim, fake, redis_url
):
    async with run_bot(sim, fake, redis_url, REQUIRED_APPROVALS=2) as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        approve = button_values(bot.parent(record))["approve"]
        await bot.click("approve", approve, user="U0ANA")
        await bot.until(lambda: _ephemeral_to(bot, "U0ANA", "counted: 1 of 2"))

        bot.sim.sim.add_fault(_fault("customerconfirm", code=100008, message="quota exceeded"))
        await bot.click("approve", approve, user="U0BO")  # completes the quorum; Tencent refuses
        await bot.until(lambda: _ephemeral_to(bot, "U0BO", "100008"))
        assert await sim_operations(bot, task.task_id) == []
        assert set(button_values(bot.parent(record))) == {"approve", "reject"}

        await bot.click("approve", approve, user="U0ANA")  # a voter again: the quorum stands
        await bot.until(lambda: _succeeded(bot, task.task_id))
        [agree] = await sim_operations(bot, task.task_id)
        assert agree["operate"] == "AGREE"
        decision = await bot.store.decision(task.task_id, 1)
        assert decision is not None and decision.approvers == ["U0ANA", "U0BO"]


# --- structured reasons: a category and a timecode ---------------------------------------------


def _submission(bot: Bot, metadata: str, reason: str, *, category=None, timecode=None) -> dict:
    """The Reject form as Slack submits it: `category` None leaves the menu unpicked."""
    payload = view_submission(bot.fake.team_id, metadata, reason, user="U0BO")
    values = payload["view"]["state"]["values"]
    picked = {"text": {"type": "plain_text", "text": category}, "value": category}
    values["category"] = {
        "category_select": {"type": "static_select", "selected_option": category and picked}
    }
    values["timecode"] = {"timecode_input": {"type": "plain_text_input", "value": timecode}}
    return payload


async def test_a_rejection_sends_its_category_and_timecode_and_keeps_the_category(bot: Bot):
    task = bot.sim.sim.create_task()
    await bot.track(task.task_id)
    record = await bot.posted(task.task_id)
    form = await bot.reject_form(button_values(bot.parent(record))["reject"], "U0BO")
    [menu] = [b["element"] for b in form["blocks"] if b.get("block_id") == "category"]
    offered = [option["value"] for option in menu["options"]]
    assert menu["type"] == "static_select" and offered[0] == "Lip sync" and "Other" in offered
    metadata = form["private_metadata"]

    async def refused(payload: dict) -> dict[str, str]:
        answer = await bot.send(payload)
        assert answer.json()["response_action"] == "errors"
        return answer.json()["errors"]

    unpicked = await refused(_submission(bot, metadata, "mouth drifts", timecode="0:12"))
    assert set(unpicked) == {"category"}
    made_up = await refused(_submission(bot, metadata, "mouth drifts", category="Hair"))
    assert set(made_up) == {"category"}
    for wrong in ("12", "0:60", "1:75:00", "a:bc", "0:12:"):
        bad_time = await refused(
            _submission(bot, metadata, "mouth drifts", category="Lip sync", timecode=wrong)
        )
        assert set(bad_time) == {"timecode"} and "1:02:03" in bad_time["timecode"]
    # 300 characters typed are more than Tencent takes once "[Lip sync @0:12] " precedes them.
    too_long = await refused(
        _submission(bot, metadata, "x" * 300, category="Lip sync", timecode="0:12")
    )
    assert set(too_long) == {"reason"} and "at most 283" in too_long["reason"]
    assert await sim_operations(bot, task.task_id) == []

    fine = _submission(
        bot, metadata, "mouth drifts after the pause", category="Lip sync", timecode=" 0:12 "
    )
    accepted = await bot.send(fine)
    assert accepted.status_code == 200 and not accepted.content

    async def decided() -> bool:
        return await bot.store.decision(task.task_id, 1) is not None

    await bot.until(decided)
    [reject] = await sim_operations(bot, task.task_id)
    assert reject["reason"] == "[Lip sync @0:12] mouth drifts after the pause"
    decision = await bot.store.decision(task.task_id, 1)
    assert decision is not None and decision.category == "Lip sync"

    async def told() -> bool:
        return any("[Lip sync @0:12]" in _text_of(m) for m in bot.thread(record))

    await bot.until(told)
    await bot.until(lambda: _shows(bot, record, "[Lip sync @0:12] mouth drifts"))


async def test_categories_are_a_setting(sim, fake, redis_url):
    async with run_bot(sim, fake, redis_url, REJECT_CATEGORIES="Hair,Teeth") as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)
        form = await bot.reject_form(button_values(bot.parent(record))["reject"], "U0BO")
        [menu] = [b["element"] for b in form["blocks"] if b.get("block_id") == "category"]
        assert [option["value"] for option in menu["options"]] == ["Hair", "Teeth"]
        answer = await bot.send(_submission(bot, form["private_metadata"], "x", category="Voice"))
        assert set(answer.json()["errors"]) == {"category"}  # not offered here
        await bot.send(_submission(bot, form["private_metadata"], "gap", category="Teeth"))

        async def rejected() -> bool:
            return bool(await sim_operations(bot, task.task_id))

        await bot.until(rejected)
        [reject] = await sim_operations(bot, task.task_id)
        assert reject["reason"] == "[Teeth] gap"


# --- the requester is told by direct message ---------------------------------------------------


def _dms(bot: Bot, user: str) -> list[str]:
    return [_text_of(m) for m in bot.fake.direct_messages(user)]


async def test_whoever_tracked_a_task_is_told_when_its_demo_is_ready_decided_and_done(bot: Bot):
    task_id, values = await _tracked_in_slack(bot, by="U0KIM")
    record = await bot.record(task_id)
    assert record.slack_permalink
    await bot.until(lambda: _has_dms(bot, "U0KIM", 1))
    [ready] = _dms(bot, "U0KIM")
    assert "round 1 demo is ready" in ready and record.slack_permalink in ready

    await bot.click("approve", values["approve"], user="U0ANA")
    await bot.until(lambda: _succeeded(bot, task_id))
    await bot.until(lambda: _has_dms(bot, "U0KIM", 3))
    await bot.until(bot.published)
    ready, decided, ended = _dms(bot, "U0KIM")  # each once, in order
    assert "Approved by <@U0ANA>" in decided and record.slack_permalink in decided
    assert "Complete" in ended and record.slack_permalink in ended


async def _has_dms(bot: Bot, user: str, count: int) -> bool:
    return len(bot.fake.direct_messages(user)) >= count


async def test_a_requester_named_on_post_tasks_is_told_of_a_rejection_and_the_next_round(
    bot: Bot,
):
    task = bot.sim.sim.create_task()
    await bot.track(task.task_id, requester="U0REQ")
    record = await bot.posted(task.task_id)
    assert record.tracked_by == "U0REQ"
    form = await bot.reject_form(button_values(bot.parent(record))["reject"], "U0BO")
    await bot.send(_submission(bot, form["private_metadata"], "drifts", category="Lip sync"))

    await bot.until(lambda: _has_dms(bot, "U0REQ", 3))
    await bot.until(bot.published)
    ready, decided, again = _dms(bot, "U0REQ")
    assert "round 1 demo is ready" in ready
    assert "Rejected by <@U0BO>" in decided and "[Lip sync] drifts" in decided
    assert "round 2 demo is ready" in again


async def test_a_requester_hears_each_decision_once_and_before_the_round_after_it(
    sim, fake, redis_url, caplog
):
    """Round 2's event, handled late (reclaimed after round 3's), told "round 1 decided"
    after "round 3 is ready", and round 2's rejection (in Tencent's console) was never told at
    all. Before that, it told "round 3 is ready" a second time: the DM was built from the
    task's current round. Round 2 was over by then: there is nothing ready to tell, and a
    "round 2 is ready" would send the requester to a round nobody can decide any more."""
    caplog.set_level(logging.INFO, logger="bot.publisher")
    async with run_bot(sim, fake, redis_url, EVENT_RECLAIM_SECONDS=5) as bot:
        task = sim.sim.create_task()
        await bot.track(task.task_id, requester="U0REQ")
        await bot.posted(task.task_id)
        await bot.until(bot.published)

        await handle_round_two_after_round_three(bot, task.task_id, caplog)

        told = [m.text.rsplit(": ", 1)[-1] for m in fake.direct_messages("U0REQ")]
        assert told == [
            "round 1 is ready for a decision",
            "round 1 decided outside Slack",
            "round 2 decided outside Slack",
            "round 3 is ready for a decision",
        ]


async def test_a_requester_must_be_a_slack_user_id(bot: Bot):
    answer = await bot.http.post(
        "/tasks",
        json={"task_id": "t_requester", "requester": "alice"},
        headers={"Authorization": "Bearer intake-token"},
    )
    assert answer.status_code == 422 and "requester" in answer.text


async def test_a_requester_slack_will_not_reach_holds_nothing_up(bot: Bot):
    bot.fake.users_unreachable.add("U0GONE")
    task = bot.sim.sim.create_task()
    await bot.track(task.task_id, requester="U0GONE")
    record = await bot.posted(task.task_id)
    await bot.click("approve", button_values(bot.parent(record))["approve"], user="U0ANA")
    await bot.until(lambda: _succeeded(bot, task.task_id))
    await bot.until(bot.published)
    assert bot.fake.direct_messages("U0GONE") == []
    refused = [c for c in bot.fake.calls_to("chat.postMessage") if c.args["channel"] == "U0GONE"]
    assert len(refused) == 3  # ready, decided, complete: each tried once, none retried


# --- the Reject form's rules, as a table ---------------------------------------------------------

CATEGORIES = ["Lip sync", "Other"]


@pytest.mark.parametrize(
    ("category", "timecode", "reason", "sent"),
    [
        ("Lip sync", "0:12", "mouth drifts", "[Lip sync @0:12] mouth drifts"),
        ("Lip sync", " 1:02:03 ", " drifts\n", "[Lip sync @1:02:03] drifts"),
        ("Other", "", "hair", "[Other] hair"),
        ("Other", "59:59", "x", "[Other @59:59] x"),
        (None, "", "typed before categories", "typed before categories"),
    ],
)  # fmt: skip
def test_what_tencent_receives(category, timecode, reason, sent):
    form = RejectForm(category, timecode, reason)
    assert form.problems(CATEGORIES) == {}
    assert form.text == sent


@pytest.mark.parametrize(
    ("category", "timecode", "reason", "blocks"),
    [
        ("", "", "x", {"category"}),
        ("Voice", "", "x", {"category"}),
        ("Other", "12", "x", {"timecode"}),
        ("Other", "0:60", "x", {"timecode"}),
        ("Other", "1:60:00", "x", {"timecode"}),
        ("Other", "100:00:00", "x", {"timecode"}),
        ("Other", "-0:12", "x", {"timecode"}),
        ("Other", "", "  ", {"reason"}),
        ("Other", "", "x" * 292, set()),  # "[Other] " and 292: exactly 300
        ("Other", "", "x" * 293, {"reason"}),
        (None, "", "x" * 300, set()),
        ("", "0:1", "", {"category", "timecode", "reason"}),
    ],
)
def test_what_the_form_refuses_and_where(category, timecode, reason, blocks):
    assert set(RejectForm(category, timecode, reason).problems(CATEGORIES)) == blocks
