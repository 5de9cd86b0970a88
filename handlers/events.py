"""Events API: keep the approver group's cached members fresh; show the App Home when opened."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.approvers import Approvers
from bot.decisions import Notify
from bot.home import Home
from handlers.handoff import Handoff
from handlers.untrusted import user_of

log = logging.getLogger(__name__)


def register(app: AsyncApp, *, approvers: Approvers, home: Home, handoff: Handoff) -> None:
    @app.event("subteam_members_changed")
    async def members_changed(event: dict[str, Any]) -> None:
        approvers.forget(str(event.get("subteam_id", "")))
        # Who may decide changed: the Homes' buttons follow (read-only or not).
        handoff.start("home: approvers changed", home.changed(), _nobody("approvers changed"))

    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        # Also sent for the Messages tab, where the requester's DMs are: nothing to publish.
        user = user_of(event)
        if event.get("tab") != "home" or user is None:
            return

        # After the ack (bolt acks an event when its listener returns): Slack sends an event
        # again when its ack takes more than 3 seconds.
        handoff.start(f"home {user}", home.opened(user), _nobody(f"App Home of {user}"))


def _nobody(what: str) -> Notify:
    """An event has nobody to answer: what would be said is logged."""

    async def log_it(text: str) -> None:
        log.warning("%s: %s", what, text)

    return log_it
