"""Slack Web API I/O: the one AsyncWebClient, and posting, rebuilding and replying to a task."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from redis.asyncio import Redis
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncSlackResponse, AsyncWebClient

from bot import messages
from bot.logs import log_context
from bot.metrics import Metrics
from bot.model import Decision, TaskRecord, TaskView, is_channel_id
from bot.ratelimit import RedisRateLimiter
from bot.store import Store, parent_lock, post_rate_key, reply_lock

log = logging.getLogger(__name__)

# How long one process may hold the right to post a task's message or a reply. Longer than a
# post takes, 429s waited out included; a process that dies holding it delays the post this long.
POST_LOCK_SECONDS = 120.0
# A message update is checked against the state once it landed, and sent again if the state
# moved meanwhile; a few times at most, in case it keeps moving (the next event updates it).
REFRESH_READS = 3
THREAD_PAGES = 10  # of 200 messages: far more than a task's rounds, replies and videos


class Busy(Exception):
    """Another process is doing this Slack step right now; try again later."""


class ChannelPace:
    """Slack takes about one message per second per channel: each post waits for its
    channel's turn, kept in Redis so that all replicas together hold the pace."""

    def __init__(self, redis: Redis, per_second: float) -> None:
        self._redis = redis
        self._rate = per_second  # the limiter keeps its own margin for jitter
        self._limiters: dict[str, RedisRateLimiter] = {}

    async def wait(self, channel: str) -> None:
        limiter = self._limiters.get(channel)
        if limiter is None:
            key = post_rate_key(channel)
            limiter = self._limiters[channel] = RedisRateLimiter(self._redis, key, self._rate)
        await limiter.acquire()


# Told of every Slack API error: the method and Slack's error ("ratelimited" for a 429).
ErrorObserver = Callable[[str, str], None]


class _CountedRateLimits(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's 429 handling (wait Retry-After, try again), with each 429 told."""

    def __init__(self, on_error: ErrorObserver, max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self._on_error = on_error

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        limited = await super()._can_retry_async(
            state=state, request=request, response=response, error=error
        )
        if response is not None and response.status_code == 429:
            self._on_error(request.url.rsplit("/", 1)[-1], "ratelimited")
        return limited


class _Client(AsyncWebClient):
    """An AsyncWebClient whose calls name their method in the log context, and that tells
    every error Slack answers."""

    def __init__(self, *, on_error: ErrorObserver | None, **options: Any) -> None:
        super().__init__(**options)
        self._on_error = on_error

    async def api_call(self, api_method: str, **options: Any) -> AsyncSlackResponse:
        try:
            with log_context(slack_method=api_method):
                return await super().api_call(api_method, **options)
        except SlackApiError as error:
            if self._on_error is not None:
                self._on_error(api_method, slack_error(error))
            raise


def make_client(
    token: str,
    base_url: str,
    timeout: int = 30,
    session: aiohttp.ClientSession | None = None,
    on_error: ErrorObserver | None = None,
) -> AsyncWebClient:
    """Every Slack call goes through this client: it waits out 429s and retries 5xx.

    Give it a `session` (its owner closes it) to keep connections alive between calls;
    without one, slack_sdk opens a new connection for every call. `on_error` is told of each
    error Slack answers, 429s included (the metrics)."""
    rate_limits = (
        AsyncRateLimitErrorRetryHandler(max_retry_count=10)
        if on_error is None
        else _CountedRateLimits(on_error, max_retry_count=10)
    )
    options: dict[str, Any] = {
        "token": token,
        "base_url": base_url,
        "timeout": timeout,
        "session": session,
        "retry_handlers": [
            AsyncConnectionErrorRetryHandler(max_retry_count=2),
            rate_limits,
            AsyncServerErrorRetryHandler(max_retry_count=3),
        ],
    }
    return _Client(on_error=on_error, **options)


def slack_error(error: SlackApiError) -> str:
    return str(error.response.get("error", "unknown_error"))


def slack_explanation(error: SlackApiError) -> str:
    """Slack's own words on a refused request (response_metadata.messages), one line."""
    metadata = error.response.get("response_metadata")
    found = metadata.get("messages") if isinstance(metadata, dict) else None
    if not isinstance(found, list):
        return ""
    return "; ".join(str(message) for message in found)[:2000]


class Thread:
    """A task's parent message and its thread: post it, rebuild it, reply to it."""

    def __init__(
        self,
        store: Store,
        client: AsyncWebClient,
        default_channel: str | None,
        pace: ChannelPace | None = None,
        metrics: Metrics | None = None,
        required_approvals: int = 1,
    ) -> None:
        self._required_approvals = required_approvals
        self.store = store
        self.client = client
        self.default_channel = default_channel
        self._pace = pace
        self.metrics = metrics

    async def post(self, channel: str, **payload: Any) -> AsyncSlackResponse:
        """chat.postMessage, at the channel's pace, never unfurling the demo links."""
        if self._pace is not None:
            await self._pace.wait(channel)
        return await self.client.chat_postMessage(
            channel=channel, unfurl_links=False, unfurl_media=False, **payload
        )

    def channel_for(self, record: TaskRecord) -> str | None:
        return record.channel or self.default_channel

    async def ensure_parent(self, task_id: str) -> TaskRecord | None:
        """Post the parent message if there is none yet; returns the record with its ts.

        One process at a time posts it (two events of a task can be handled at once by two
        replicas); the other gets Busy and comes back later to find the message there. A
        process that died between Slack's answer and recording the ts left a message behind:
        it is found by its metadata and used, not posted again."""
        record = await self.store.get(task_id)
        if record is None or record.slack_ts:
            return record
        channel = self.channel_for(record)
        if channel is None:
            log.error("task %s: no channel (set SLACK_CHANNEL or track with a channel)", task_id)
            return None
        async with self._exclusive(parent_lock(task_id), "its message is being posted"):
            loaded = await self.store.view(task_id)
            if loaded is None or loaded.record.slack_ts:
                return loaded.record if loaded else None
            record, view = loaded
            found = await self._find_unrecorded(record, channel)
            if found is None:
                await self.store.mark_posting(task_id, time.time())
                answer = await self.post(
                    channel, metadata=messages.task_metadata(task_id), **self._message(view)
                )
                found = str(answer["channel"]), str(answer["ts"])
                log.info("task %s: posted to %s at %s", task_id, *found)
            # Recorded before anything else can fail: a message posted and not recorded would
            # have to be looked for.
            await self.store.set_slack_message(task_id, *found)
        posted_channel, ts = found
        try:
            link = await self.client.chat_getPermalink(channel=posted_channel, message_ts=ts)
            await self.store.set_slack_message(task_id, posted_channel, ts, str(link["permalink"]))
        except SlackApiError as error:
            log.warning("task %s: no permalink: %s", task_id, slack_error(error))
        if record.posting_since is not None:
            await self.refresh(task_id)  # found as it was posted; the task may have moved on
        # Every round decided while the message was not recorded is told now, not only the
        # current one: a round decided on the message a dead process posted, then the task's
        # next round, left that decision untold for good (bench/chaos.py, seed 83072).
        for decision in view.decisions:
            await self._tell(task_id, decision.round)
        return await self.store.get(task_id)

    async def _find_unrecorded(self, record: TaskRecord, channel: str) -> tuple[str, str] | None:
        """The parent message a dead process posted and did not record, if there is one."""
        if record.posting_since is None:
            return None
        if not is_channel_id(channel):
            # Tracked by name (before names were refused): conversations.history takes ids.
            log.warning(
                "task %s: cannot look for a message posted before a crash (channel %s is a"
                " name, not an id); posting anew",
                record.task_id,
                channel,
            )
            return None
        try:
            answer = await self.client.conversations_history(
                channel=channel,
                oldest=f"{record.posting_since - 60:.6f}",  # Slack's clock may differ a little
                include_all_metadata=True,
                limit=200,
            )
        except SlackApiError as error:
            log.warning(
                "task %s: cannot look for a message posted before a crash (%s); posting anew",
                record.task_id,
                slack_error(error),
            )
            return None
        for message in answer.get("messages") or []:
            if messages.posted_for(message, record.task_id):
                log.warning(
                    "task %s: found its message %s, posted before a crash; using it",
                    record.task_id,
                    message.get("ts"),
                )
                return channel, str(message["ts"])
        return None

    async def has_file(self, record: TaskRecord, file_id: str) -> bool:
        """Whether the file `file_id` was shared into the task's thread (by a process that
        died before recording it). False when the thread cannot be read: upload anew."""
        found = await self._find_in_thread(
            record,
            lambda message: any(f.get("id") == file_id for f in message.get("files") or []),
            "a video shared before a crash",
            "uploading anew",
        )
        return found is not None

    async def _find_in_thread(
        self,
        record: TaskRecord,
        match: Callable[[dict[str, Any]], bool],
        looking_for: str,
        otherwise: str,
    ) -> dict[str, Any] | None:
        """The first message of the task's thread that `match`es; None when there is none or
        the thread cannot be read (logged: "cannot look for `looking_for` (...); `otherwise`")."""
        assert record.slack_channel and record.slack_ts
        cursor = None
        try:
            for _ in range(THREAD_PAGES):
                answer = await self.client.conversations_replies(
                    channel=record.slack_channel,
                    ts=record.slack_ts,
                    limit=200,
                    cursor=cursor,
                    include_all_metadata=True,
                )
                for message in answer.get("messages") or []:
                    if match(message):
                        return dict(message)
                cursor = (answer.get("response_metadata") or {}).get("next_cursor")
                if not cursor:
                    return None
        except SlackApiError as error:
            log.warning(
                "task %s: cannot look for %s (%s); %s",
                record.task_id,
                looking_for,
                slack_error(error),
                otherwise,
            )
        return None

    @contextlib.asynccontextmanager
    async def _exclusive(self, name: str, doing: str) -> AsyncIterator[None]:
        """Hold the Redis lock `name` while posting; Busy when another process holds it."""
        lock = await self.store.lock(name, POST_LOCK_SECONDS)
        if lock is None:
            raise Busy(f"{name}: {doing} by another process")
        try:
            yield
        finally:
            await self.store.unlock(lock)

    async def show(self, task_id: str) -> TaskRecord | None:
        """Post the parent message, or rebuild it if it exists; returns the updated record."""
        record = await self.store.get(task_id)
        if record is None or record.slack_ts is None:
            return await self.ensure_parent(task_id)
        await self.refresh(task_id)
        return await self.store.get(task_id)

    async def refresh(self, task_id: str) -> None:
        """Rebuild the parent message from the task's current state. Slack keeps whichever
        update lands last, and another process's (built from a newer state) may land before
        ours: the state is read again once ours landed, and sent again if it changed."""
        sent: dict[str, Any] | None = None
        for _ in range(REFRESH_READS):
            loaded = await self.store.view(task_id)
            if loaded is None:
                return
            record, view = loaded
            if not (record.slack_channel and record.slack_ts):
                return
            message = self._message(view)
            if message == sent:
                return
            try:
                await self.client.chat_update(
                    channel=record.slack_channel, ts=record.slack_ts, **message
                )
            except SlackApiError as error:
                if slack_error(error) != "message_not_found":
                    raise
                log.warning("task %s: its message was deleted; posting it again", task_id)
                await self.store.clear_slack_message(task_id)
                await self.ensure_parent(task_id)
                return
            sent = message

    def _message(self, view: TaskView) -> dict[str, Any]:
        """The task's message, saying how many approvals a round takes."""
        view = view.model_copy(update={"required_approvals": self._required_approvals})
        return messages.task_message(view)

    async def announce(self, task_id: str, decision: Decision) -> bool:
        """Record a round's decision (the first recorded stands), show it in the message and
        reply in the thread once. Called again after a crash, it finishes what is missing."""
        ready = await self.store.save_decision(task_id, decision)
        if ready is not None and self.metrics is not None:
            self.metrics.decided(decision.operate, decision.source, ready, decision.at)
        await self.refresh(task_id)
        await self._tell(task_id, decision.round)
        return ready is not None

    async def _tell(self, task_id: str, round_: int) -> None:
        """Reply in the thread with the round's recorded decision, unless that was done."""
        if await self.store.decision_replied(task_id, round_):
            return
        async with self._exclusive(reply_lock(task_id, round_), "its decision is being told"):
            record = await self.store.get(task_id)
            decision = await self.store.decision(task_id, round_)
            if record is None or decision is None or not record.slack_ts:
                return  # no message yet: told when it is posted
            if await self.store.decision_replied(task_id, round_):
                return
            # One posted by a process that lost Redis or died before recording it is found
            # in the thread by its metadata, once its lock expired, and not posted again.
            ts = await self._find_unrecorded_reply(record, round_)
            if ts is None:
                await self.store.mark_reply_posting(task_id, round_, time.time())
                metadata = messages.decision_metadata(task_id, round_)
                payload = messages.decision_reply(decision) | {"metadata": metadata}
                ts = await self.reply(record, payload)
            await self.store.mark_decision_replied(task_id, round_, ts or "")

    async def _find_unrecorded_reply(self, record: TaskRecord, round_: int) -> str | None:
        """The ts of the round's decision reply a process posted and did not record."""
        if not record.slack_ts or not await self.store.reply_posting(record.task_id, round_):
            return None
        found = await self._find_in_thread(
            record,
            lambda message: messages.replied_for(message, record.task_id, round_),
            "a decision reply posted before a crash",
            "posting anew",
        )
        if found is None:
            return None
        log.warning(
            "task %s: round %d's decision reply was posted before a crash; not posting it again",
            record.task_id,
            round_,
        )
        return str(found["ts"])

    async def reply(
        self, record: TaskRecord, payload: dict[str, Any], *, broadcast: bool = False
    ) -> str | None:
        """Reply in the task's thread; the reply's ts, or None when there is no message."""
        if not (record.slack_channel and record.slack_ts):
            return None
        answer = await self.post(
            record.slack_channel, thread_ts=record.slack_ts, reply_broadcast=broadcast, **payload
        )
        return str(answer["ts"])
