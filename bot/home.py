"""The App Home: published when a user opens it, and again for recent viewers when what it
shows changes (a round starts or stops waiting, is decided, gets an approval; a thread is
posted or lost; who may decide changes).

Every change bumps a counter in Redis, in the same step as the change. One replica at a time
refreshes (a lock), at most once every `every` seconds (the lock outlives the refresh by that
much): changes that come in a burst make one refresh, and views.publish (Tier 4, about 100 a
minute) is not flooded. A replica that dies mid-refresh leaves the counter ahead of the value
refreshed, so the next holder of the lock does it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.exceptions import LockError, RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.aio import stop_if_cancelled
from bot.approvers import Approvers
from bot.home_tab import WAITING_SHOWN, Viewer, home_view, unavailable_view
from bot.messages import clip, slack_date
from bot.model import Decided, Waiting
from bot.slack import slack_error
from bot.store import RECENT_MAX, Store

log = logging.getLogger(__name__)

REFRESH_EVERY = 30.0  # seconds: at most one refresh of the viewers' Homes this often
VIEWERS_FOR = 12 * 3600.0  # who opened the Home within this long is refreshed on a change
VIEWERS_MAX = 25  # the most recent of them: a refresh is one views.publish each
NOTICE_TTL = 600.0  # an answer to a click stays at the top of the Home this long
CHECK_TIME = 2.0  # seconds the approver check may take (it may ask Slack for the group)
LOCK = "home-refresh"
LOCK_TTL = 120.0  # renewed after each viewer: longer than one publish may take
PUBLISH_TIME = 60.0  # one views.publish, its retries after 429s included
NOTICE_MAX = 1000
READ = WAITING_SHOWN * 3  # rounds read: a viewer's own approvals are left out of the queue
NOT_CHECKED = "Slack did not say in time who may decide; open this tab again in a minute."


@dataclass(frozen=True)
class Shown:
    """What every viewer's Home is built from, read once per refresh."""

    waiting: list[Waiting]
    more: int  # rounds waiting beyond `waiting`
    recent: list[Decided]


class Home:
    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        approvers: Approvers,
        *,
        required_approvals: int = 1,
        prevent_self_approval: bool = False,
        every: float = REFRESH_EVERY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._client = client
        self._approvers = approvers
        self._required = required_approvals
        self._prevent_self_approval = prevent_self_approval
        self.every = every
        self._clock = clock

    async def opened(self, user: str) -> None:
        """`user` opened the Home tab: remember them as a viewer and show it fresh."""
        await self._store.home_opened(user, self._clock())
        await self.publish(user)

    async def changed(self) -> None:
        """Something every Home shows changed outside the store's own steps (who may decide)."""
        await self._store.home_changed()

    async def tell(self, user: str, text: str) -> None:
        """Answer a click made on the Home (it has no response_url): at the Home's top, for
        NOTICE_TTL, saying when. With Redis down, the answer is still published, alone."""
        now = self._clock()
        told = f"{clip(text, NOTICE_MAX)}\n_Answer to your click, {slack_date(now)}_"
        try:
            await self._store.set_home_notice(user, told, NOTICE_TTL)
            await self.publish(user)
        except RedisError as error:
            log.warning("App Home of %s: Redis unavailable (%s); the answer alone", user, error)
            await self._send(user, unavailable_view(told, now))

    async def handled(self, user: str) -> None:
        """A click on the Home was handled with nothing to say: the last answer there, if any,
        is old news; show the Home as it is now."""
        await self._store.clear_home_notice(user)
        await self.publish(user)

    async def publish(self, user: str, shown: Shown | None = None) -> bool:
        """Publish `user`'s Home; False when Slack refused or could not be reached, or (in a
        refresh, `shown` given) when it is left as it was: who may decide could not be told."""
        refresh = shown is not None
        shown = shown or await self._read()
        viewer = await self._viewer(user)
        if refresh and viewer.refusal == NOT_CHECKED:
            return False  # keep the buttons an approver has rather than hide them for a hiccup
        notice = await self._store.home_notice(user)
        view = home_view(
            viewer, shown.waiting, shown.recent, self._clock(), more=shown.more, notice=notice
        )
        if not await self._send(user, view):
            return False
        if refresh and await self._store.home_notice(user) != notice:
            # A click was answered (or handled) while this was on its way: that answer must
            # not be overwritten by a view built before it.
            return await self.publish(user)
        return True

    async def _send(self, user: str, view: dict[str, Any]) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIME):
                await self._client.views_publish(user_id=user, view=view)
        except SlackApiError as error:
            log.warning("App Home of %s not published: %s", user, slack_error(error))
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("App Home of %s not published: Slack unreachable (%r)", user, error)
            return False
        return True

    async def _read(self) -> Shown:
        waiting = [
            item._replace(view=item.view.model_copy(update={"required_approvals": self._required}))
            for item in await self._store.waiting(READ)
        ]
        more = max(0, await self._store.waiting_count() - READ)  # the rounds not read
        return Shown(waiting, more, await self._store.recent_decisions(RECENT_MAX))

    async def _viewer(self, user: str) -> Viewer:
        try:
            async with asyncio.timeout(CHECK_TIME):
                allowed = await self._approvers.allows(user)
        except TimeoutError:
            return Viewer(user, NOT_CHECKED)
        refusal = None if allowed else f"Only approvers can decide ({self._approvers.describe()})."
        return Viewer(user, refusal, self._prevent_self_approval)

    async def refresh_once(self) -> int:
        """Republish the recent viewers' Homes if something changed since the last refresh,
        unless another replica does (or did, less than `every` ago); how many were published."""
        changed, refreshed = await self._store.home_changes()
        if changed <= refreshed:
            return 0
        lock = await self._store.lock(LOCK, LOCK_TTL)
        if lock is None:
            return 0
        count = 0
        try:
            changed, refreshed = await self._store.home_changes()  # as of holding the lock
            if changed <= refreshed:
                await self._store.unlock(lock)
                return 0
            shown = await self._read()
            for user in await self._store.home_viewers(self._clock() - VIEWERS_FOR, VIEWERS_MAX):
                count += await self.publish(user, shown)
                await lock.reacquire()  # LOCK_TTL again: a slow Slack keeps it ours
            await self._store.home_refreshed(changed)
        except BaseException:
            await self._store.unlock(lock)
            raise
        # Held `every` seconds more: no replica refreshes again before then.
        with contextlib.suppress(LockError):  # it expired meanwhile: the next refresh may come
            await lock.extend(self.every, replace_ttl=True)
        return count

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                published = await self.refresh_once()
                if published:
                    log.info("App Home refreshed for %d viewers", published)
            except RedisError as error:
                log.warning("App Home refresh: Redis unavailable (%s); retrying", error)
            except Exception:
                log.exception("App Home refresh: unexpected error; retrying")
            await asyncio.sleep(min(self.every, 5.0))


class HomeAnswer:
    """Answers to a click on the App Home, shown at its top; and the clicker's Home shown
    afresh once the click is handled, whether or not there was anything to say."""

    def __init__(self, home: Home, user: str) -> None:
        self._home, self._user, self._told = home, user, False

    async def notify(self, text: str) -> None:
        self._told = True
        await self._home.tell(self._user, text)

    async def after(self, work: Awaitable[None]) -> None:
        """Run the click's work; then, unless it said something (or failed: the handoff says
        so through `notify`), show the Home as the click left it."""
        await work
        if not self._told:
            await self._home.handled(self._user)
