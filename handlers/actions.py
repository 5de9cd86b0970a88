"""Button clicks: Approve (with its confirm dialog), Reject (opens the reason modal), links."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import messages
from bot.decisions import Decider
from bot.store import Store
from handlers.guard import guarded
from handlers.untrusted import user_of

log = logging.getLogger(__name__)

QUICK_CHECK = 1.0  # seconds the Reject click may spend checking before the modal must open


def ephemeral(respond: AsyncRespond) -> Any:
    async def notify(text: str) -> None:
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)
        except ValueError as error:  # no response_url in the payload
            log.warning("cannot answer the click: %s", error)

    return notify


def _button(action: dict[str, Any]) -> tuple[str, int] | None:
    try:
        return messages.parse_button_value(str(action.get("value", "")))
    except (ValueError, KeyError, TypeError):
        return None


def register(app: AsyncApp, *, store: Store, decider: Decider) -> None:
    @app.action(messages.APPROVE)
    @guarded
    async def approve(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond
    ) -> None:
        await ack()
        target, user = _button(action), user_of(body)
        if target is None or user is None:
            await ephemeral(respond)("That button is not valid any more.")
            return
        task_id, round_ = target
        await decider.decide(task_id, round_, user, "AGREE", ephemeral(respond))

    @app.action(messages.REJECT)
    @guarded
    async def reject(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        target, user = _button(action), user_of(body)
        trigger = body.get("trigger_id")
        if target is None or user is None or not isinstance(trigger, str):
            await ephemeral(respond)("That button is not valid any more.")
            return
        task_id, round_ = target
        try:
            refusal = await asyncio.wait_for(
                decider.refusal(task_id, round_, user), timeout=QUICK_CHECK
            )
        except TimeoutError:
            refusal = None  # the modal's submission checks again
        if refusal:
            await ephemeral(respond)(refusal)
            return
        record = await store.get(task_id)
        title = record.title if record else None
        try:
            await client.views_open(
                trigger_id=trigger, view=messages.reject_modal(task_id, round_, title)
            )
        except SlackApiError as error:
            log.warning("reject modal for %s not opened: %s", task_id, error.response.get("error"))
            await ephemeral(respond)("Slack did not open the form in time; click Reject again.")

    @app.action(messages.WATCH)
    @guarded
    async def watch(ack: AsyncAck) -> None:
        await ack()  # a link button still sends a request that must be acknowledged
