"""Socket Mode end to end: the bot dials the fake Slack's WebSocket and is driven through it.

The bot is assembled as `serve()` does with SLACK_APP_TOKEN set: no signing secret, no
/slack/events route, and `bot.app._socket_mode()` connecting through the bolt app's own
AsyncWebClient, so apps.connections.open goes to SLACK_API_URL (the fake) with the app token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from slack_bolt.adapter.socket_mode import async_handler
from slack_sdk.errors import SlackApiError

from bot import messages
from bot.app import Runtime, Upstreams, _socket_mode
from bot.sim import RunningSimulator
from tests.conftest import serving, wait_for
from tests.fake_slack import FakeSlack
from tests.harness import CHANNEL, Bot, settings_for

APP_TOKEN = "xapp-test"  # FakeSlack's default app-level token
_triggers = itertools.count(1)

# The tasks the Socket Mode client runs; none may outlive the handler's close.
SOCKET_TASKS = ("process_messages", "receive_messages", "monitor_current_session")


def _socket_tasks() -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and task.get_coro().__qualname__.endswith(SOCKET_TASKS)
    ]


@contextlib.asynccontextmanager
async def run_socket_bot(
    sim: RunningSimulator, fake: FakeSlack, redis_url: str, **extra: Any
) -> AsyncIterator[Bot]:
    """`harness.run_bot` in Socket Mode: the HTTP app, poller and publisher, plus the socket."""
    settings = settings_for(
        sim, fake, redis_url, SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None, **extra
    )
    assert settings.socket_mode and settings.IVH_APPKEY and settings.SLACK_APP_TOKEN
    up = Upstreams(redis_url, sim.url, settings.IVH_APPKEY, sim.sim.access_token)
    runtime = Runtime.build(settings, up)
    assert runtime.slack is not None
    loops = [
        asyncio.create_task(runtime.poller.run()),
        asyncio.create_task(runtime.slack.publisher.run()),
    ]

    async def stop_loops() -> None:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(runtime.aclose)
        stack.push_async_callback(stop_loops)
        url = await stack.enter_async_context(serving(runtime.web_app()))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url))
        # A refused app token would make connect_async() retry forever; fail instead.
        async with asyncio.timeout(30):
            socket = await _socket_mode(
                runtime.slack.bolt, settings.SLACK_APP_TOKEN.get_secret_value()
            )
        stack.push_async_callback(socket.aclose)
        yield Bot(url, http, runtime, sim, fake)

    async def closed() -> bool:
        return not fake.socket_connected.is_set() and not _socket_tasks()

    await wait_for(closed, within=30)


# --- envelopes as Slack sends them in Socket Mode ------------------------------------------


async def command(fake: FakeSlack, text: str, user: str = "U0ALICE") -> dict[str, Any]:
    payload = {
        "token": "legacy",
        "team_id": fake.team_id,
        "channel_id": CHANNEL,
        "user_id": user,
        "command": "/ivh",
        "text": text,
        "api_app_id": "A0TEST",
        "is_enterprise_install": "false",
        "response_url": fake.response_url(f"cmd-{user}-{next(_triggers)}"),
        "trigger_id": f"trigger-{next(_triggers)}",
    }
    return await fake.socket_send("slash_commands", payload)


def _interaction(fake: FakeSlack, kind: str, user: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "team": {"id": fake.team_id},
        "user": {"id": user, "team_id": fake.team_id},
        "api_app_id": "A0TEST",
        "token": "legacy",
        "trigger_id": f"trigger-{next(_triggers)}",
        **fields,
    }


async def click(fake: FakeSlack, action_id: str, value: str, user: str = "U0ALICE") -> dict:
    payload = _interaction(
        fake,
        "block_actions",
        user,
        channel={"id": CHANNEL},
        container={"type": "message", "channel_id": CHANNEL},
        response_url=fake.response_url(f"{user}-{next(_triggers)}"),
        actions=[
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "decide",
                "value": value,
                "action_ts": str(time.time()),
            }
        ],
    )
    return await fake.socket_send("interactive", payload, accepts_response_payload=False)


async def submit_reason(
    fake: FakeSlack, metadata: str, reason: str | None, user: str = "U0ALICE"
) -> dict:
    values = {"reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}
    view = {
        "id": "V0TEST",
        "type": "modal",
        "callback_id": messages.REJECT_VIEW,
        "private_metadata": metadata,
        "state": {"values": values},
    }
    payload = _interaction(fake, "view_submission", user, view=view)
    return await fake.socket_send("interactive", payload)


# --- helpers ---------------------------------------------------------------------------------


def button_values(message: Any) -> dict[str, str]:
    return {
        element["action_id"]: element["value"]
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    }


def decisions(bot: Bot, task_id: str) -> list[dict]:
    return [
        r
        for r in bot.sim.sim.requests
        if r["action"] == "customerconfirm" and r["task_id"] == task_id and r["code"] == 0
    ]


# --- tests -----------------------------------------------------------------------------------


async def test_connects_with_the_app_token_and_answers_a_command_in_the_ack(
    sim, fake: FakeSlack, redis_url: str
):
    async with run_socket_bot(sim, fake, redis_url) as bot:
        assert [c.method for c in fake.calls[:2]] == ["apps.connections.open", "socket"]
        assert fake.calls[0].error is None

        ack = await command(fake, "help")
        assert "/ivh track" in ack["payload"]["text"]
        assert fake.socket_acks[-1] == ack

        # In Socket Mode nothing listens for Slack over HTTP.
        answer = await bot.http.post("/slack/events", content="payload=%7B%7D")
        assert answer.status_code in (404, 405)
        assert (await bot.http.get("/healthz")).status_code == 200


async def test_track_by_command_then_approve_over_the_socket(sim, fake: FakeSlack, redis_url):
    async with run_socket_bot(sim, fake, redis_url) as bot:
        task = bot.sim.sim.create_task()
        tracked = await command(fake, f"track {task.task_id} Anna, studio avatar")
        assert "Tracking" in tracked["payload"]["text"]
        record = await bot.posted(task.task_id)
        assert record.tracked_by == "U0ALICE"
        assert set(button_values(bot.parent(record))) == {"approve", "reject"}

        ack = await click(fake, "approve", button_values(bot.parent(record))["approve"])
        assert ack.keys() == {"envelope_id"}  # a plain ack: nothing to show in its place

        def thread() -> str:
            return " ".join(m.text + json.dumps(m.blocks) for m in bot.thread(record))

        async def complete() -> bool:
            shown = "Complete" in json.dumps(bot.parent(record).blocks)
            return shown and "approved" in thread() and "Complete" in thread()

        await bot.until(complete)
        [agree] = decisions(bot, task.task_id)
        assert agree["operate"] == "AGREE"
        parent = bot.parent(record)
        assert button_values(parent) == {}
        assert "Approved by <@U0ALICE>" in thread()


async def test_a_blank_reason_is_refused_in_the_ack(sim, fake: FakeSlack, redis_url: str):
    async with run_socket_bot(sim, fake, redis_url) as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        record = await bot.posted(task.task_id)

        await click(fake, "reject", button_values(bot.parent(record))["reject"])
        [opened] = await fake.wait_for("views.open")
        metadata = opened.args["view"]["private_metadata"]

        blank = await submit_reason(fake, metadata, "  \n ")
        assert blank["payload"]["response_action"] == "errors"
        assert blank["payload"]["errors"][messages.REASON_BLOCK]
        assert decisions(bot, task.task_id) == []

        accepted = await submit_reason(fake, metadata, "lips out of sync")
        assert "payload" not in accepted  # the modal closes

        async def round_two_posted() -> bool:
            loaded = await bot.store.view(task.task_id)
            done = loaded and loaded.view.round == 2 and loaded.view.upload is not None
            return bool(done) and await bot.published()

        await bot.until(round_two_posted)
        [reject] = decisions(bot, task.task_id)
        assert (reject["operate"], reject["reason"]) == ("REJECT", "lips out of sync")


async def test_reconnects_when_slack_asks_it_to(sim, fake: FakeSlack, redis_url: str):
    async with run_socket_bot(sim, fake, redis_url):
        await fake.socket_disconnect("refresh_requested")
        await fake.wait_for("socket", 2, within=30)
        ack = await command(fake, "help")
        assert "/ivh track" in ack["payload"]["text"]
        assert len(fake.calls_to("apps.connections.open")) == 2


async def test_a_refused_app_token_stops_the_start_up(
    sim, fake: FakeSlack, redis_url: str, monkeypatch: pytest.MonkeyPatch
):
    fake.app_token = "xapp-another-app"
    made: list[async_handler.AsyncSocketModeHandler] = []

    class Recorded(async_handler.AsyncSocketModeHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(async_handler, "AsyncSocketModeHandler", Recorded)
    settings = settings_for(
        sim, fake, redis_url, SLACK_APP_TOKEN=APP_TOKEN, SLACK_SIGNING_SECRET=None
    )
    assert settings.IVH_APPKEY
    runtime = Runtime.build(settings, Upstreams(redis_url, sim.url, settings.IVH_APPKEY, "x"))
    assert runtime.slack is not None
    try:
        with pytest.raises(SlackApiError, match="invalid_auth"):
            async with asyncio.timeout(30):
                await _socket_mode(runtime.slack.bolt, APP_TOKEN)
    finally:
        for handler in made:
            await handler.close_async()
        await runtime.aclose()
    assert [c.error for c in fake.calls_to("apps.connections.open")] == ["invalid_auth"]
