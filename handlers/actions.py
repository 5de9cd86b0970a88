"""Button clicks: Approve (with its confirm dialog), Reject (opens the reason modal), links."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import messages
from bot.decisions import Decider, Notify
from bot.store import Store
from handlers.guard import guarded
from handlers.handoff import Handoff
from handlers.untrusted import user_of

log = logging.getLogger(__name__)

QUICK_CHECK = 1.0  # seconds the Reject click may spend checking before the modal must open


def ephemeral(respond: AsyncRespond, client: AsyncWebClient) -> Notify:
    """Answer only the clicking user, through the click's response_url.

    Sent on the Web API client's keep-alive session: bolt's `respond` opens a new connection
    for every answer."""

    async def notify(text: str) -> None:
        if respond.response_url is None:
            log.warning("cannot answer the click: no response_url in the payload")
            return
        webhook = AsyncWebhookClient(respond.response_url, session=client.session)
        await webhook.send_dict(
            {"text": text, "response_type": "ephemeral", "replace_original": False}
        )

    return notify


def _button(action: dict[str, Any]) -> tuple[str, int] | None:
    try:
        return messages.parse_button_value(str(action.get("value", "")))
    except (ValueError, KeyError, TypeError):
        return None


def register(app: AsyncApp, *, store: Store, decider: Decider, handoff: Handoff) -> None:
    @app.action(messages.APPROVE)
    @guarded
    async def approve(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        notify = ephemeral(respond, client)
        target, user = _button(action), user_of(body)
        if target is None or user is None:
            handoff.start("approve", notify("That button is not valid any more."), notify)
            return
        task_id, round_ = target
        decision = decider.decide(task_id, round_, user, "AGREE", notify)
        handoff.start(f"approve {task_id}", decision, notify)

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
        notify = ephemeral(respond, client)
        target, user = _button(action), user_of(body)
        trigger = body.get("trigger_id")
        if target is None or user is None or not isinstance(trigger, str):
            handoff.start("reject", notify("That button is not valid any more."), notify)
            return
        task_id, round_ = target

        async def open_form(user: str, trigger: str) -> None:
            try:
                refusal = await asyncio.wait_for(
                    decider.refusal(task_id, round_, user), timeout=QUICK_CHECK
                )
            except TimeoutError:
                refusal = None  # the modal's submission checks again
            if refusal:
                await notify(refusal)
                return
            record = await store.get(task_id)
            title = record.title if record else None
            try:
                await client.views_open(
                    trigger_id=trigger, view=messages.reject_modal(task_id, round_, title)
                )
            except SlackApiError as error:
                error_code = error.response.get("error")
                log.warning("reject modal for %s not opened: %s", task_id, error_code)
                await notify("Slack did not open the form in time; click Reject again.")

        handoff.start(f"reject {task_id}", open_form(user, trigger), notify)

    @app.action(messages.WATCH)
    @guarded
    async def watch(ack: AsyncAck) -> None:
        await ack()  # a link button still sends a request that must be acknowledged
