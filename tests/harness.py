"""A whole bot on loopback: IVH simulator, fake Slack, private Redis, the real HTTP app.

Requests to /slack/events are signed the way Slack signs them; the signing and the payload
builders here are shared with tests/cluster.py, tests/test_properties.py and bench/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.asyncio import Redis

from bot.app import Runtime, Upstreams
from bot.config import DEFAULT_VIDEO_HOSTS, Settings
from bot.sim import RunningSimulator
from bot.store import EVENTS_STREAM, Store, TaskRecord
from tests.conftest import serving, wait_for
from tests.fake_slack import FakeSlack

SIGNING_SECRET = "test-signing-secret"
INTAKE = "intake-token"
CHANNEL = "C0DEMO"
FORM = "application/x-www-form-urlencoded"


# --- Slack requests ---------------------------------------------------------------------------


def slack_headers(
    body: str | bytes,
    *,
    secret: str = SIGNING_SECRET,
    at: float | None = None,
    content_type: str = FORM,
) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    raw = body.encode() if isinstance(body, str) else body
    base = b"v0:" + stamp.encode() + b":" + raw
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "Content-Type": content_type,
    }


def form_body(payload: Any) -> str:
    """An interactivity request body: the payload as JSON in a `payload` form field."""
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def block_actions(
    team_id: str,
    action_id: str,
    value: str,
    *,
    user: str,
    trigger_id: str,
    response_url: str | None,
    channel: str = CHANNEL,
    app_id: str = "A0TEST",
    home_view: str | None = None,
) -> dict[str, Any]:
    """A click on one of the decision buttons of a message in `channel`; with `home_view` (a
    view id), on the clicker's App Home instead: no channel and no response_url then."""
    where: dict[str, Any] = {
        "channel": {"id": channel},
        "container": {"type": "message", "channel_id": channel},
        "response_url": response_url,
    }
    if home_view is not None:
        where = {
            "container": {"type": "view", "view_id": home_view},
            "view": {"id": home_view, "type": "home", "callback_id": "ivh_home"},
        }
    return {
        "type": "block_actions",
        "team": {"id": team_id},
        "user": {"id": user, "team_id": team_id},
        "api_app_id": app_id,
        "token": "legacy",
        "trigger_id": trigger_id,
        **where,
        "actions": [
            {
                "type": "button",
                "action_id": action_id,
                "block_id": "decide",
                "value": value,
                "action_ts": str(time.time()),
            }
        ],
    }


def home_opened(team_id: str, user: str, *, tab: str = "home", app_id: str = "A0TEST") -> dict:
    """The Events API's envelope of `user` opening the app's Home (or Messages) tab."""
    return {
        "type": "event_callback",
        "team_id": team_id,
        "api_app_id": app_id,
        "token": "legacy",
        "event_id": f"Ev{time.monotonic_ns()}",
        "event_time": int(time.time()),
        "event": {
            "type": "app_home_opened",
            "user": user,
            "channel": "D" + user[1:],
            "tab": tab,
            "event_ts": str(time.time()),
        },
    }


def view_submission(
    team_id: str, metadata: Any, reason: Any, *, user: str | None, trigger_id: str = "trigger-view"
) -> dict[str, Any]:
    """The Reject modal submitted with `reason`; without a "user" field when `user` is None."""
    payload: dict[str, Any] = {"type": "view_submission", "team": {"id": team_id}}
    if user is not None:
        payload["user"] = {"id": user, "team_id": team_id}
    return payload | {
        "api_app_id": "A0TEST",
        "token": "legacy",
        "trigger_id": trigger_id,
        "view": {
            "id": "V0TEST",
            "type": "modal",
            "callback_id": "reject_reason",
            "private_metadata": metadata,
            "state": {
                "values": {
                    "reason": {"reason_input": {"type": "plain_text_input", "value": reason}}
                }
            },
        },
    }


def slash_command(
    team_id: str,
    text: str,
    *,
    user: str,
    channel: str,
    response_url: str,
    trigger_id: str,
    channel_name: str = "approvals",
) -> dict[str, str]:
    """The form fields of an `/ivh` slash command typed in `channel` (named `channel_name`)."""
    return {
        "command": "/ivh",
        "text": text,
        "user_id": user,
        "channel_id": channel,
        "channel_name": channel_name,
        "team_id": team_id,
        "response_url": response_url,
        "trigger_id": trigger_id,
        "token": "legacy",
    }


# --- what the bot has done (also asked by tests/cluster.py of its replicas) ---------------------


async def task_posted(store: Store, task_id: str) -> bool:
    """The task's parent message exists and its video step is finished."""
    loaded = await store.view(task_id)
    return bool(loaded and loaded.record.slack_ts and loaded.view.upload is not None)


async def events_published(redis: Redis) -> bool:
    """Every event so far was delivered to a publisher and acknowledged."""
    groups = await redis.xinfo_groups(EVENTS_STREAM)
    info = await redis.xinfo_stream(EVENTS_STREAM)
    last = info["last-generated-id"]
    return all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups)


# --- the bot ------------------------------------------------------------------------------------


def settings_for(sim: RunningSimulator, fake: FakeSlack, redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": fake.api_url,
        "SLACK_CHANNEL": CHANNEL,
        "SLACK_POSTS_PER_SECOND": 100,  # the fake Slack has no per-channel limit unless asked
        "IVH_APPKEY": sim.sim.appkey,
        "IVH_ACCESS_TOKEN": sim.sim.access_token,
        "IVH_BASE_URL": sim.url,
        "IVH_MAX_QPS": 500,
        "IVH_TIMEOUT": 2,
        "POLL_INTERVAL": 0.05,
        "POLL_SLOW_INTERVAL": 0.05,
        "HOME_REFRESH_SECONDS": 0.2,
        "REDIS_URL": redis_url,
        "INTAKE_TOKEN": INTAKE,
        # The simulator's demo videos, listed explicitly with the simulator's port.
        "VIDEO_HOSTS": httpx.URL(sim.url).netloc.decode(),
    }
    return Settings(_env_file=None, **(values | extra))  # type: ignore[call-arg]


@dataclass
class Bot:
    url: str
    http: httpx.AsyncClient
    runtime: Runtime
    sim: RunningSimulator
    fake: FakeSlack
    trigger: int = field(default=0)

    @property
    def store(self) -> Store:
        return self.runtime.store

    async def track(self, task_id: str, **fields: Any) -> dict:
        answer = await self.http.post(
            "/tasks",
            json={"task_id": task_id, **fields},
            headers={"Authorization": f"Bearer {INTAKE}"},
        )
        assert answer.status_code == 202, answer.text
        return answer.json()

    async def record(self, task_id: str) -> TaskRecord:
        record = await self.store.get(task_id)
        assert record is not None
        return record

    async def until(self, check: Any, within: float = 30.0) -> None:
        await wait_for(check, within)

    async def posted(self, task_id: str, within: float = 30.0) -> TaskRecord:
        """Wait until the task's parent message exists and its video step is finished."""

        async def ready() -> bool:
            return await task_posted(self.store, task_id) and await self.published()

        await self.until(ready, within)
        return await self.record(task_id)

    async def published(self) -> bool:
        """Every event so far was delivered to a publisher and acknowledged."""
        return await events_published(self.store.redis)

    def parent(self, record: TaskRecord) -> Any:
        assert record.slack_channel and record.slack_ts
        return self.fake.message(record.slack_channel, record.slack_ts)

    def thread(self, record: TaskRecord) -> list[Any]:
        assert record.slack_channel and record.slack_ts
        return self.fake.thread(record.slack_channel, record.slack_ts)

    async def send(self, payload: dict | None = None, *, form: dict | None = None, **kw: Any):
        body = form_body(payload) if form is None else urllib.parse.urlencode(form)
        headers = kw.pop("headers", None) or slack_headers(body, **kw)
        return await self.http.post("/slack/events", content=body, headers=headers)

    async def click(
        self, action_id: str, value: str, user: str = "U0ALICE", *, home: bool = False, **kw: Any
    ):
        """A click in the channel, or with `home` on the clicker's App Home."""
        self.trigger += 1
        home_view = self.fake.homes.get(user, {}).get("id", "V0HOME") if home else None
        payload = block_actions(
            self.fake.team_id,
            action_id,
            value,
            user=user,
            trigger_id=f"trigger-{self.trigger}",
            response_url=None if home else self.fake.response_url(f"{user}-{self.trigger}"),
            home_view=home_view,
        )
        return await self.send(payload, **kw)

    async def reject_form(self, value: str, user: str = "U0ALICE", *, home: bool = False) -> dict:
        """Click Reject (in the channel, or with `home` on the App Home); the form Slack was
        asked to open for that very click."""
        await self.click("reject", value, user, home=home)
        trigger = f"trigger-{self.trigger}"

        def opened() -> list[Any]:
            calls = self.fake.calls_to("views.open")
            return [call for call in calls if call.args.get("trigger_id") == trigger]

        await self.until(lambda: bool(opened()))
        view = opened()[0].args["view"]
        return json.loads(view) if isinstance(view, str) else view

    async def open_home(self, user: str = "U0ALICE", *, tab: str = "home"):
        body = json.dumps(home_opened(self.fake.team_id, user, tab=tab))
        headers = slack_headers(body, content_type="application/json")
        return await self.http.post("/slack/events", content=body, headers=headers)

    async def submit_reason(self, metadata: str, reason: str | None, user: str = "U0ALICE"):
        return await self.send(view_submission(self.fake.team_id, metadata, reason, user=user))

    async def command(self, text: str, user: str = "U0ALICE", channel: str = CHANNEL):
        form = slash_command(
            self.fake.team_id,
            text,
            user=user,
            channel=channel,
            response_url=self.fake.response_url(f"cmd-{user}"),
            trigger_id="trigger-cmd",
        )
        return await self.send(form=form)


@contextlib.asynccontextmanager
async def run_bot(
    sim: RunningSimulator,
    fake: FakeSlack,
    redis_url: str,
    *,
    ivh_url: str | None = None,
    builtin_simulator: bool = False,
    **extra: Any,
) -> AsyncIterator[Bot]:
    """The bot on `sim`; `ivh_url` puts something between them (a proxy). With
    `builtin_simulator`, as `ivh-approvals demo` runs it: `sim` is its built-in simulator and
    VIDEO_HOSTS keeps its default (the bot adds the simulator)."""
    if builtin_simulator:
        extra.setdefault("VIDEO_HOSTS", ",".join(DEFAULT_VIDEO_HOSTS))
    settings = settings_for(sim, fake, redis_url, **extra)
    assert settings.IVH_APPKEY and settings.IVH_ACCESS_TOKEN
    up = Upstreams(
        redis_url,
        ivh_url or sim.url,
        settings.IVH_APPKEY,
        sim.sim.access_token,
        simulator=sim.sim if builtin_simulator else None,
    )
    runtime = Runtime.build(settings, up)
    assert runtime.slack is not None
    await runtime.prepare()  # as bot.app.serve does, before the loops
    loops = [
        asyncio.create_task(runtime.poller.run()),
        asyncio.create_task(runtime.slack.publisher.run()),
        asyncio.create_task(runtime.slack.home.run()),
    ]
    try:
        async with serving(runtime.web_app()) as url, httpx.AsyncClient(base_url=url) as http:
            yield Bot(url, http, runtime, sim, fake)
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await runtime.aclose()
