"""Events API: keep the approver group's cached members fresh."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.approvers import Approvers


def register(app: AsyncApp, *, approvers: Approvers) -> None:
    @app.event("subteam_members_changed")
    async def members_changed(event: dict[str, Any]) -> None:
        approvers.forget(str(event.get("subteam_id", "")))
