"""Block Kit payloads: pure functions of a task's state, short lines that read on a phone."""

from __future__ import annotations

import json
import time
from typing import Any

from bot.ivh import REASON_MAX
from bot.state import Decision, Phase, TaskView

APPROVE = "approve"
REJECT = "reject"
WATCH = "watch_demo"
REJECT_VIEW = "reject_reason"
REASON_BLOCK = "reason"
REASON_INPUT = "reason_input"

Payload = dict[str, Any]


def escape(text: str) -> str:
    """Make user text inert in mrkdwn: no mentions, links or formatting sneak through."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    safe = url.replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{escape(label)}>"


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
    return json.dumps({"task": task_id, "round": round_}, separators=(",", ":"))


def parse_button_value(value: str) -> tuple[str, int]:
    """Untrusted input: the caller still checks it against the stored state."""
    if len(value) > 512:  # a real value is a task id and a round
        raise ValueError("button value too long")
    data = json.loads(value)
    task_id, round_ = data["task"], data["round"]
    if not isinstance(task_id, str) or not isinstance(round_, int) or isinstance(round_, bool):
        raise ValueError("malformed button value")
    return task_id, round_


def _name(view: TaskView) -> str:
    return escape(view.title) if view.title else f"Task {view.task_id}"


def _section(text: str) -> Payload:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _context(text: str) -> Payload:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _decision_line(decision: Decision) -> str:
    when = slack_date(decision.at)
    if decision.source == "elsewhere":
        return f"Decided outside Slack (e.g. the Tencent console), seen {when}"
    if decision.operate == "AGREE":
        return f"✅ Approved by {who(decision.user)} {when}"
    return f"↩️ Rejected by {who(decision.user)} {when}\n>{escape(decision.reason)}"


def _status(view: TaskView) -> str:
    decision = view.current_decision
    match view.phase:
        case Phase.PENDING:
            return f"⏳ *Round {view.round} waits for a decision.* Watch the demo, then decide."
        case Phase.TRAINING:
            return "🛠️ Training; the demo will be posted here when it is ready."
        case Phase.APPROVED | Phase.REJECTED | Phase.ELSEWHERE if decision is not None:
            follow = {
                Phase.APPROVED: "Tencent is delivering the asset.",
                Phase.REJECTED: f"Back to training; round {view.round + 1} comes to this thread.",
                Phase.ELSEWHERE: "",
            }[view.phase]
            return "\n".join(part for part in (_decision_line(decision), follow) if part)
        case Phase.SUCCEEDED:
            return "🎉 *Complete.* The asset is ready."
        case Phase.FAILED:
            return f"❌ *Failed:* {escape(view.fail_message or 'no reason given')}"
    return ""


def _assets(view: TaskView) -> str:
    lines = []
    for asset in view.assets:
        kind = asset.get("AssetType") or asset.get("Type") or "asset"
        ident = asset.get("AssetId") or asset.get("Id") or json.dumps(asset, ensure_ascii=False)
        lines.append(f"• {escape(str(kind))} `{escape(str(ident))}`")
    return "\n".join(lines)


def _demo_links(view: TaskView) -> str:
    links = [_link(url, f"Watch demo {i}") for i, url in enumerate(view.demo_urls, 1)]
    text = "🎬 " + " · ".join(links)
    if view.upload is not None and view.upload.ok:
        text += "\nThe video is in the thread below."
    elif view.upload is not None:
        error = escape(view.upload.error)
        text += f"\n⚠️ Could not copy the video into Slack ({error}); use the link."
    return text


def _buttons(view: TaskView) -> Payload:
    value = button_value(view.task_id, view.round)
    return {
        "type": "actions",
        "block_id": f"decide:{view.round}",
        "elements": [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": value,
                "confirm": {
                    "title": {"type": "plain_text", "text": "Approve this demo?"},
                    "text": {
                        "type": "mrkdwn",
                        "text": f"Round {view.round} of {_name(view)} will be accepted and "
                        "delivered. This cannot be undone.",
                    },
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
        ],
    }


def fallback_text(view: TaskView) -> str:
    name = view.title or f"task {view.task_id}"
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


def task_message(view: TaskView) -> Payload:
    """The parent message, rebuilt whole from the task's state on every change."""
    heading = f"*{_name(view)}*\n`{escape(view.task_id)}`"
    if view.round:
        heading += f" · round {view.round}"
    blocks: list[Payload] = [
        _section(heading),
        _context(f"Tracked by {who(view.tracked_by)} {slack_date(view.tracked_at)}"),
        _section(_status(view)),
    ]
    if view.earlier_rejections:
        lines = [
            f"• Round {d.round}, {who(d.user)}: {escape(d.reason)}" for d in view.earlier_rejections
        ]
        blocks.append(_section("*Earlier rejections*\n" + "\n".join(lines)))
    if view.tencent_reject_reason:
        reason = escape(view.tencent_reject_reason)
        blocks.append(_section(f"⚠️ *Tencent declined to retrain:* {reason}"))
    if view.phase == Phase.PENDING and view.demo_urls:
        blocks.append(_section(_demo_links(view)))
    if view.phase == Phase.SUCCEEDED and view.assets:
        blocks.append(_section(_assets(view)))
    if view.phase == Phase.PENDING:
        blocks.append(_buttons(view))
    return {"text": fallback_text(view), "blocks": blocks}


def round_reply(view: TaskView) -> Payload:
    links = " · ".join(_link(url, f"demo {i}") for i, url in enumerate(view.demo_urls, 1))
    text = f"*Round {view.round}* is ready for a decision: {links or 'no demo link given'}"
    return {"text": f"Round {view.round} is ready for a decision", "blocks": [_section(text)]}


def upload_comment(view: TaskView, index: int, total: int) -> str:
    suffix = f" ({index}/{total})" if total > 1 else ""
    return f"Round {view.round} demo{suffix}"


def upload_failed_reply(round_: int, error: str) -> Payload:
    text = f"⚠️ Could not copy the round {round_} video into Slack: {escape(error)}. Use the link."
    return {"text": text, "blocks": [_section(text)]}


def decision_reply(decision: Decision) -> Payload:
    line = _decision_line(decision)
    text = {
        "AGREE": f"Round {decision.round} approved",
        "REJECT": f"Round {decision.round} rejected",
        None: f"Round {decision.round} decided outside Slack",
    }[decision.operate]
    if decision.request_id:
        line += f"\n_RequestID {escape(decision.request_id)}_"
    return {"text": text, "blocks": [_section(line)]}


def ending_reply(view: TaskView) -> Payload:
    if view.phase == Phase.SUCCEEDED:
        body = "🎉 Complete." + (f"\n{_assets(view)}" if view.assets else "")
        return {"text": f"{view.task_id} complete", "blocks": [_section(body)]}
    body = f"❌ Failed: {escape(view.fail_message or 'no reason given')}"
    return {"text": f"{view.task_id} failed", "blocks": [_section(body)]}


def error_text(user: str, action: str, code: int | None, message: str, request_id: str) -> str:
    code_text = "no code" if code is None else f"code {code}"
    return (
        f"⚠️ {who(user)}'s {action} did not reach Tencent: {escape(message)}"
        f" ({code_text}, RequestID {escape(request_id)}). The buttons still work: try again."
    )


def reject_modal(task_id: str, round_: int, title: str | None) -> Payload:
    name = escape(title) if title else f"Task {escape(task_id)}"
    return {
        "type": "modal",
        "callback_id": REJECT_VIEW,
        "private_metadata": button_value(task_id, round_),
        "title": {"type": "plain_text", "text": "Reject demo"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(f"*{name}*, round {round_}\nThe task goes back for another round."),
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


def unknown_task_notice(task_id: str, tracked_by: str, error: str) -> Payload:
    text = (
        f"⚠️ Tencent IVH does not know task `{escape(task_id)}` (tracked by {who(tracked_by)}):"
        f" {escape(error)}. I stopped watching it; check the id and track it again."
    )
    return {"text": f"IVH does not know task {task_id}", "blocks": [_section(text)]}


def help_text() -> str:
    return (
        "*/ivh track <TaskId> [#channel] [title]* — watch a task; its demo comes here.\n"
        "*/ivh status <TaskId>* — where a task stands.\n"
        "*/ivh help* — this help."
    )


def status_text(view: TaskView, permalink: str | None) -> str:
    line = f"*{_name(view)}* `{escape(view.task_id)}`: {fallback_text(view)}"
    if permalink:
        line += f"\n{_link(permalink, 'Open the thread')}"
    return line
