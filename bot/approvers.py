"""Who may decide: the APPROVERS list and members of APPROVER_GROUP (cached briefly)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0  # how long a list read from Slack is used before it is read again
# While Slack cannot be asked, the last list read stays in use this long after it was read;
# then nobody is let in by the group until Slack answers. Small: a member removed from the
# group keeps deciding that long.
STALE_SECONDS = 300.0


class Approvers:
    def __init__(
        self,
        users: list[str],
        group: str | None,
        client: AsyncWebClient,
        *,
        ttl: float = CACHE_SECONDS,
        stale_for: float = STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = frozenset(users)
        self._group = group
        self._client = client
        self._ttl = ttl
        self._stale_for = max(stale_for, ttl)
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
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as error:
            return self._stale(group, now, error)
        self._members = frozenset(answer.get("users") or [])
        self._fetched_at = now
        return self._members

    def _stale(self, group: str, now: float, error: Exception) -> frozenset[str]:
        """Fail closed, but keep a recent list rather than lock everyone out at once."""
        reason = (
            error.response.get("error")
            if isinstance(error, SlackApiError)
            else type(error).__name__
        )
        age = None if self._fetched_at is None else now - self._fetched_at
        if age is not None and age < self._stale_for:
            log.error(
                "cannot read approver group %s (%s); using its members as read %d s ago"
                " (for up to %d s)",
                group,
                reason,
                age,
                self._stale_for,
            )
            return self._members
        log.error(
            "cannot read approver group %s (%s); nobody may decide as its member until Slack"
            " answers",
            group,
            reason,
        )
        return frozenset()
