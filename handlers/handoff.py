"""Work a listener hands off after its ack, so that Slack's answer goes out before it runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from bot.decisions import Notify
from bot.store import StoreUnavailable
from handlers.guard import UNAVAILABLE

log = logging.getLogger(__name__)

FAILED = (
    "⚠️ Something went wrong on the bot's side while handling your click."
    " Check the task's message (or `/ivh status TASK_ID`) before trying again."
)


class Handoff:
    """The tasks started after acks: owned here, so that shutdown can let them finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, name: str, work: Awaitable[None], tell: Notify) -> None:
        """Run `work` in its own task; `tell` says so to the user when Redis fails in it."""
        task = asyncio.create_task(self._guarded(name, work, tell), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def _guarded(self, name: str, work: Awaitable[None], tell: Notify) -> None:
        try:
            await work
        except StoreUnavailable as error:
            log.warning("%s: Redis unavailable: %s", name, error)
            await tell(UNAVAILABLE)
        except Exception:
            # A click is never left without an answer, whatever failed (Slack or IVH
            # unreachable after their retries, a bug).
            log.exception("%s failed", name)
            await tell(FAILED)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: could not tell the user", task.get_name(), exc_info=task.exception())

    async def aclose(self, grace: float = 5.0) -> None:
        """Let work in flight finish for up to `grace` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
