"""Events API: keep the approver group's cached members fresh; show the App Home when opened."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.approvers import Approvers
from bot.home import Home
from handlers.handoff import Handoff
from handlers.untrusted import user_of

log = logging.getLogger(__name__)


def register(app: AsyncApp, *, approvers: Approvers, home: Home, handoff: Handoff) -> None:
    @app.event("subteam_members_changed")
    async def members_changed(event: dict[str, Any]) -> None:
        approvers.forget(str(event.get("subteam_id", "")))

    @app.event("app_home_opened")
    async def home_opened(event: dict[str, Any]) -> None:
        # Also sent for the Messages tab, where the requester's DMs are: nothing to publish.
        user = user_of(event)
        if event.get("tab") != "home" or user is None:
            return

        async def nobody(text: str) -> None:  # an event has nobody to answer: logged only
            log.warning("App Home of %s: %s", user, text)

        # After the ack (bolt acks an event when its listener returns): Slack sends an event
        # again when its ack takes more than 3 seconds.
        handoff.start(f"home {user}", home.opened(user), nobody)
