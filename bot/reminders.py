"""Reminders and escalation: a round nobody decides is brought up in its thread.

After REMIND_AFTER a thread reply mentions the approvers, again every REMIND_EVERY; after
ESCALATE_AFTER one reply, broadcast to the channel, mentions ESCALATE_TO. QUIET_HOURS (in
REMIND_TZ) defer both. Each is sent by one replica only: the store hands a due round to one
taker and moves it on in the same step; a round decided (or gone) is dropped, never nudged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError

from bot import messages
from bot.aio import stop_if_cancelled
from bot.model import Phase, QuietHours
from bot.slack import Thread, slack_error
from bot.store import ESCALATIONS, REMINDERS, Store

log = logging.getLogger(__name__)

TICK = 5.0  # seconds between looks at what is due
RETRY = 300.0  # an escalation that could not be sent is tried again this much later


@dataclass(frozen=True)
class Policy:
    remind_after: float  # 0: no reminders
    remind_every: float
    escalate_after: float | None
    escalate_to: str  # mentions, built from ESCALATE_TO
    quiet: QuietHours | None


def mentions(ids: list[str]) -> str:
    """Slack mentions of user ids (U…, W…) and user group ids (S…)."""
    return ", ".join(f"<!subteam^{i}>" if i.startswith("S") else f"<@{i}>" for i in ids)


class Reminders:
    def __init__(
        self,
        store: Store,
        thread: Thread,
        policy: Policy,
        approvers: Callable[[], str],
        *,
        clock: Callable[[], float] = time.time,
        sent: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._thread = thread
        self._policy = policy
        self._approvers = approvers  # who to mention in a reminder (or "anyone")
        self._clock = clock
        self._sent = sent  # told "reminder" or "escalation" for each one sent

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                await self.run_once(self._clock())
            except RedisError as error:
                log.warning("reminders: Redis unavailable (%s); retrying", error)
            except Exception:
                # A reminder is never worth the process: log it and look again later.
                log.exception("reminders: unexpected error; retrying in %.0f s", TICK)
            await asyncio.sleep(TICK)

    async def run_once(self, now: float) -> int:
        """Send what is due at `now`; returns how many went out."""
        policy, count = self._policy, 0
        if policy.remind_after > 0:
            upto = now - policy.remind_after
            then = now + policy.remind_every - policy.remind_after
            for task_id, round_ in await self._store.take_waiting(REMINDERS, upto, then):
                # Not sent now: it was moved on already, and comes up again at the next time.
                count += await self._nudge(REMINDERS, task_id, round_, now, escalation=False) or 0
        if policy.escalate_after is not None and policy.escalate_to:
            upto = now - policy.escalate_after
            for task_id, round_ in await self._store.take_waiting(ESCALATIONS, upto, None):
                sent = await self._nudge(ESCALATIONS, task_id, round_, now, escalation=True)
                if sent is None:  # not sent, and it was taken out: try again a little later
                    retry = now + RETRY - policy.escalate_after
                    await self._store.set_waiting(ESCALATIONS, task_id, round_, retry)
                count += sent or 0
        return count

    async def _nudge(
        self, key: str, task_id: str, round_: int, now: float, *, escalation: bool
    ) -> int | None:
        """1 when sent, 0 when nothing is due any more (or deferred), None when it could not
        be sent now (Slack failed, or no message yet)."""
        loaded = await self._store.view(task_id)
        if loaded is None or loaded.view.round != round_ or loaded.view.phase != Phase.PENDING:
            await self._store.set_waiting(key, task_id, round_, None)  # decided or gone
            return 0
        policy = self._policy
        if policy.quiet is not None and policy.quiet.quiet_at(now):
            after = policy.escalate_after if escalation else policy.remind_after
            assert after is not None
            # Due again when the quiet hours end (an escalation was taken out: put back).
            score = policy.quiet.ends_after(now) - after
            await self._store.set_waiting(key, task_id, round_, score)
            return 0
        record = loaded.record
        if not record.slack_ts:
            return None  # no message yet
        ready = await self._store.ready_at(task_id, round_)
        waited = now - ready if ready else policy.remind_after
        mention = policy.escalate_to if escalation else self._mention()
        payload = messages.reminder_reply(loaded.view, waited, mention, escalation=escalation)
        try:
            await self._thread.reply(record, payload, broadcast=escalation)
        except SlackApiError as error:
            log.warning(
                "task %s round %d: reminder not sent: %s", task_id, round_, slack_error(error)
            )
            return None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("task %s round %d: Slack unreachable (%r)", task_id, round_, error)
            return None
        kind = "escalation" if escalation else "reminder"
        log.info("task %s round %d: %s sent", task_id, round_, kind)
        if self._sent is not None:
            self._sent(kind)
        return 1

    def _mention(self) -> str:
        who = self._approvers()
        return "Anyone here may decide" if who == "anyone" else who
