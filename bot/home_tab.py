"""The App Home tab: a pure function of the queue, the last decisions and who is looking.

"Waiting for you" lists the rounds the viewer may decide, oldest first, each with the buttons
of the channel message (same action ids, so the same listeners handle them); "Recently
decided" the last decisions. Someone who may not decide sees the queue read-only, and why.
Short lines, one round per block pair: it reads on a phone.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.messages import (
    Payload,
    age,
    clip,
    context,
    decision_buttons,
    decision_line,
    escape,
    link,
    section,
    slack_date,
    task_code,
    votes_line,
)
from bot.model import Decided, Waiting

HOME_CALLBACK = "ivh_home"
WAITING_SHOWN = 20  # rounds with their buttons; the rest are counted (blocks: 100 at most)
TITLE_MAX = 200
RECENT_TEXT_MAX = 1200  # one decision's lines, its reason quoted
NOTICE_MAX = 1500


@dataclass(frozen=True)
class Viewer:
    """Who the Home is published for, and what they may do."""

    user: str
    refusal: str | None = None  # why they may not decide (our own sentence); None: they may
    prevent_self_approval: bool = False


def _heading(task_id: str, title: str | None, round_: int) -> str:
    name = clip(escape(title), TITLE_MAX) if title else "Task"
    return f"*{name}* {task_code(task_id)} · round {round_}"


def _thread(permalink: str | None) -> str:
    return link(permalink, "Open the thread") if permalink else "not posted yet"


def _waiting_blocks(viewer: Viewer, item: Waiting, index: int, now: float) -> list[Payload]:
    view = item.view
    lines = [
        _heading(view.task_id, view.title, view.round),
        f"⏳ Waiting {age(now - item.ready)} · {_thread(item.permalink)}",
    ]
    votes = votes_line(view)
    if votes:
        lines.append(votes)
    blocks = [section("\n".join(lines))]
    if viewer.refusal is not None:
        return blocks  # read-only: the reason is said once, at the top
    own = viewer.prevent_self_approval and view.tracked_by == viewer.user
    if own:
        blocks.append(
            context("You tracked this task: another approver must approve it; you may reject it.")
        )
    blocks.append(decision_buttons(view, f"home:{index}", approve=not own))
    return blocks


def _approved_by(viewer: Viewer, item: Waiting) -> bool:
    votes = item.view.votes
    return votes is not None and viewer.user in votes.users


def _decided_block(item: Decided) -> Payload:
    """The task, its thread, then the decision: a long reason is what gets cut."""
    decision = item.decision
    heading = _heading(item.task_id, item.title, decision.round)
    text = f"{heading} · {_thread(item.permalink)}\n{decision_line(decision)}"
    return section(clip(text, RECENT_TEXT_MAX))


def home_view(
    viewer: Viewer,
    waiting: list[Waiting],
    recent: list[Decided],
    now: float,
    *,
    more: int = 0,
    notice: str | None = None,
) -> Payload:
    """The Home view for `viewer`: `waiting` oldest first (`more`: rounds waiting beyond it),
    `recent` newest first; `notice` answers the viewer's last click here (our own text)."""
    blocks: list[Payload] = []  # Slack shows the app's name above the tab
    if notice:
        blocks.append(section(clip(notice, NOTICE_MAX)))
    read_only = viewer.refusal is not None
    mine = [item for item in waiting if read_only or not _approved_by(viewer, item)]
    voted = len(waiting) - len(mine)
    shown = mine[:WAITING_SHOWN]
    hidden = len(mine) - len(shown) + more
    title = "Waiting for a decision" if read_only else "Waiting for you"
    blocks.append(
        {"type": "header", "text": {"type": "plain_text", "text": f"{title} ({len(mine) + more})"}}
    )
    if read_only:
        blocks.append(
            context(f"👀 Read-only: {clip(viewer.refusal or '', 1000)} You can watch; not decide.")
        )
    if not shown:
        blocks.append(section("Nothing waits for you. 🎉" if not read_only else "Nothing waits."))
    for index, item in enumerate(shown):
        blocks.extend(_waiting_blocks(viewer, item, index, now))
    if hidden > 0:
        blocks.append(context(f"…and {hidden} more, oldest first in `/ivh pending`."))
    if voted:
        rounds = "round" if voted == 1 else "rounds"
        blocks.append(context(f"You approved {voted} more {rounds}; they wait for more approvals."))
    blocks.append({"type": "divider"})
    blocks.append({"type": "header", "text": {"type": "plain_text", "text": "Recently decided"}})
    if not recent:
        blocks.append(context("No decisions yet."))
    blocks.extend(_decided_block(item) for item in recent)
    blocks.append(context(f"Updated {slack_date(now)}; fresh each time you open this tab."))
    return {"type": "home", "callback_id": HOME_CALLBACK, "blocks": blocks}


def unavailable_view(notice: str, now: float) -> Payload:
    """The Home while the bot's storage does not answer: the answer to the click, and why
    the queue is not shown."""
    text = "⚠️ The queue cannot be read now (the bot's storage does not answer)."
    return {
        "type": "home",
        "callback_id": HOME_CALLBACK,
        "blocks": [
            section(clip(notice, NOTICE_MAX)),
            section(f"{text} Open this tab again in a minute."),
            context(f"Updated {slack_date(now)}."),
        ],
    }
