"""Button clicks: Approve (with its confirm dialog), Reject (opens the reason modal), links."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import messages
from bot.decisions import Decider, Notify
from bot.home import Home, HomeAnswer
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


def from_home(body: dict[str, Any]) -> bool:
    """Whether the click was made on the App Home (a view with no response_url)."""
    container, view = body.get("container"), body.get("view")
    return (
        isinstance(container, dict)
        and container.get("type") == "view"
        and isinstance(view, dict)
        and view.get("type") == "home"
    )


def _button(action: dict[str, Any]) -> tuple[str, int] | None:
    try:
        return messages.parse_button_value(str(action.get("value", "")))
    except (ValueError, KeyError, TypeError):
        return None


async def _as_is(work: Awaitable[None]) -> None:
    await work


@dataclass(frozen=True)
class Answer:
    """How a click is answered: `notify` tells the clicker; `after` wraps the work done for
    the click; `origin` ("channel" or "home") goes with the Reject form."""

    notify: Notify
    after: Callable[[Awaitable[None]], Awaitable[None]]
    origin: str


@dataclass(frozen=True)
class Click:
    """A decision button's click, as far as its payload can be trusted."""

    task_id: str
    round: int
    user: str
    notify: Notify


def _clicked(
    name: str,
    body: dict[str, Any],
    action: dict[str, Any],
    notify: Notify,
    handoff: Handoff,
    *,
    valid: bool = True,
) -> Click | None:
    """The click, or None when its payload is not a valid button's (the user is told so)."""
    target, user = _button(action), user_of(body)
    if target is None or user is None or not valid:
        handoff.start(name, notify("That button is not valid any more."), notify)
        return None
    return Click(target[0], target[1], user, notify)


def register(
    app: AsyncApp, *, store: Store, decider: Decider, handoff: Handoff, home: Home
) -> None:
    def answers(body: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient) -> Answer:
        user = user_of(body)
        if from_home(body) and user is not None:
            answer = HomeAnswer(home, user)
            return Answer(answer.notify, answer.after, "home")
        return Answer(ephemeral(respond, client), _as_is, "channel")

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
        answer = answers(body, respond, client)
        click = _clicked("approve", body, action, answer.notify, handoff)
        if click is not None:
            decision = decider.decide(click.task_id, click.round, click.user, "AGREE", click.notify)
            handoff.start(f"approve {click.task_id}", answer.after(decision), click.notify)

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
        trigger = body.get("trigger_id")
        answer = answers(body, respond, client)
        notify = answer.notify
        click = _clicked("reject", body, action, notify, handoff, valid=isinstance(trigger, str))
        if click is None or not isinstance(trigger, str):
            return
        task_id, round_, user = click.task_id, click.round, click.user

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
                form = messages.reject_modal(
                    task_id, round_, title, decider.reject_categories, origin=answer.origin
                )
                await client.views_open(trigger_id=trigger, view=form)
            except SlackApiError as error:
                error_code = error.response.get("error")
                log.warning("reject modal for %s not opened: %s", task_id, error_code)
                await notify("Slack did not open the form in time; click Reject again.")

        handoff.start(f"reject {task_id}", open_form(user, trigger), notify)

    @app.action(messages.WATCH)
    @guarded
    async def watch(ack: AsyncAck) -> None:
        await ack()  # a link button still sends a request that must be acknowledged
