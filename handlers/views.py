"""The Reject modal's submission: validate the reason inline, then decide."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import messages
from bot.decisions import Decider, RejectForm
from bot.home import Home, HomeAnswer
from bot.store import Store
from handlers.guard import guarded
from handlers.handoff import Handoff
from handlers.untrusted import text_of, user_of

log = logging.getLogger(__name__)

CHECK_BUDGET = 2.0  # Slack closes the modal with an error after 3 s


def _form(values: dict[str, Any]) -> RejectForm:
    """The submitted form's fields. A form without the category block was opened before
    categories existed (a rolling upgrade): its reason goes to Tencent as it was typed."""
    reason = text_of(values[messages.REASON_BLOCK][messages.REASON_INPUT].get("value"))
    category: str | None = None
    if messages.CATEGORY_BLOCK in values:
        picked = values[messages.CATEGORY_BLOCK][messages.CATEGORY_INPUT].get("selected_option")
        category = text_of(picked.get("value")) if isinstance(picked, dict) else ""
    timecode = values.get(messages.TIMECODE_BLOCK, {}).get(messages.TIMECODE_INPUT, {})
    return RejectForm(category, text_of(timecode.get("value")), reason)


def register(
    app: AsyncApp, *, store: Store, decider: Decider, handoff: Handoff, home: Home
) -> None:
    @app.view(messages.REJECT_VIEW)
    @guarded
    async def reject_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient
    ) -> None:
        user = user_of(body)
        try:
            if user is None:
                raise ValueError("no user")
            form = _form(view["state"]["values"])
            task_id, round_ = messages.parse_button_value(text_of(view["private_metadata"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            await ack(
                response_action="errors",
                errors={messages.REASON_BLOCK: "This form is no longer valid; close it."},
            )
            return
        problems = form.problems(decider.reject_categories)
        if not problems:
            try:
                refusal = await asyncio.wait_for(
                    decider.refusal(task_id, round_, user), timeout=CHECK_BUDGET
                )
            except TimeoutError:
                refusal = None  # decide() checks again after the ack
            if refusal:
                problems[messages.REASON_BLOCK] = refusal
        if problems:
            await ack(response_action="errors", errors=problems)
            return
        await ack()

        async def in_channel(text: str) -> None:
            record = await store.get(task_id)
            if record is None or not record.slack_channel:
                return
            try:
                await client.chat_postEphemeral(channel=record.slack_channel, user=user, text=text)
            except SlackApiError as error:
                log.warning("ephemeral to %s failed: %s", user, error.response.get("error"))

        # A form opened from the App Home is answered there: the user is not in the channel.
        answer = None
        if messages.form_origin(text_of(view["private_metadata"])) == "home":
            answer = HomeAnswer(home, user)
        notify = answer.notify if answer is not None else in_channel
        decision = decider.decide(
            task_id, round_, user, "REJECT", notify, reason=form.text, category=form.category
        )
        work = answer.after(decision) if answer is not None else decision
        handoff.start(f"reject {task_id}", work, notify)
