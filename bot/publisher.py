"""The publisher: turns the poller's events into Slack messages, threads and videos."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError

from bot import messages
from bot.aio import stop_if_cancelled
from bot.decisions import decision_from
from bot.events import operate_that_left
from bot.hosts import HostPolicy
from bot.logs import log_context
from bot.model import Claim, Decision, Event, EventType, TaskRecord, TaskView, Upload
from bot.slack import Busy, Thread, slack_error, slack_explanation
from bot.store import Store
from bot.video import VideoError, copy_to_thread

log = logging.getLogger(__name__)

RECLAIM_IDLE_MS = 60_000  # an event unacknowledged this long belongs to a dead publisher
SETTLE_AFTER = 30.0  # a Slack claim this old while the task moved on: its holder died
# How long settling a round waits for a decider still at work on it (recording what Tencent
# took) before leaving the event for later: a recorded decision takes well under a second.
DECIDER_WAIT = 5.0
BLOCK_MS = 2_000
CONCURRENCY = 16  # events handled side by side (of different tasks: a task's go in order)
PER_CHANNEL = 2  # of them in one channel: Slack takes about a post a second there anyway
HELD = 1_000  # events read and claimed at most, most of them waiting for a busy channel
BACKLOG_WARNING = 100  # events of one channel held here: minutes behind Slack's pace
MAX_ATTEMPTS = 20  # an event that failed this often is dropped with an error
# Slack errors that no retry will fix: the event is dropped with an error in the log.
FATAL_SLACK_ERRORS = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "account_inactive"}
)
# A payload Slack refuses is refused again: a bug of ours, told with Slack's explanation.
REFUSED_PAYLOAD_ERRORS = frozenset(
    {"invalid_blocks", "invalid_blocks_format", "msg_too_long", "invalid_arguments"}
)
# A direct message Slack will not deliver to that user, whatever the retry: logged, then skipped
# (the channel's thread still has everything).
UNREACHABLE_USER_ERRORS = frozenset(
    {"channel_not_found", "user_not_found", "user_disabled", "cannot_dm_bot", "is_archived"}
)


class RetryLater(Exception):
    """The event cannot be handled yet; leave it pending so it is reclaimed later."""


class TakenOver(RetryLater):
    """Another publisher reclaimed the event (this one was too slow to renew its claim): it
    finishes the event; this one stops before sharing a video, which would share it twice."""


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ChannelGates:
    """At most `per_channel` events of one channel at work at once. The others wait here,
    outside the publisher's slots, so that a burst in one channel holds up no other."""

    def __init__(self, per_channel: int, warn_at: int = BACKLOG_WARNING) -> None:
        self._per_channel = per_channel
        self._warn_at = warn_at
        self._gates: dict[str, tuple[asyncio.Semaphore, int]] = {}  # channel -> gate, users
        self.waiting = 0

    @property
    def channels(self) -> int:
        """Channels with events at work or waiting (the rest are forgotten)."""
        return len(self._gates)

    @contextlib.asynccontextmanager
    async def hold(self, channel: str | None) -> AsyncIterator[None]:
        if channel is None:
            yield
            return
        gate, users = self._gates.get(channel) or (asyncio.Semaphore(self._per_channel), 0)
        self._gates[channel] = (gate, users + 1)
        if users + 1 == self._warn_at:
            log.warning(
                "channel %s: %d events wait for its turn at Slack's per-channel pace"
                " (SLACK_POSTS_PER_SECOND); they are posted in order, later than usual",
                channel,
                self._warn_at,
            )
        try:
            self.waiting += 1
            try:
                await gate.acquire()
            finally:
                self.waiting -= 1
            try:
                yield
            finally:
                gate.release()
        finally:
            gate, users = self._gates[channel]
            if users == 1:
                del self._gates[channel]
            else:
                self._gates[channel] = (gate, users - 1)


class Publisher:
    """Reads the events stream in a consumer group; each event is handled once, in steps."""

    def __init__(
        self,
        store: Store,
        thread: Thread,
        media: httpx.AsyncClient,
        *,
        video_hosts: HostPolicy,
        video_max_bytes: int,
        video_time_limit: float,
        reclaim_after: float = RECLAIM_IDLE_MS / 1000,
        settle_after: float = SETTLE_AFTER,
        decider_wait: float = DECIDER_WAIT,
        consumer: str | None = None,
        renewal_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._thread = thread
        self._media = media
        self._video_hosts = video_hosts
        self._video_max_bytes = video_max_bytes
        self._video_time_limit = video_time_limit
        self._consumer = consumer or consumer_name()
        self.running = False
        self._gates = ChannelGates(PER_CHANNEL)
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self.reclaim_idle_ms = int(reclaim_after * 1000)
        self.settle_after = settle_after
        self.decider_wait = decider_wait
        # How the claim on an event in hand waits between renewals: tests pass one they step.
        self.renewal_sleep = renewal_sleep

    async def run(self) -> None:
        group_ready = False
        working: dict[str, asyncio.Task[None]] = {}  # entry id -> its handling
        latest: dict[str, asyncio.Task[None]] = {}  # task id -> the last handling started
        try:
            while True:
                stop_if_cancelled()
                # Events held behind a busy channel take no slot: the stream is read past them.
                at_work = len(working) - self._gates.waiting
                free = min(CONCURRENCY - at_work, HELD - len(working))
                if free <= 0:
                    await asyncio.wait(working.values(), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    if not group_ready:
                        # Also after Redis came back empty (no AOF, failover): NOGROUP otherwise.
                        await self._store.ensure_group()
                        group_ready = self.running = True
                    found = await self._store.reclaim(self._consumer, self.reclaim_idle_ms, free)
                    batch = [
                        (entry_id, event) for entry_id, event in found if entry_id not in working
                    ]
                    if len(batch) < free:
                        block = max(100, min(BLOCK_MS, self.reclaim_idle_ms))
                        batch += await self._store.read_group(
                            self._consumer, free - len(batch), block
                        )
                except RedisError as error:
                    log.warning("publisher: Redis unavailable (%s); retrying", error)
                    self.running = False
                    group_ready = group_ready and "NOGROUP" not in str(error)
                    await asyncio.sleep(2)
                    continue
                self.running = True
                for entry_id, event in batch:
                    self._start(entry_id, event, working, latest)
        finally:
            for handling in working.values():
                handling.cancel()
            await asyncio.gather(*working.values(), return_exceptions=True)

    def _start(
        self,
        entry_id: str,
        event: Event | None,
        working: dict[str, asyncio.Task[None]],
        latest: dict[str, asyncio.Task[None]],
    ) -> None:
        """Handle an event beside the others; after the events of its task read before it."""
        task_id = event.task_id if event else entry_id
        handling = asyncio.create_task(self._in_turn(latest.get(task_id), entry_id, event))
        working[entry_id] = latest[task_id] = handling

        def forget(_: asyncio.Task[None]) -> None:
            working.pop(entry_id, None)
            if latest.get(task_id) is handling:
                del latest[task_id]

        handling.add_done_callback(forget)

    async def _in_turn(
        self, before: asyncio.Task[None] | None, entry_id: str, event: Event | None
    ) -> None:
        # Claimed while it waits too: a slow predecessor must not let another publisher
        # take this event and handle it out of order.
        heartbeat = asyncio.create_task(self._keep_owned(entry_id))
        try:
            if before is not None:
                await asyncio.wait([before])
            async with self._gates.hold(await self._channel_of(event)), self._slots:
                await self.process(entry_id, event)
        except RedisError as error:
            log.warning("event %s: Redis unavailable (%s); will retry", entry_id, error)
        except Exception:
            log.exception("event %s: unexpected error; will retry", entry_id)
        finally:
            heartbeat.cancel()

    async def _channel_of(self, event: Event | None) -> str | None:
        record = await self._store.get(event.task_id) if event else None
        return self._thread.channel_for(record) if record else None

    async def process(self, entry_id: str, event: Event | None) -> None:
        """Handle one event; acknowledge it when done or when retrying cannot help."""
        attempts = await self._store.count_attempt(entry_id)
        task = event.task_id if event else "?"
        if attempts > MAX_ATTEMPTS:
            log.error(
                "event %s for task %s dropped after %d attempts (see the errors above)",
                entry_id,
                task,
                MAX_ATTEMPTS,
            )
            await self._store.ack(entry_id)
            return
        if event is None:
            # Left pending, not acknowledged: in a rolling upgrade a newer replica reads it.
            log.warning("event %s: this version cannot read it; left for a newer one", entry_id)
            return
        await self._process(entry_id, event)

    async def _keep_owned(self, entry_id: str) -> None:
        while True:
            await self.renewal_sleep(self.reclaim_idle_ms / 3000)
            try:
                if not await self._store.keep_owned(entry_id, self._consumer):
                    log.warning("event %s: taken over by another publisher", entry_id)
                    return
            except RedisError as error:
                log.warning("event %s: cannot renew its claim: %s", entry_id, error)

    async def _process(self, entry_id: str, event: Event) -> None:
        try:
            with log_context(task_id=event.task_id, round=event.round):
                await self.handle(entry_id, event)
        except (RetryLater, Busy) as reason:
            log.info("event %s for task %s: %s; later", entry_id, event.task_id, reason)
            return
        except SlackApiError as error:
            code = slack_error(error)
            if code in REFUSED_PAYLOAD_ERRORS:
                log.error(
                    "event %s for task %s dropped: Slack refused the payload (%s): %s",
                    entry_id,
                    event.task_id,
                    code,
                    slack_explanation(error) or "no explanation given",
                )
            elif code not in FATAL_SLACK_ERRORS:
                log.warning("event %s (%s): Slack %s; will retry", entry_id, event.task_id, code)
                return  # unacknowledged: reclaimed and retried after reclaim_idle_ms
            else:
                log.error(
                    "event %s for task %s dropped: Slack answered %s",
                    entry_id,
                    event.task_id,
                    code,
                )
        except RedisError:
            raise
        except Exception:
            log.exception("event %s for task %s failed; will retry", entry_id, event.task_id)
            return
        await self._store.ack(entry_id)

    async def handle(self, entry_id: str, event: Event) -> None:
        match event.type:
            case EventType.AWAITING_CONFIRMATION | EventType.ROUND_CHANGED:
                await self._awaiting(entry_id, event)
            case EventType.LEFT_CONFIRMATION:
                await self._left(entry_id, event)
            case EventType.SUCCEEDED | EventType.FAILED:
                await self._ended(entry_id, event)
            case EventType.UNKNOWN_TASK:
                await self._unknown(entry_id, event)

    async def _to_do(self, entry_id: str, step: str) -> bool:
        """True when `step` of this event still has to be done."""
        return await self._store.step_done(entry_id, step) is None

    async def _awaiting(self, entry_id: str, event: Event) -> None:
        # Every earlier round ended in a REJECT, perhaps unseen (retraining took less than a
        # poll interval, or polls were missed): each one not told yet is settled here, as on
        # left_confirmation, oldest first and before this round is called. Not only the
        # previous one: its own event may have failed before showing it, to be handled late.
        unreplied = await self._store.rounds_unreplied(event.task_id, event.round)
        # Noted for a retry, which finds them replied: their decisions are told at the end.
        noted = await self._store.step_done(entry_id, "earlier")
        if noted is None:
            await self._store.mark_step(entry_id, "earlier", json.dumps(unreplied))
        earlier = sorted({*unreplied, *(json.loads(noted) if noted else [])})
        unsettled = [
            round_
            for round_ in unreplied
            if not await self._settle(event.task_id, round_, "REJECT", event.at)
        ]
        await self._store.save_demos(event.task_id, event.round, event.demo_urls)
        record = await self._thread.show(event.task_id)
        if record is None or record.slack_ts is None:
            return
        if event.round > 1 and await self._to_do(entry_id, "round"):
            loaded = await self._store.view(event.task_id)
            assert loaded is not None
            # Handled late (reclaimed from a dead publisher, or retried after Slack failed),
            # the round may be over already: calling the channel to decide it would only
            # repeat the next round's call, which rendering the current view did.
            if loaded.view.round == event.round:
                await self._thread.reply(record, messages.round_reply(loaded.view), broadcast=True)
            await self._store.mark_step(entry_id, "round")
        if await self._to_do(entry_id, "upload"):
            await self._copy_videos(entry_id, event)
            await self._store.mark_step(entry_id, "upload")
            await self._thread.refresh(event.task_id)
        for round_ in unsettled:
            if not await self._settle(event.task_id, round_, "REJECT", event.at):
                raise RetryLater(f"a decision on round {round_} from Slack is in flight")
        # The requester hears each earlier decision before this round: those settled here,
        # and the previous one when retrained quicker than a poll (no left_confirmation
        # told it). Handled late, this event finds them told by the later round's.
        if event.type == EventType.ROUND_CHANGED:
            earlier = sorted({*earlier, event.round - 1})
        for round_ in earlier:
            await self._tell_decided(event.task_id, round_)

        def ready(view: TaskView, where: messages.Where) -> messages.Payload | None:
            # As for the channel's call above: a round over when its event is handled late is
            # not "ready" any more, and the current round's event told the current round.
            if view.round != event.round:
                return None
            return messages.requester_ready(view, where)

        await self._tell_requester(entry_id, "dm:ready", event.task_id, ready)

    async def _copy_videos(self, entry_id: str, event: Event) -> None:
        task_id = event.task_id
        loaded = await self._store.view(task_id)
        assert loaded is not None
        record, view = loaded
        assert record.slack_channel and record.slack_ts
        # Named for the event's round, not the task's current one: an event handled after the
        # next round's (reclaimed late) shared its video as the next round's, a second time.
        view = view.model_copy(update={"round": event.round, "demo_urls": event.demo_urls})
        total, copied = len(event.demo_urls), 0
        error = "" if total else "Tencent gave no demo link"
        for index, url in enumerate(event.demo_urls, 1):
            step = f"video:{index}"
            if not await self._to_do(entry_id, step) or await self._shared_before(
                entry_id, step, record
            ):
                copied += 1
                continue

            async def sharing(file_id: str, step: str = step) -> None:
                # Noted only while this publisher still holds the event, in one step with
                # renewing its claim: the publisher that took it over either finds this
                # file id (and the share, once made) or this one never shares.
                if not await self._store.mark_step_if_owned(
                    entry_id, self._consumer, f"{step}:file", file_id
                ):
                    raise TakenOver(f"taken over by another publisher; {step} not shared")

            try:
                await copy_to_thread(
                    self._thread.client,
                    self._media,
                    url,
                    max_bytes=self._video_max_bytes,
                    hosts=self._video_hosts,
                    time_limit=self._video_time_limit,
                    filename=f"{task_id}-round{event.round}-{index}.mp4",
                    channel=record.slack_channel,
                    thread_ts=record.slack_ts,
                    comment=messages.upload_comment(view, index, total),
                    sharing=sharing,
                )
            except VideoError as failure:
                log.warning("task %s round %d: video %d: %s", task_id, event.round, index, failure)
                error = str(failure)
                continue
            await self._store.mark_step(entry_id, step)
            copied += 1
        upload = Upload(round=event.round, ok=0 < copied == total, files=copied, error=error)
        await self._store.save_upload(task_id, upload)
        if not upload.ok:
            await self._thread.reply(record, messages.upload_failed_reply(event.round, error))

    async def _shared_before(self, entry_id: str, step: str, record: TaskRecord) -> bool:
        """A video whose share a killed process sent but did not record: found in the
        thread, it is recorded now instead of uploaded a second time."""
        file_id = await self._store.step_done(entry_id, f"{step}:file")
        if file_id is None or not await self._thread.has_file(record, file_id):
            return False
        log.warning(
            "task %s: %s was shared before a crash; not uploading it again", record.task_id, step
        )
        await self._store.mark_step(entry_id, step)
        return True

    async def _left(self, entry_id: str, event: Event) -> None:
        if not await self._settle(event.task_id, event.round, operate_that_left(event), event.at):
            raise RetryLater("a decision from Slack is in flight")
        await self._tell_decided(event.task_id, event.round)

    async def _tell_decided(self, task_id: str, round_: int) -> None:
        """Tell the requester a round's decision once, whichever event gets there first (the
        round's left_confirmation, the next round's event, a later one that settled it)."""
        decision = await self._store.decision(task_id, round_)
        if decision is None or await self._store.decision_told(task_id, round_):
            return

        def decided(view: TaskView, where: messages.Where) -> messages.Payload:
            assert decision is not None
            return messages.requester_decided(view, decision, where)

        await self._direct_message(task_id, decided)
        await self._store.mark_decision_told(task_id, round_, time.time())

    async def _tell_requester(
        self,
        entry_id: str,
        step: str,
        task_id: str,
        build: Callable[[TaskView, messages.Where], messages.Payload | None],
    ) -> None:
        """Tell the requester once per event: `step` is marked once told (or skipped)."""
        if not await self._to_do(entry_id, step):
            return
        await self._direct_message(task_id, build)
        await self._store.mark_step(entry_id, step)

    async def _direct_message(
        self, task_id: str, build: Callable[[TaskView, messages.Where], messages.Payload | None]
    ) -> None:
        """DM whoever tracked the task (a Slack user), unless `build` gives None. A message
        Slack will never deliver is skipped; other Slack errors retry the event."""
        loaded = await self._store.view(task_id)
        if loaded is None or not messages.is_user(loaded.record.tracked_by):
            return
        record, view = loaded
        payload = build(view, messages.Where(record.slack_permalink, record.slack_channel))
        try:
            if payload is not None:
                await self._thread.post(record.tracked_by, **payload)
        except SlackApiError as error:
            if slack_error(error) not in UNREACHABLE_USER_ERRORS:
                raise
            log.warning(
                "task %s: cannot send a direct message to %s (%s); skipped",
                task_id,
                record.tracked_by,
                slack_error(error),
            )

    async def _settle(self, task_id: str, round_: int, moved_by: str | None, at: float) -> bool:
        """Tencent closed `round_`: make sure it is recorded, shown and told in the thread.
        False while a decider from Slack may still be at work on it (it records and tells)."""
        claim = await self._decider_finished(task_id, round_)
        if claim is not None and time.time() - claim.at < self.settle_after:
            return False  # someone is deciding in Slack: their call may be what moved it
        decision = await self._store.decision(task_id, round_)
        if decision is None and claim is not None and moved_by == claim.operate:
            # The decider died after its call took effect: the progress says what it sent.
            decision = decision_from(claim, round_)
        elif decision is None:
            decision = Decision(round=round_, operate=None, at=at, source="elsewhere")
        try:
            await self._thread.announce(task_id, decision)
        except Busy:
            return False  # another process is telling it right now
        return True

    async def _decider_finished(self, task_id: str, round_: int) -> Claim | None:
        """The round's claim, once a decider at work on it has finished (it records the
        decision, then gives the claim back): the poller often sees Tencent move on while the
        decider is still recording. Waits at most `decider_wait` s; a claim still held then
        (or kept on purpose, its call's outcome unknown) is returned as it is."""
        deadline = time.monotonic() + self.decider_wait
        pause = 0.02
        while True:
            claim = await self._store.current_claim(task_id, round_)
            fresh = claim is not None and time.time() - claim.at < self.settle_after
            if not fresh or time.monotonic() >= deadline:
                return claim
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _ended(self, entry_id: str, event: Event) -> None:
        record = await self._thread.show(event.task_id)
        if record is None or record.slack_ts is None:
            return
        loaded = await self._store.view(event.task_id)
        if loaded is not None and await self._to_do(entry_id, "reply"):
            await self._thread.reply(record, messages.ending_reply(loaded.view), broadcast=False)
            await self._store.mark_step(entry_id, "reply")
        # Retired first: a direct message Slack keeps refusing must not keep the task's keys.
        await self._store.retire(event.task_id)
        await self._tell_requester(entry_id, "dm:ended", event.task_id, messages.requester_ended)

    async def _unknown(self, entry_id: str, event: Event) -> None:
        record = await self._store.get(event.task_id)
        if record is None:
            return
        channel = self._thread.channel_for(record)
        if channel is None or not await self._to_do(entry_id, "notice"):
            return
        notice = messages.unknown_task_notice(record.task_id, record.tracked_by, event.message)
        await self._thread.post(channel, **notice)
        await self._store.mark_step(entry_id, "notice")
