"""Block Kit builders: pure functions of a task's state."""

import json

import pytest

from bot import messages
from bot.manifest import BOT_SCOPES, manifest
from bot.state import Decision, Phase, TaskView, Upload


def view(**fields) -> TaskView:
    base = {
        "task_id": "1212_29934_w",
        "title": "Anna, studio avatar",
        "tracked_by": "U0TRACKER",
        "tracked_at": 1_700_000_000.0,
        "phase": Phase.PENDING,
        "round": 1,
        "demo_urls": ["https://cos.example/r1.mp4"],
    }
    return TaskView(**(base | fields))


def blocks_text(payload: dict) -> str:
    return json.dumps(payload["blocks"], ensure_ascii=False)


def buttons(payload: dict) -> list[dict]:
    return [
        element
        for block in payload["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def test_pending_message_names_the_task_and_offers_both_buttons():
    payload = messages.task_message(view())
    text = blocks_text(payload)
    assert "Anna, studio avatar" in text and "1212_29934_w" in text and "round 1" in text
    assert "<@U0TRACKER>" in text and "<!date^1700000000^" in text
    approve, reject = buttons(payload)
    assert (approve["action_id"], approve["style"]) == ("approve", "primary")
    assert (reject["action_id"], reject["style"]) == ("reject", "danger")
    assert messages.parse_button_value(approve["value"]) == ("1212_29934_w", 1)
    confirm = approve["confirm"]
    assert len(confirm["title"]["text"]) <= 100 and len(confirm["text"]["text"]) <= 300
    assert "https://cos.example/r1.mp4" in text
    assert payload["text"] == "Demo ready for approval: Anna, studio avatar, round 1"


@pytest.mark.parametrize(
    ("phase", "decision", "expected"),
    [
        (Phase.APPROVED, Decision(round=1, operate="AGREE", user="U0BOSS", at=1.7e9), "Approved"),
        (
            Phase.REJECTED,
            Decision(round=1, operate="REJECT", user="U0BOSS", at=1.7e9, reason="green edge"),
            "Rejected",
        ),
        (Phase.ELSEWHERE, Decision(round=1, operate=None, at=1.7e9, source="elsewhere"), "outside"),
    ],
)
def test_a_decided_round_has_no_buttons_and_says_who_and_when(phase, decision, expected):
    payload = messages.task_message(view(phase=phase, decisions=[decision]))
    text = blocks_text(payload)
    assert buttons(payload) == []
    assert expected in text
    if decision.user:
        assert "<@U0BOSS>" in text


def test_rejected_round_quotes_the_reason_and_later_rounds_list_it():
    decision = Decision(round=1, operate="REJECT", user="U0BOSS", at=1.7e9, reason="绿边 <!here>")
    round_two = messages.task_message(view(round=2, decisions=[decision]))
    text = blocks_text(round_two)
    assert "Earlier rejections" in text and "绿边" in text
    assert "<!here>" not in text and "&lt;!here&gt;" in text
    assert messages.parse_button_value(buttons(round_two)[0]["value"]) == ("1212_29934_w", 2)


def test_success_lists_assets_and_failure_shows_the_message():
    done = messages.task_message(
        view(phase=Phase.SUCCEEDED, assets=[{"AssetType": "IMAGE", "AssetId": "a-1"}])
    )
    assert "a-1" in blocks_text(done) and buttons(done) == []
    failed = messages.task_message(view(phase=Phase.FAILED, fail_message="bad footage"))
    assert "bad footage" in blocks_text(failed)


def test_upload_failure_is_said_and_the_link_stays():
    payload = messages.task_message(view(upload=Upload(round=1, ok=False, error="too big")))
    text = blocks_text(payload)
    assert "too big" in text and "https://cos.example/r1.mp4" in text


def test_user_text_cannot_inject_links_or_mentions():
    payload = messages.task_message(view(title="<https://evil|click> & <@U1>"))
    text = blocks_text(payload)
    assert "<https://evil" not in text and "&lt;https://evil|click&gt; &amp; &lt;@U1&gt;" in text


def test_reject_modal_limits_and_metadata():
    modal = messages.reject_modal("1212_29934_w", 3, "Anna")
    assert modal["callback_id"] == "reject_reason"
    assert len(modal["title"]["text"]) <= 24
    assert messages.parse_button_value(modal["private_metadata"]) == ("1212_29934_w", 3)
    [field] = [b for b in modal["blocks"] if b["type"] == "input"]
    assert field["block_id"] == messages.REASON_BLOCK
    assert field["element"]["max_length"] == 300 and field["element"]["multiline"] is True


@pytest.mark.parametrize(
    "value", ["", "{}", '{"task": 1, "round": 1}', '{"task": "t", "round": "1"}', "[1]"]
)
def test_malformed_button_values_are_refused(value):
    with pytest.raises((ValueError, KeyError, TypeError)):
        messages.parse_button_value(value)


def test_every_payload_has_a_plain_text_fallback():
    for phase in Phase:
        assert messages.task_message(view(phase=phase))["text"]
    decision = Decision(round=1, operate="AGREE", user="U1", at=1.7e9, request_id="r-1")
    assert messages.decision_reply(decision)["text"]
    assert messages.round_reply(view(round=2))["text"]


def test_manifest_modes():
    socket = manifest()
    assert socket["settings"]["socket_mode_enabled"] is True
    assert "url" not in socket["features"]["slash_commands"][0]
    http = manifest(request_url="https://bot.example/slack/events")
    assert http["settings"]["socket_mode_enabled"] is False
    assert http["settings"]["interactivity"]["request_url"] == "https://bot.example/slack/events"
    assert http["oauth_config"]["scopes"]["bot"] == BOT_SCOPES
