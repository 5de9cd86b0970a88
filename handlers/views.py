"""The Reject modal's submission: validate the reason inline, then decide."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import messages
from bot.decisions import Decider, clean_reason, reason_problem
from bot.store import Store
from handlers.guard import guarded
from handlers.handoff import Handoff
from handlers.untrusted import text_of, user_of

log = logging.getLogger(__name__)

CHECK_BUDGET = 2.0  # Slack closes the modal with an error after 3 s


def register(app: AsyncApp, *, store: Store, decider: Decider, handoff: Handoff) -> None:
    @app.view(messages.REJECT_VIEW)
    @guarded
    async def reject_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        user = user_of(body)
        try:
            if user is None:
                raise ValueError("no user")
            field = view["state"]["values"][messages.REASON_BLOCK][messages.REASON_INPUT]
            raw = text_of(field.get("value"))
            task_id, round_ = messages.parse_button_value(text_of(view["private_metadata"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            await ack(
                response_action="errors",
                errors={messages.REASON_BLOCK: "This form is no longer valid; close it."},
            )
            return
        problem = reason_problem(raw)
        if problem is None:
            try:
                problem = await asyncio.wait_for(
                    decider.refusal(task_id, round_, user), timeout=CHECK_BUDGET
                )
            except TimeoutError:
                problem = None  # decide() checks again after the ack
        if problem:
            await ack(response_action="errors", errors={messages.REASON_BLOCK: problem})
            return
        await ack()

        async def notify(text: str) -> None:
            record = await store.get(task_id)
            if record is None or not record.slack_channel:
                return
            try:
                await client.chat_postEphemeral(channel=record.slack_channel, user=user, text=text)
            except SlackApiError as error:
                log.warning("ephemeral to %s failed: %s", user, error.response.get("error"))

        decision = decider.decide(task_id, round_, user, "REJECT", notify, reason=clean_reason(raw))
        handoff.start(f"reject {task_id}", decision, notify)
