"""Block Kit payloads: pure functions of a task's state, short lines that read on a phone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from bot.model import REASON_MAX, Decision, Phase, TaskView, Waiting, is_channel_id

APPROVE = "approve"
REJECT = "reject"
WATCH = "watch_demo"
REJECT_VIEW = "reject_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"
CATEGORY_BLOCK = "category"
CATEGORY_INPUT = "category_select"
TIMECODE_BLOCK = "timecode"
TIMECODE_INPUT = "timecode_input"
TIMECODE_LENGTH = 12  # h:mm:ss and a few stray spaces; checked on submit

Payload = dict[str, Any]

# Slack's limits (Block Kit reference); a payload over one is refused whole (invalid_blocks).
SECTION_MAX = 3000  # a section's text
CONFIRM_TEXT_MAX = 300  # a confirmation dialog's text
BUTTON_VALUE_MAX = 2000
TEXT_MAX = 3000  # our own bound on a message's top-level text (notifications, fallbacks)
DEMO_LINKS_MAX = 10  # demo links shown; the thread has every video
MORE = "…"


def escape(text: str) -> str:
    """Make outside text inert in mrkdwn: no mentions, links or formatting sneak through."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """`text` (escaped mrkdwn) cut to at most `limit` characters, ending in an ellipsis, and
    never inside an entity (`&amp;`) or a link or mention (`<…>`)."""
    if len(text) <= limit:
        return text
    cut = text[: max(0, limit - len(MORE))]
    for opening, closing in (("&", ";"), ("<", ">")):
        at = cut.rfind(opening)
        if at != -1 and closing not in cut[at:]:
            cut = cut[:at]
    return cut + MORE


def link(url: str, label: str) -> str:
    """A link to an http(s) URL; anything else (`@U…`, `!everyone`, `javascript:`) would be
    a mention or worse inside `<…>`, so it is shown as inert text instead."""
    if not url.lower().startswith(("https://", "http://")) or any(c.isspace() for c in url):
        return f"{escape(label)} (not a web link)"
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    if len(safe) > SECTION_MAX - 100:
        return f"{escape(label)} (link too long for Slack)"
    return f"<{safe}|{escape(label)}>"


def _packed(items: list[str], limit: int, *, joiner: str = "\n") -> list[str]:
    """`items` joined into as few texts of at most `limit` characters as they fit in."""
    texts: list[str] = []
    for item in items:
        if texts and len(texts[-1]) + len(joiner) + len(item) <= limit:
            texts[-1] += joiner + item
        else:
            texts.append(clip(item, limit))
    return texts


def slack_date(at: float) -> str:
    """A time Slack shows in each reader's own time zone; the fallback is UTC."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
    return f"<!date^{int(at)}^{{date_short_pretty}} at {{time}}|{fallback}>"


def who(user: str) -> str:
    if user.startswith(("U", "W")) and user.isalnum():
        return f"<@{user}>"
    named = {"api": "the API", "cli": "the CLI", "demo": "the demo"}
    return named.get(user, escape(user) or "someone")


def button_value(task_id: str, round_: int) -> str:
    """Unescaped non-ASCII: a 128-character task id in `\\uXXXX` form would pass the limit."""
    value = {"task": task_id, "round": round_}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def form_origin(metadata: str) -> str:
    """Where a Reject form was opened from: "home", else "channel" (forms of earlier
    versions say nothing)."""
    try:
        data = json.loads(metadata)
    except ValueError:
        return "channel"
    return "home" if isinstance(data, dict) and data.get("from") == "home" else "channel"


def parse_button_value(value: str) -> tuple[str, int]:
    """Untrusted input: the caller still checks it against the stored state."""
    if len(value) > 600:  # a task id (128 characters, quotes escaped) and a round
        raise ValueError("button value too long")
    data = json.loads(value)
    task_id, round_ = data["task"], data["round"]
    if not isinstance(task_id, str) or not isinstance(round_, int) or isinstance(round_, bool):
        raise ValueError("malformed button value")
    return task_id, round_


def name_of(view: TaskView) -> str:
    return escape(view.title) if view.title else f"Task {escape(view.task_id)}"


def section(text: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, SECTION_MAX)}}


def context(text: str) -> Payload:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, SECTION_MAX)}]}


def decision_line(decision: Decision) -> str:
    when = slack_date(decision.at)
    if decision.source == "elsewhere":
        return f"Decided outside Slack (e.g. the Tencent console), seen {when}"
    if decision.operate == "AGREE":
        return f"✅ Approved by {_people(decision.approvers or [decision.user])} {when}"
    return f"↩️ Rejected by {who(decision.user)} {when}\n>{_quoted(decision.reason)}"


def _people(users: list[str]) -> str:
    """`@ana`, `@ana and @bo`, `@ana, @bo and @cy`."""
    named = [who(user) for user in users] or ["someone"]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def votes_line(view: TaskView) -> str:
    """How far the current round is from its quorum: "Approvals 1 of 2: @ana"."""
    # The setting as it is now: a quorum changed by a restart applies to votes already given.
    required = view.required_approvals
    given = view.votes.users if view.votes else []
    if required <= 1:
        return ""
    if not given:
        return f"Needs {required} approvals."
    return f"Approvals {len(given)} of {required}: " + ", ".join(who(user) for user in given)


def _quoted(reason: str) -> str:
    """A reason as a block quote: every line of it quoted, not only the first."""
    return escape(reason).replace("\n", "\n>")


def _status(view: TaskView) -> str:
    decision = view.current_decision
    match view.phase:
        case Phase.PENDING:
            waits = f"⏳ *Round {view.round} waits for a decision.* Watch the demo, then decide."
            votes = votes_line(view)
            return f"{waits}\n{votes}" if votes else waits
        case Phase.TRAINING:
            return "🛠️ Training; the demo will be posted here when it is ready."
        case Phase.APPROVED | Phase.REJECTED | Phase.ELSEWHERE if decision is not None:
            follow = {
                Phase.APPROVED: "Tencent is delivering the asset.",
                Phase.REJECTED: f"Back to training; round {view.round + 1} comes to this thread.",
                Phase.ELSEWHERE: "",
            }[view.phase]
            return "\n".join(part for part in (decision_line(decision), follow) if part)
        case Phase.SUCCEEDED:
            return "🎉 *Complete.* The asset is ready."
        case Phase.FAILED:
            return f"❌ *Failed:* {_fail_message(view)}"
    return ""


def _fail_message(view: TaskView) -> str:
    return clip(escape(view.fail_message or "no reason given"), 1000)


def _assets(view: TaskView, room: int = SECTION_MAX) -> str:
    """One line per asset, as many as fit in `room`, then how many more there are."""
    lines = []
    for asset in view.assets:
        kind = asset.get("AssetType") or asset.get("Type") or "asset"
        ident = asset.get("AssetId") or asset.get("Id") or json.dumps(asset, ensure_ascii=False)
        lines.append(f"• {clip(escape(str(kind)), 100)} `{clip(escape(str(ident)), 300)}`")
    return _newest_that_fit(lines, room, lambda n: f"…and {n} more assets", keep="first")


def _newest_that_fit(lines: list[str], room: int, cut: Callable[[int], str], keep: str) -> str:
    """`lines` joined, or as many as fit in `room` with `cut(n)` naming the n left out:
    `keep="last"` keeps the last lines (the newest) and puts the note first."""
    text = "\n".join(lines)
    if len(text) <= room:
        return text
    kept: list[str] = []
    ordered = lines[::-1] if keep == "last" else lines
    for line in ordered:
        note = cut(len(lines) - len(kept) - 1)
        if sum(len(k) + 1 for k in kept) + len(line) + 1 + len(note) > room:
            break
        kept.append(line)
    note = cut(len(lines) - len(kept))
    if keep == "last":
        return "\n".join([note, *kept[::-1]])
    return "\n".join([*kept, note])


def _demo_links(view: TaskView) -> list[str]:
    """The demo links, in as many section texts as they need, and what became of the video."""
    urls = view.demo_urls[:DEMO_LINKS_MAX]
    links = [link(url, f"Watch demo {i}") for i, url in enumerate(urls, 1)]
    if len(view.demo_urls) > len(urls):
        links.append(f"…and {len(view.demo_urls) - len(urls)} more in the thread")
    texts = _packed(links, SECTION_MAX - 10, joiner=" · ")
    texts[0] = "🎬 " + texts[0]
    if view.upload is not None and view.upload.ok:
        note = "The video is in the thread below."
    elif view.upload is not None:
        error = clip(escape(view.upload.error), 500)
        note = f"⚠️ Could not copy the video into Slack ({error}); use the link."
    else:
        return texts
    if len(texts[-1]) + 1 + len(note) <= SECTION_MAX:
        texts[-1] += "\n" + note
    else:
        texts.append(note)
    return texts


def decision_buttons(
    view: TaskView, block_id: str | None = None, *, approve: bool = True
) -> Payload:
    """Approve (with its confirmation) and Reject, or Reject alone; `block_id` must be unique
    in its message or view (the App Home shows several rounds)."""
    value = button_value(view.task_id, view.round)
    buttons: list[Payload] = [
        {
            "type": "button",
            "action_id": APPROVE,
            "text": {"type": "plain_text", "text": "Approve"},
            "style": "primary",
            "value": value,
            "confirm": {
                "title": {"type": "plain_text", "text": "Approve this demo?"},
                "text": {"type": "mrkdwn", "text": _approve_question(view)},
                "confirm": {"type": "plain_text", "text": "Approve"},
                "deny": {"type": "plain_text", "text": "Cancel"},
            },
        },
        {
            "type": "button",
            "action_id": REJECT,
            "text": {"type": "plain_text", "text": "Reject"},
            "style": "danger",
            "value": value,
        },
    ]
    return {
        "type": "actions",
        "block_id": block_id or f"decide:{view.round}",
        "elements": buttons if approve else buttons[1:],
    }


def _approve_question(view: TaskView) -> str:
    before = f"Round {view.round} of "
    after = " will be accepted and delivered. This cannot be undone."
    if view.required_approvals > 1:
        after = f": your approval is one of the {view.required_approvals} it needs to be accepted."
    room = CONFIRM_TEXT_MAX - len(before) - len(after)
    return before + clip(name_of(view), room) + after


def fallback_text(view: TaskView) -> str:
    """The top-level text: notifications and screen readers show it, and Slack renders it as
    mrkdwn, so it is escaped like the blocks."""
    name = clip(escape(view.title) if view.title else f"task {escape(view.task_id)}", 400)
    return {
        Phase.PENDING: f"Demo ready for approval: {name}, round {view.round}",
        Phase.TRAINING: f"{name}: training",
        Phase.APPROVED: f"{name}: round {view.round} approved",
        Phase.REJECTED: f"{name}: round {view.round} rejected",
        Phase.ELSEWHERE: f"{name}: decided outside Slack",
        Phase.SUCCEEDED: f"{name}: complete",
        Phase.FAILED: f"{name}: failed",
    }[view.phase]


TASK_METADATA = "ivh_task"  # the event_type of the metadata on every parent message
DECISION_METADATA = "ivh_decision"  # ... and on every decision's thread reply


def task_metadata(task_id: str) -> Payload:
    """Message metadata naming the task: how a message posted but never recorded is found."""
    return {"event_type": TASK_METADATA, "event_payload": {"task_id": task_id}}


def posted_for(message: Payload, task_id: str) -> bool:
    """Whether a message from conversations.history is the parent message of `task_id`."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != TASK_METADATA:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("task_id") == task_id


def decision_metadata(task_id: str, round_: int) -> Payload:
    """Metadata naming a decision's thread reply: how one posted but not recorded is found."""
    return {"event_type": DECISION_METADATA, "event_payload": {"task_id": task_id, "round": round_}}


def replied_for(message: Payload, task_id: str, round_: int) -> bool:
    """Whether a message from conversations.replies is the decision reply of that round."""
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != DECISION_METADATA:
        return False
    payload = metadata.get("event_payload")
    return payload == {"task_id": task_id, "round": round_}


def task_message(view: TaskView) -> Payload:
    """The parent message, rebuilt whole from the task's state on every change."""
    heading = f"*{name_of(view)}*\n{task_code(view.task_id)}"
    if view.round:
        heading += f" · round {view.round}"
    blocks: list[Payload] = [
        section(heading),
        context(f"Tracked by {who(view.tracked_by)} {slack_date(view.tracked_at)}"),
        section(_status(view)),
    ]
    if view.earlier_rejections:
        blocks.append(section(_earlier_rejections(view)))
    if view.tencent_reject_reason:
        reason = clip(escape(view.tencent_reject_reason), 1000)
        blocks.append(section(f"⚠️ *Tencent declined to retrain:* {reason}"))
    if view.phase == Phase.PENDING and view.demo_urls:
        blocks.extend(section(text) for text in _demo_links(view))
    if view.phase == Phase.SUCCEEDED and view.assets:
        blocks.append(section(_assets(view)))
    if view.phase == Phase.PENDING:
        blocks.append(decision_buttons(view))
    return {"text": fallback_text(view), "blocks": blocks}


def _earlier_rejections(view: TaskView) -> str:
    """The newest rejections that fit in a section; the thread keeps every one of them."""
    heading = "*Earlier rejections*\n"
    lines = [
        f"• Round {d.round}, {who(d.user)}: {clip(escape(d.reason), 1600)}"
        for d in view.earlier_rejections
    ]
    room = SECTION_MAX - len(heading)
    return heading + _newest_that_fit(
        lines, room, lambda n: f"…and {n} earlier, in the thread below", keep="last"
    )


def round_reply(view: TaskView) -> Payload:
    urls = view.demo_urls[:DEMO_LINKS_MAX]
    links = [link(url, f"demo {i}") for i, url in enumerate(urls, 1)]
    if len(view.demo_urls) > len(urls):
        links.append(f"…and {len(view.demo_urls) - len(urls)} more")
    texts = _packed(links or ["no demo link given"], SECTION_MAX - 40, joiner=" · ")
    texts[0] = f"*Round {view.round}* is ready for a decision: {texts[0]}"
    return {
        "text": f"Round {view.round} is ready for a decision",
        "blocks": [section(text) for text in texts],
    }


def upload_comment(view: TaskView, index: int, total: int) -> str:
    suffix = f" ({index}/{total})" if total > 1 else ""
    return f"Round {view.round} demo{suffix}"


def _waited(seconds: float) -> str:
    if seconds < 5400:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def reminder_reply(view: TaskView, waited: float, mention: str, *, escalation: bool) -> Payload:
    """A nudge in the thread about a round nobody decided; `mention` is built by the bot
    (user and group mentions of its own settings), the rest of the text is escaped."""
    name = clip(name_of(view), 500)
    if escalation:
        text = (
            f"🚨 *{name}* (round {view.round}) has waited {_waited(waited)} for a decision."
            f" {mention}: please approve or reject it."
        )
        fallback = f"Escalated: round {view.round} has waited {_waited(waited)}"
    else:
        text = (
            f"⏰ Round {view.round} has waited {_waited(waited)} for a decision."
            f" {mention}: the demo is above."
        )
        fallback = f"Reminder: round {view.round} has waited {_waited(waited)}"
    return {"text": fallback, "blocks": [section(text)]}


def upload_failed_reply(round_: int, error: str) -> Payload:
    error = clip(escape(error), 1000)
    text = f"⚠️ Could not copy the round {round_} video into Slack: {error}. Use the link."
    return {"text": text, "blocks": [section(text)]}


def decision_reply(decision: Decision) -> Payload:
    line = decision_line(decision)
    text = {
        "AGREE": f"Round {decision.round} approved",
        "REJECT": f"Round {decision.round} rejected",
        None: f"Round {decision.round} decided outside Slack",
    }[decision.operate]
    if decision.request_id:
        line += f"\n_RequestID {clip(escape(decision.request_id), 200)}_"
    return {"text": text, "blocks": [section(line)]}


def ending_reply(view: TaskView) -> Payload:
    if view.phase == Phase.SUCCEEDED:
        body = "🎉 Complete." + (f"\n{_assets(view, SECTION_MAX - 20)}" if view.assets else "")
        return {"text": f"{task_code(view.task_id)} complete", "blocks": [section(body)]}
    body = f"❌ Failed: {_fail_message(view)}"
    return {"text": f"{task_code(view.task_id)} failed", "blocks": [section(body)]}


def task_code(task_id: str) -> str:
    """A task id in a text: escaped, and as code so that nothing in it formats."""
    return f"`{escape(task_id)}`"


def error_text(user: str, action: str, code: int | None, message: str, request_id: str) -> str:
    code_text = "no code" if code is None else f"code {code}"
    return (
        f"⚠️ {who(user)}'s {action} did not reach Tencent: {clip(escape(message), 1000)}"
        f" ({code_text}, RequestID {clip(escape(request_id), 200)})."
        " The buttons still work: try again."
    )


def _category_input(categories: Sequence[str]) -> Payload:
    return {
        "type": "input",
        "block_id": CATEGORY_BLOCK,
        "label": {"type": "plain_text", "text": "What is wrong?"},
        "element": {
            "type": "static_select",
            "action_id": CATEGORY_INPUT,
            "placeholder": {"type": "plain_text", "text": "Pick a category"},
            "options": [
                {"text": {"type": "plain_text", "text": c}, "value": c} for c in categories
            ],
        },
    }


def _timecode_input() -> Payload:
    return {
        "type": "input",
        "block_id": TIMECODE_BLOCK,
        "optional": True,
        "label": {"type": "plain_text", "text": "Where in the video?"},
        "hint": {"type": "plain_text", "text": "m:ss or h:mm:ss, e.g. 0:12 or 1:02:03"},
        "element": {
            "type": "plain_text_input",
            "action_id": TIMECODE_INPUT,
            "max_length": TIMECODE_LENGTH,
            "placeholder": {"type": "plain_text", "text": "0:12"},
        },
    }


def reject_modal(
    task_id: str,
    round_: int,
    title: str | None,
    categories: Sequence[str] = (),
    *,
    origin: str = "channel",
) -> Payload:
    """The Reject form: a category and a timecode (when categories are given) and the reason.
    `origin` ("channel" or "home"): where its answers go once submitted."""
    name = clip(escape(title) if title else f"Task {escape(task_id)}", 1000)
    structured = [_category_input(categories), _timecode_input()] if categories else []
    fields: Payload = {"task": task_id, "round": round_}
    if origin != "channel":
        fields["from"] = origin
    metadata = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": metadata,
        "title": {"type": "plain_text", "text": "Reject demo"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(f"*{name}*, round {round_}\nThe task goes back for another round."),
            *structured,
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Why? (sent to Tencent)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_INPUT,
                    "multiline": True,
                    "max_length": REASON_MAX,
                    "placeholder": {"type": "plain_text", "text": "e.g. green outline"},
                },
            },
        ],
    }


# --- direct messages to whoever tracked the task -------------------------------------------


def is_user(user: str) -> bool:
    """Whether `user` is a Slack user id (someone to DM), not "api", "cli" or "demo"."""
    return user.startswith(("U", "W")) and user.isalnum() and user.isupper()


class Where(NamedTuple):
    """Where a task's thread is: its permalink, else its channel."""

    permalink: str | None
    channel: str | None


def _to_requester(view: TaskView, line: str, fallback: str, where: Where) -> Payload:
    """A DM about the task: what happened, and a link to its thread (or its channel)."""
    heading = f"*{clip(name_of(view), 400)}* {task_code(view.task_id)}"
    permalink, channel = where
    if permalink:
        thread = link(permalink, "Open the thread")
    elif channel and is_channel_id(channel):
        thread = f"The thread is in <#{channel}>."
    else:
        thread = ""
    body = "\n".join(part for part in (heading, line, thread) if part)
    name = clip(escape(view.title) if view.title else f"task {escape(view.task_id)}", 400)
    return {"text": f"{name}: {fallback}", "blocks": [section(body)]}


def requester_ready(view: TaskView, where: Where) -> Payload:
    line = f"🎬 The round {view.round} demo is ready for a decision."
    return _to_requester(view, line, f"round {view.round} is ready for a decision", where)


def requester_decided(view: TaskView, decision: Decision, where: Where) -> Payload:
    fallback = {
        "AGREE": f"round {decision.round} approved",
        "REJECT": f"round {decision.round} rejected",
        None: f"round {decision.round} decided outside Slack",
    }[decision.operate]
    line = f"Round {decision.round}: {decision_line(decision)}"
    return _to_requester(view, line, fallback, where)


def requester_ended(view: TaskView, where: Where) -> Payload:
    if view.phase == Phase.SUCCEEDED:
        return _to_requester(view, "🎉 Complete: the asset is ready.", "complete", where)
    return _to_requester(view, f"❌ Failed: {_fail_message(view)}", "failed", where)


def unknown_task_notice(task_id: str, tracked_by: str, error: str) -> Payload:
    text = (
        f"⚠️ Tencent IVH does not know task {task_code(task_id)} (tracked by {who(tracked_by)}):"
        f" {clip(escape(error), 1000)}. I stopped watching it; check the id and track it again."
    )
    return {"text": f"IVH does not know task {task_code(task_id)}", "blocks": [section(text)]}


def age(seconds: float) -> str:
    return _waited(max(0.0, seconds))


def pending_text(waiting: Sequence[Waiting], now: float, refusal: str | None) -> str:
    """`/ivh pending`: rounds waiting for a decision, oldest first (view, ready at, thread).
    `refusal` is the bot's own sentence (with its approvers' mentions), shown as it is."""
    if not waiting:
        return "Nothing waits for a decision. 🎉"
    lines = []
    for view, ready, permalink in waiting:
        line = (
            f"• *{clip(name_of(view), 200)}* {task_code(view.task_id)} · round {view.round}"
            f" · waiting {age(now - ready)}"
        )
        if permalink:
            line += f" · {link(permalink, 'Open the thread')}"
        lines.append(line)
    header = f"*Waiting for a decision* ({len(waiting)}, oldest first)"
    if refusal:
        header += f"\n_{clip(refusal, 300)} You can watch them; you cannot decide._"
    body = _newest_that_fit(lines, SECTION_MAX - len(header) - 1, _more_waiting, keep="first")
    return f"{header}\n{body}"


def _more_waiting(count: int) -> str:
    return f"…and {count} more"


def history_text(view: TaskView, demos: dict[int, list[str]], events: list[Payload]) -> str:
    """`/ivh history TASK`: every round, its demo links, its decision, Tencent's answers."""
    lines = [f"*{clip(name_of(view), 200)}* {task_code(view.task_id)}"]
    decided = {d.round: d for d in view.decisions}
    for round_ in sorted(set(demos) | set(decided) | ({view.round} if view.round else set())):
        urls = demos.get(round_, [])[:DEMO_LINKS_MAX]
        links = " · ".join(link(url, f"demo {i}") for i, url in enumerate(urls, 1))
        lines.append(f"*Round {round_}* {links or '(no demo link kept)'}")
        decision = decided.get(round_)
        if decision is not None:
            said = decision_line(decision).replace("\n>", " — ")
            if decision.request_id:
                said += f" (RequestID {clip(escape(decision.request_id), 100)})"
            lines.append(said)
        elif round_ == view.round and view.phase == Phase.PENDING:
            lines.append("⏳ Waiting for a decision")
    for entry in events:
        if entry.get("kind") == "progress":
            stage = "/".join(str(entry.get(k) or "") for k in ("status", "stage", "stage_status"))
            lines.append(
                f"_{slack_date(float(entry.get('at') or 0))}: Tencent: {clip(escape(stage), 80)}"
                f" (round {int(entry.get('round') or 0)})_"
            )
        elif entry.get("kind") == "unknown":
            lines.append(f"_Tencent: {clip(escape(str(entry.get('message', ''))), 300)}_")
    return _newest_that_fit(lines, SECTION_MAX, _more_history, keep="first")


def _more_history(count: int) -> str:
    return f"…and {count} more lines (the thread has the whole story)"


def help_text() -> str:
    return (
        "*/ivh track &lt;TaskId&gt; [#channel] [title]* — watch a task; its demo comes here.\n"
        "*/ivh status &lt;TaskId&gt;* — where a task stands.\n"
        "*/ivh pending* — the rounds waiting for a decision, oldest first.\n"
        "*/ivh history &lt;TaskId&gt;* — every round: demos, decisions, Tencent's answers.\n"
        "*/ivh stats [days]* — decisions of the last days (30): how many, how fast, why not.\n"
        "*/ivh help* — this help."
    )


def status_text(view: TaskView, permalink: str | None) -> str:
    line = f"*{name_of(view)}* {task_code(view.task_id)}: {fallback_text(view)}"
    if permalink:
        line += f"\n{link(permalink, 'Open the thread')}"
    return line
