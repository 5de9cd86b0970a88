"""Every payload the bot builds, for any legal input however hostile or long: within Slack's
limits (checked by slack_sdk's own models), and with nothing from outside left live (no
mention, link or entity that the bot did not write itself)."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot import messages
from bot.config import MAX_REQUIRED_APPROVALS
from bot.home_tab import WAITING_SHOWN, Viewer, home_view
from bot.ivh import REASON_MAX
from bot.model import (
    CATEGORIES_MAX,
    CATEGORY_MAX,
    TASK_ID_MAX,
    Decided,
    Votes,
    Waiting,
    category_problem,
)
from bot.state import Decision, Phase, TaskView, Upload

# Characters that mean something to Slack's mrkdwn, mentions that would ping, and text that
# grows when escaped, mixed with anything Unicode has.
HOSTILE = st.one_of(
    st.sampled_from(["<!everyone>", "<!here>", "<!channel>", "<@U0BOSS>", "<#C0GEN>", "&", "<"]),
    st.sampled_from(["<!subteam^S0ALL>", "<https://evil.example|click>", "*", "_", "~", "`"]),
    st.sampled_from([">", "|", "\n", "&amp;", "@here", "!everyone", "😀", "界"]),
    st.characters(blacklist_categories=("Cs",)),
)


def text(min_size: int = 0, max_size: int = 50) -> st.SearchStrategy[str]:
    return st.lists(HOSTILE, min_size=min_size, max_size=max_size).map("".join)


def exactly(max_size: int, min_size: int = 1) -> st.SearchStrategy[str]:
    """Strings up to a character limit, often at the limit itself: a short hostile unit
    repeated (cheap to draw, and as long as a field may be)."""
    repeated = st.builds(lambda unit: (unit * max_size)[:max_size], text(1, 8))
    return st.one_of(text(min_size, 20).map(lambda s: s[:max_size]), repeated)


TASK_IDS = exactly(TASK_ID_MAX).map(lambda s: "".join(c for c in s if c.isprintable()) or "t")
TASK_IDS = TASK_IDS.map(lambda s: "".join("_" if c.isspace() else c for c in s))
TITLES = st.one_of(st.none(), exactly(200))
REASONS = exactly(REASON_MAX)
USERS = st.one_of(st.sampled_from(["U0ALICE", "W0BOB", "api", "cli", ""]), text(0, 20))
URLS = st.one_of(
    st.builds(lambda tail: "https://demo.example/v.mp4?" + tail, exactly(2500)),
    st.sampled_from(["@U0BOSS", "!everyone", "javascript:alert(1)", "https://a.example/|x>"]),
    text(0, 30),
)
LONG = st.one_of(text(), exactly(5000))
QUORUMS = st.integers(1, MAX_REQUIRED_APPROVALS)
APPROVERS = st.lists(USERS, max_size=MAX_REQUIRED_APPROVALS)
ASSETS = st.lists(
    st.dictionaries(st.sampled_from(["AssetType", "AssetId", "Type", "Id", "x"]), LONG),
    max_size=60,
)


@st.composite
def views(draw: st.DrawFn) -> TaskView:
    current = draw(st.integers(1, 12))
    decisions = [
        Decision(
            round=n,
            operate=draw(st.sampled_from(["AGREE", "REJECT", None])) if n == current else "REJECT",
            user=draw(USERS),
            at=draw(st.floats(0, 4e9)),
            reason=draw(REASONS),
            request_id=draw(st.one_of(text(0, 40), exactly(300))),
            source=draw(st.sampled_from(["slack", "elsewhere"])),
            approvers=draw(APPROVERS),
        )
        for n in range(1, current + 1)
        if n < current or draw(st.booleans())
    ]
    return TaskView(
        task_id=draw(TASK_IDS),
        title=draw(TITLES),
        tracked_by=draw(USERS),
        tracked_at=draw(st.floats(0, 4e9)),
        phase=draw(st.sampled_from(list(Phase))),
        round=current,
        demo_urls=draw(st.lists(URLS, max_size=12)),
        decisions=decisions,
        votes=draw(st.one_of(st.none(), st.builds(Votes, users=APPROVERS, required=QUORUMS))),
        required_approvals=draw(QUORUMS),
        upload=draw(
            st.one_of(
                st.none(),
                st.builds(Upload, round=st.just(current), ok=st.booleans(), error=LONG),
            )
        ),
        tencent_reject_reason=draw(LONG),
        fail_message=draw(LONG),
        assets=draw(ASSETS),
    )


# --- what a payload must be ---------------------------------------------------------------------

OURS = re.compile(
    r"<@[UW][A-Z0-9]+>"
    r"|<!date\^\d+\^\{date_short_pretty\} at \{time\}\|[^<>]*>"
    r"|<!subteam\^S[A-Z0-9]+>"
    r"|<#C[A-Z0-9]+>"
    r"|<https?://[^\s<>|]+\|[^<>]*>"
)
ENTITY = re.compile(r"&(amp|lt|gt);")


def inert(mrkdwn: str) -> None:
    """Every `<…>` in the text is one the bot writes, and every `&` starts an entity."""
    rest = OURS.sub("", mrkdwn)
    assert "<" not in rest and ">" not in rest, mrkdwn
    assert "&" not in ENTITY.sub("", rest), mrkdwn


def texts_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["text"]] if isinstance(value.get("text"), str) else []
        return own + [t for key, v in value.items() if key != "text" for t in texts_in(v)]
    if isinstance(value, list):
        return [t for item in value for t in texts_in(item)]
    return []


def valid_message(payload: dict[str, Any]) -> None:
    assert 0 < len(payload["text"]) <= messages.TEXT_MAX
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    for raw in blocks:
        block = Block.parse(raw)
        assert block is not None, raw
        block.to_dict()  # validates every limit slack_sdk knows, recursively
        for element in raw.get("elements", []):
            if element.get("type") == "mrkdwn":
                assert len(element["text"]) <= messages.SECTION_MAX  # slack_sdk misses this
    for mrkdwn in texts_in(payload):
        inert(mrkdwn)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(views())
def test_the_task_message_fits_and_is_inert(view: TaskView) -> None:
    valid_message(messages.task_message(view))


@FAST
@given(views())
def test_thread_replies_fit_and_are_inert(view: TaskView) -> None:
    valid_message(messages.round_reply(view))
    valid_message(messages.ending_reply(view))
    for decision in view.decisions:
        valid_message(messages.decision_reply(decision))
    if view.upload is not None:
        valid_message(messages.upload_failed_reply(view.round, view.upload.error))
    assert len(messages.upload_comment(view, 1, 3)) < 100


@FAST
@given(views())
def test_answers_to_one_person_fit_and_are_inert(view: TaskView) -> None:
    status = messages.status_text(view, "https://ivh-test.slack.com/archives/C0/p1")
    assert len(status) <= messages.TEXT_MAX
    inert(status)
    inert(messages.help_text())


WHERE = st.builds(
    messages.Where,
    permalink=st.one_of(st.none(), URLS),
    channel=st.one_of(st.none(), st.just("C0APPROVALS"), text(0, 20)),
)


@FAST
@given(views(), WHERE)
def test_direct_messages_to_the_requester_fit_and_are_inert(
    view: TaskView, where: messages.Where
) -> None:
    valid_message(messages.requester_ready(view, where))
    valid_message(messages.requester_ended(view, where))
    for decision in view.decisions:
        valid_message(messages.requester_decided(view, decision, where))


@FAST
@given(USERS, st.sampled_from(["approval", "rejection"]), st.integers(), LONG, LONG)
def test_error_answers_fit_and_are_inert(user, action, code, message, request_id) -> None:
    answer = messages.error_text(user, action, code, message, request_id)
    assert len(answer) <= messages.TEXT_MAX
    inert(answer)


@FAST
@given(TASK_IDS, USERS, LONG)
def test_the_unknown_task_notice_fits_and_is_inert(task_id, tracked_by, error) -> None:
    valid_message(messages.unknown_task_notice(task_id, tracked_by, error))


@FAST
@given(TASK_IDS, st.integers(1, 10_000), TITLES)
def test_the_reject_form_fits_and_is_inert(task_id: str, round_: int, title: str | None) -> None:
    view = messages.reject_modal(task_id, round_, title)
    View(**view).to_dict()
    for mrkdwn in texts_in(view):
        inert(mrkdwn)
    assert messages.parse_button_value(view["private_metadata"]) == (task_id, round_)


CATEGORIES = st.lists(
    exactly(CATEGORY_MAX).filter(lambda c: category_problem([c]) is None),
    min_size=1,
    max_size=CATEGORIES_MAX,
    unique=True,
)


@FAST
@given(TASK_IDS, st.integers(1, 10_000), TITLES, CATEGORIES)
def test_the_reject_form_with_categories_fits(
    task_id: str, round_: int, title: str | None, categories: list[str]
) -> None:
    view = messages.reject_modal(task_id, round_, title, categories)
    View(**view).to_dict()
    for mrkdwn in texts_in(view):
        inert(mrkdwn)
    [menu] = [b["element"] for b in view["blocks"] if b.get("block_id") == "category"]
    assert [option["value"] for option in menu["options"]] == categories


@FAST
@given(TASK_IDS, st.integers(1, 10_000))
def test_every_legal_task_id_makes_buttons_the_bot_accepts(task_id: str, round_: int) -> None:
    value = messages.button_value(task_id, round_)
    assert len(value) <= messages.BUTTON_VALUE_MAX
    assert messages.parse_button_value(value) == (task_id, round_)


def test_ten_rounds_of_long_rejections_keep_the_newest_and_say_what_was_cut() -> None:
    reason = "&<>" * 100  # 300 characters, 1,200 once escaped
    view = TaskView(
        task_id="t_1",
        phase=Phase.PENDING,
        round=11,
        decisions=[
            Decision(round=n, operate="REJECT", user="U0BO", at=0, reason=reason)
            for n in range(1, 11)
        ],
    )
    payload = messages.task_message(view)
    valid_message(payload)
    earlier = next(
        b["text"]["text"]
        for b in payload["blocks"]
        if b.get("text", {}).get("text", "").startswith("*Earlier rejections*")
    )
    assert "Round 10," in earlier and "Round 1," not in earlier
    assert re.search(r"…and \d+ earlier, in the thread below", earlier)


def test_a_title_that_pings_everyone_pings_nobody() -> None:
    view = TaskView(
        task_id="<!everyone>",
        title="<!here> & <@U0BOSS>",
        phase=Phase.PENDING,
        round=1,
        demo_urls=["@U0BOSS", "!channel"],
    )
    payload = messages.task_message(view)
    assert "<!" not in payload["text"] and "<@" not in payload["text"]
    valid_message(payload)


@FAST
@given(st.lists(views(), max_size=6), st.floats(0, 4e9), st.one_of(st.none(), st.just("x")))
def test_the_pending_queue_fits_and_is_inert(found, now, refusal) -> None:
    waiting = [
        Waiting(view, view.tracked_at, "https://ivh-test.slack.com/archives/C0/p1")
        for view in found
    ]
    text = messages.pending_text(waiting, now, refusal)
    assert len(text) <= messages.TEXT_MAX
    inert(text)


@FAST
@given(views(), st.dictionaries(st.integers(1, 12), st.lists(URLS, max_size=4), max_size=12), LONG)
def test_a_task_history_fits_and_is_inert(view, demos, message) -> None:
    events = [
        {"kind": "progress", "at": 1.0, "status": message, "stage": "CONFIRM", "round": 1},
        {"kind": "unknown", "at": 2.0, "message": message},
    ] * 20
    text = messages.history_text(view, demos, events)
    assert len(text) <= messages.TEXT_MAX
    inert(text)


WAITING = st.builds(
    Waiting, view=views(), ready=st.floats(0, 4e9), permalink=st.one_of(st.none(), URLS)
)


@st.composite
def decided(draw: st.DrawFn) -> Decided:
    view = draw(views())
    decision = view.decisions[-1] if view.decisions else Decision(round=1, operate=None, at=0.0)
    permalink = draw(st.one_of(st.none(), URLS))
    return Decided(view.task_id, view.title, permalink, decision)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(WAITING, max_size=30),
    st.lists(decided(), max_size=20),
    st.one_of(st.none(), st.just("Only approvers can decide (<@U0ANA>, <!subteam^S0OPS>).")),
    st.one_of(st.none(), st.just("This round is closed: ✅ approved by <@U0BO>.")),
    USERS,
    st.booleans(),
)
def test_the_app_home_fits_and_is_inert(waiting, recent, refusal, notice, user, own) -> None:
    viewer = Viewer(user, refusal, prevent_self_approval=own)
    view = home_view(viewer, waiting, recent, 1.8e9, more=len(waiting), notice=notice)
    View(**view).to_dict()  # at most 100 blocks, and every block within its limits
    assert len(json.dumps(view)) < 250_000  # views.publish: view_too_large above 250 kB
    ids = [block["block_id"] for block in view["blocks"] if "block_id" in block]
    assert len(ids) == len(set(ids))
    for block in view["blocks"]:
        for element in block.get("elements", []):
            if element.get("type") == "mrkdwn":
                assert len(element["text"]) <= messages.SECTION_MAX
    for mrkdwn in texts_in(view):
        inert(mrkdwn)
    buttons = [e for b in view["blocks"] if b["type"] == "actions" for e in b["elements"]]
    rejects = [button for button in buttons if button["action_id"] == messages.REJECT]
    undecided = [w for w in waiting if not (w.view.votes and user in w.view.votes.users)]
    assert len(rejects) == (0 if refusal else len(undecided[:WAITING_SHOWN]))
