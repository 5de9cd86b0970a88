"""The `/ivh` slash command: track, status, help. Answers are ephemeral and immediate."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from slack_bolt.async_app import AsyncAck, AsyncApp

from bot import audit, messages
from bot.approvers import Approvers
from bot.intake import TrackRequest, describe_errors, track_task
from bot.store import Store
from handlers.guard import guarded
from handlers.untrusted import text_of, user_of

# With should_escape on, Slack sends a channel picked from its list as <#C0123|name>; one
# typed and not picked arrives as plain #name, which is refused: a name is not an id.
_CHANNEL = re.compile(r"<#(?P<id>[A-Z0-9]+)(?:\|[^>]*)?>|#(?P<name>[A-Za-z0-9_.-]+)")


def parse_track(args: list[str], here: str) -> tuple[str, str, str | None]:
    """`<TaskId> [#channel] [title...]` → (task id, channel, title)."""
    task_id, rest = args[0], args[1:]
    channel = here
    if rest and (found := _CHANNEL.fullmatch(rest[0])):
        channel = found["id"] or f"#{found['name']}"
        rest = rest[1:]
    return task_id, channel, " ".join(rest) or None


def register(
    app: AsyncApp, *, store: Store, on_track: Callable[[], None], approvers: Approvers
) -> None:
    @app.command("/ivh")
    @guarded
    async def ivh(ack: AsyncAck, command: dict[str, Any]) -> None:
        words = text_of(command.get("text")).split()
        verb = words[0].lower() if words else "help"
        if verb == "track" and len(words) >= 2 and user_of(command, "user_id") is None:
            await ack(text="Not tracked: Slack did not say who you are.")
        elif verb == "track" and len(words) >= 2:
            await ack(text=await _track(store, on_track, words[1:], command))
        elif verb == "status" and len(words) == 2:
            await ack(text=await _status(store, words[1]))
        elif verb == "pending" and len(words) == 1:
            user = user_of(command, "user_id") or ""
            await ack(text=await _pending(store, approvers, user))
        elif verb == "history" and len(words) == 2:
            await ack(text=await _history(store, words[1]))
        elif verb == "stats" and len(words) <= 2:
            await ack(text=await _stats(store, words[1] if len(words) == 2 else ""))
        else:
            await ack(text=messages.help_text())


async def _track(
    store: Store, on_track: Callable[[], None], args: list[str], command: dict[str, Any]
) -> str:
    here = text_of(command.get("channel_id"))
    task_id, channel, title = parse_track(args, here)
    if channel.startswith("#") and channel[1:] == text_of(command.get("channel_name")) and here:
        channel = here  # this channel, named: Slack told us its id with the command
    if channel.startswith("#"):
        return (
            f"Not tracked: {channel} reached the bot as plain text, not as a channel. Type `#`,"
            " pick the channel from the list Slack offers (it becomes a link), and send the"
            " command again; or leave the channel out to use this one."
        )
    try:
        request = TrackRequest(task_id=task_id, channel=channel, title=title)
    except ValidationError as error:
        return f"Not tracked: {messages.escape(describe_errors(error))}"
    user = user_of(command, "user_id") or "someone"
    record, started = await track_task(store, request, tracked_by=user)
    if started:
        on_track()
        where = record.channel or channel
        shown = f"<#{where}>" if not where.startswith("#") else where
        return f"Tracking `{messages.escape(task_id)}`; its demo will be posted in {shown}."
    return f"`{messages.escape(task_id)}` is already tracked (state: {record.state.value})."


async def _status(store: Store, task_id: str) -> str:
    loaded = await store.view(task_id)
    if loaded is None:
        shown = messages.clip(messages.escape(task_id), 200)
        return f"`{shown}` is not tracked. Try `/ivh track {shown}`."
    record, view = loaded
    if record.error:
        warning = messages.clip(messages.escape(record.error), 1000)
        return messages.status_text(view, record.slack_permalink) + f"\n⚠️ {warning}"
    return messages.status_text(view, record.slack_permalink)


QUICK = 1.0  # seconds the approver check may take within the ack
PENDING_SHOWN = 25  # rounds read for /ivh pending (in one round trip), within the ack


async def _pending(store: Store, approvers: Approvers, user: str) -> str:
    waiting = await store.waiting(PENDING_SHOWN)
    refusal = None
    try:
        async with asyncio.timeout(QUICK):  # the member list may be read from Slack
            allowed = await approvers.allows(user)
    except TimeoutError:
        allowed = False
    if not allowed:
        refusal = f"Only approvers can decide ({approvers.describe()})."
    return messages.pending_text(waiting, time.time(), refusal)


async def _history(store: Store, task_id: str) -> str:
    loaded = await store.view(task_id)
    if loaded is None:
        shown = messages.clip(messages.escape(task_id), 200)
        return f"`{shown}` is not tracked. Try `/ivh track {shown}`."
    demos = await store.all_demos(task_id)
    return messages.history_text(loaded.view, demos, await store.history(task_id))


STATS_DAYS = 30
STATS_TIME = 2.0  # seconds the answer may take: it is the ack, within Slack's three


async def _stats(store: Store, days_text: str) -> str:
    """`/ivh stats [DAYS]`: decisions of the last DAYS (30), from the audit trail."""
    days = int(days_text) if days_text.isdigit() else STATS_DAYS
    if not 1 <= days <= 3650:
        return "Say how many days, from 1 to 3650: `/ivh stats 30`."
    since = time.time() - days * 86400
    try:
        async with asyncio.timeout(STATS_TIME):
            entries = [entry async for entry in store.audit(since=since)]
    except TimeoutError:
        return f"The last {days} days are too many to count in time; try fewer."
    return audit.stats_text(audit.stats(entries, days))
