"""Who may decide: the APPROVERS list and members of APPROVER_GROUP (cached briefly)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)


class Approvers:
    def __init__(
        self,
        users: list[str],
        group: str | None,
        client: AsyncWebClient,
        *,
        ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = frozenset(users)
        self._group = group
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._members: frozenset[str] = frozenset()
        self._fetched_at: float | None = None

    @property
    def anyone(self) -> bool:
        return not self._users and self._group is None

    def describe(self) -> str:
        parts = [f"<@{user}>" for user in sorted(self._users)]
        if self._group:
            parts.append(f"<!subteam^{self._group}>")
        return ", ".join(parts) or "anyone"

    def forget(self, group: str) -> None:
        """Slack said the group's members changed: read them again on the next decision."""
        if group == self._group:
            self._fetched_at = None

    async def allows(self, user: str) -> bool:
        if self.anyone or user in self._users:
            return True
        if self._group is None:
            return False
        return user in await self._group_members(self._group)

    async def _group_members(self, group: str) -> frozenset[str]:
        now = self._clock()
        if self._fetched_at is not None and now - self._fetched_at < self._ttl:
            return self._members
        try:
            answer = await self._client.usergroups_users_list(usergroup=group)
        except SlackApiError as error:
            # Fail closed, but keep a recent list rather than lock everyone out at once.
            log.error("cannot read approver group %s: %s", group, error.response.get("error"))
            if self._fetched_at is not None and now - self._fetched_at < 10 * self._ttl:
                return self._members
            return frozenset()
        self._members = frozenset(answer.get("users") or [])
        self._fetched_at = now
        return self._members
