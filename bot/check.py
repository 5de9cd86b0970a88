"""`ivh-approvals check`: is this deployment able to work? One line per check, nothing changed.

Settings; Slack (the token, the scopes the bot needs, each configured channel with the bot in
it); IVH (a signed, harmless progress read); Redis (reachable, its version, the append-only
file). Every check runs even when an earlier one fails, so one run says everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.ivh import CODE_NOT_FOUND, IvhClient, IvhError, RetryPolicy
from bot.manifest import BOT_SCOPES
from bot.redact import redact
from bot.slack import make_client, slack_error
from bot.store import SCHEDULE, Store

# A task id no one has: IVH answers "record does not exist" (110006) once the signature,
# the key and the clock are right, and changes nothing.
PROBE_TASK = "ivh-approvals-check"
CHANNELS_CHECKED = 50  # the default channel and the channels of up to this many active tasks
TIMEOUT = 10.0


@dataclass(frozen=True)
class Result:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.detail}"


async def run_checks(settings: Settings, redis_url: str | None) -> list[Result]:
    """Every check, in order: settings, Slack, channels, IVH, Redis."""
    results = [_settings(settings)]
    redis = Redis.from_url(redis_url, socket_connect_timeout=5) if redis_url else None
    try:
        channels = await _channels(settings, redis)
        if settings.SLACK_BOT_TOKEN is None:
            results.append(Result("slack", True, "SLACK_BOT_TOKEN not set: no Slack side to check"))
        else:
            client = make_client(
                settings.SLACK_BOT_TOKEN.get_secret_value(), settings.SLACK_API_URL
            )
            results.append(await _bounded("slack", _slack(client)))
            for channel in channels:
                results.append(await _bounded(f"channel {channel}", _channel(client, channel)))
        results.append(await _bounded("ivh", _ivh(settings)))
        results.append(await _bounded("redis", _redis(redis, redis_url is None)))
    finally:
        if redis is not None:
            await redis.aclose()
    return results


async def _bounded(name: str, check: Awaitable[Result]) -> Result:
    try:
        async with asyncio.timeout(TIMEOUT):
            return await check
    except TimeoutError:
        return Result(name, False, f"no answer within {TIMEOUT:.0f} s")
    except Exception as error:  # unreachable, refused, ...: a failed check, not a traceback
        return Result(name, False, f"cannot check: {type(error).__name__}: {redact(str(error))}")


def _settings(settings: Settings) -> Result:
    mode = "Socket Mode" if settings.socket_mode else "HTTP mode"
    who = "anyone may decide (APPROVERS and APPROVER_GROUP unset)"
    if settings.APPROVERS or settings.APPROVER_GROUP:
        who = f"{len(settings.APPROVERS)} approvers" + (
            f" and group {settings.APPROVER_GROUP}" if settings.APPROVER_GROUP else ""
        )
    return Result("settings", True, f"read and valid; {mode}; {who}")


async def _slack(client: AsyncWebClient) -> Result:
    try:
        answer = await client.auth_test()
    except SlackApiError as error:
        return Result("slack", False, f"Slack refused SLACK_BOT_TOKEN ({slack_error(error)})")
    granted = {s.strip() for s in (answer.headers.get("x-oauth-scopes") or "").split(",")}
    missing = sorted(set(BOT_SCOPES) - granted - {""})
    who = f"team {answer.get('team')}, bot user {answer.get('user')}"
    if missing:
        return Result(
            "slack",
            False,
            f"{who}; the token lacks {', '.join(missing)}: update the app's manifest"
            " (`ivh-approvals manifest`) and reinstall it",
        )
    return Result("slack", True, f"{who}; every scope the bot uses is granted")


async def _channels(settings: Settings, redis: Redis | None) -> list[str]:
    """SLACK_CHANNEL and the channels active tasks name (a bounded sample)."""
    found: list[str] = [settings.SLACK_CHANNEL] if settings.SLACK_CHANNEL else []
    if redis is None or settings.SLACK_BOT_TOKEN is None:
        return found
    try:
        store = Store(redis)
        for raw in await redis.zrange(SCHEDULE, 0, CHANNELS_CHECKED - 1):
            record = await store.get(raw.decode() if isinstance(raw, bytes) else str(raw))
            if record is not None and record.channel and record.channel not in found:
                found.append(record.channel)
    except (RedisError, OSError):
        pass  # the Redis check says why
    return found


async def _channel(client: AsyncWebClient, channel: str) -> Result:
    name = f"channel {channel}"
    try:
        await client.conversations_history(channel=channel, limit=1)
    except SlackApiError as error:
        code = slack_error(error)
        advice = {
            "not_in_channel": "invite the bot: /invite @IVH Approvals",
            "channel_not_found": "no such channel, or a private one the bot is not in",
            "missing_scope": "the token lacks channels:history / groups:history",
        }.get(code, "see Slack's error")
        return Result(name, False, f"{code}: {advice}")
    return Result(name, True, "reachable, the bot is in it")


async def _ivh(settings: Settings) -> Result:
    if not settings.ivh_configured:
        return Result("ivh", False, "IVH_APPKEY and IVH_ACCESS_TOKEN are not set")
    assert settings.IVH_APPKEY and settings.IVH_ACCESS_TOKEN
    client = IvhClient(
        settings.IVH_BASE_URL,
        settings.IVH_APPKEY,
        settings.IVH_ACCESS_TOKEN.get_secret_value(),
        retry=RetryPolicy(attempts=1),
    )
    try:
        await client.get_progress(PROBE_TASK)
    except IvhError as error:
        if error.code == CODE_NOT_FOUND:
            return Result(
                "ivh",
                True,
                f"{settings.IVH_BASE_URL} took the signature and the key (a progress read of"
                f" a task that does not exist: code {error.code}, RequestID {error.request_id})",
            )
        return Result("ivh", False, str(error))
    finally:
        await client.aclose()
    return Result("ivh", True, f"{settings.IVH_BASE_URL} answered a signed progress read")


async def _redis(redis: Redis | None, embedded: bool) -> Result:
    if redis is None:
        return Result(
            "redis",
            False,
            "REDIS_URL not set and no embedded Redis running under DATA_DIR: start `run`"
            " first, or set REDIS_URL",
        )
    try:
        server = await redis.info("server")
        persistence = await redis.info("persistence")
    except (RedisError, OSError) as error:
        return Result("redis", False, f"unreachable: {error}")
    version = server.get("valkey_version") or server.get("redis_version") or "?"
    where = "the embedded server" if embedded else "REDIS_URL"
    if not int(persistence.get("aof_enabled", 0)):
        return Result(
            "redis",
            False,
            f"{where} answers (version {version}) but its append-only file is off: a restart"
            " of Redis would lose recent decisions and events (appendonly yes)",
        )
    return Result("redis", True, f"{where} answers (version {version}); append-only file on")
