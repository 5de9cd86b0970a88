"""A fake Slack Web API on loopback: answers the methods the bot uses and records every call.

It also plays Slack's side of Socket Mode: apps.connections.open (app-level token) hands out a
ws:// URL to /socket, which says hello and then carries envelopes sent with socket_send().
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.manifest import BOT_SCOPES

Args = dict[str, Any]
# slack_sdk form-encodes these as JSON strings (params, or data= with files); Slack decodes them.
JSON_FIELDS = ("files", "blocks", "attachments", "view", "metadata")
WORKSPACE_URL = "https://ivh-test.slack.com"


@dataclass
class Call:
    method: str
    args: Args
    at: float  # time.monotonic(), the same clock as the event loop's
    fault: str | None = None  # injected by fail()/channel_rate(): "http_429", "http_503", "error:x"
    error: str | None = None  # the Slack error answered, if any ("not_authed", "invalid_auth", ...)


@dataclass
class Message:
    channel: str
    ts: str
    text: str = ""
    blocks: list[Any] | None = None
    thread_ts: str | None = None
    user: str = ""
    bot_id: str = ""
    reply_broadcast: bool = False
    files: list[Args] = field(default_factory=list)  # file shares: id, name, title, size
    metadata: Args | None = None  # message metadata: event_type, event_payload
    history: list[Args] = field(default_factory=list)  # earlier versions, oldest first

    @property
    def updates(self) -> int:
        return len(self.history)


@dataclass
class Ephemeral:
    via: str  # "chat.postEphemeral" or "response_url"
    args: Args
    channel: str | None = None
    user: str | None = None
    text: str = ""
    blocks: list[Any] | None = None


@dataclass
class _Fault:
    status: int
    error: str | None
    retry_after: float | None
    messages: list[str] | None = None  # response_metadata.messages with the error


class SlackError(Exception):
    def __init__(self, error: str, messages: list[str] | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages or []  # response_metadata.messages, as Slack explains


MESSAGE_METHODS = ("chat.postMessage", "chat.update", "chat.postEphemeral")
VIEW_METHODS = ("views.open", "views.update", "views.push", "views.publish")


def check_payload(method: str, args: Args) -> None:
    """Refuse what Slack refuses: blocks or views over Block Kit's limits (slack_sdk's models
    know them), as `invalid_blocks` / `invalid_arguments` with Slack's explanation."""
    try:
        if method in MESSAGE_METHODS and args.get("blocks") is not None:
            blocks = args["blocks"]
            if not isinstance(blocks, list) or len(blocks) > 50:
                raise SlackObjectFormationError("blocks must be a list of at most 50 blocks")
            for raw in blocks:
                block = Block.parse(raw)
                if block is None:
                    raise SlackObjectFormationError(f"unknown block {raw!r:.80}")
                block.to_dict()
        if method in VIEW_METHODS and isinstance(args.get("view"), dict):
            View(**args["view"]).to_dict()
    except (SlackObjectFormationError, TypeError, KeyError) as error:
        code = "invalid_blocks" if method in MESSAGE_METHODS else "invalid_arguments"
        raise SlackError(code, [f"[ERROR] {error}"]) from None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _require(args: Args, *names: str) -> None:
    if any(args.get(name) in (None, "") for name in names):
        raise SlackError("invalid_arguments")


class FakeSlack:
    def __init__(
        self,
        *,
        token: str = "xoxb-test-token",
        app_token: str = "xapp-test",
        strict_channels: bool = False,
    ) -> None:
        self.token = token
        self.app_token = app_token  # the app-level token apps.connections.open accepts
        self.strict_channels = strict_channels
        self.scopes = list(BOT_SCOPES)  # what the bot token was granted: the manifest's
        self.users_unreachable: set[str] = set()  # user ids whose DMs Slack refuses
        self.team_id, self.bot_user_id, self.bot_id = "T0TEST", "U0BOT", "B0BOT"
        self.url = ""
        self.api_url = ""
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemeral: list[Ephemeral] = []
        self.uploads: dict[str, bytes] = {}
        self.groups: dict[str, list[str]] = {}
        self.users: dict[str, Args] = {}
        self.channels: dict[str, str] = {}  # id -> name
        self.views: dict[str, Args] = {}
        self.homes: dict[str, Args] = {}  # user id -> the Home tab view published for them
        self.home_tab_enabled = True  # the manifest's app_home.home_tab_enabled
        self._ids = itertools.count(1)
        self._last_ts = 0  # microseconds; a message's ts is when it was posted, as at Slack
        self._pending_files: dict[str, tuple[str, int]] = {}  # file_id -> (filename, length)
        self._used_triggers: set[str] = set()
        self._expired_triggers: set[str] = set()
        self._faults: dict[str, list[_Fault]] = {}
        self._holds: dict[str, tuple[asyncio.Event, bool]] = {}
        self._claimed_holds: set[str] = set()
        self._response_urls: dict[str, tuple[str, str] | None] = {}
        self._rate: float | None = None
        self._posted_at: dict[str, list[float]] = {}
        self._runner: web.AppRunner | None = None
        self._arrival = asyncio.Event()  # set and replaced on every call
        # Socket Mode: connected clients (newest last), what was sent to them and their acks.
        self.socket_connected = asyncio.Event()  # set while at least one client is connected
        self.socket_envelopes: list[Args] = []
        self.socket_acks: list[Args] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._tickets: set[str] = set()
        self._ack_waiters: dict[str, asyncio.Future[Args]] = {}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        # slack_sdk sends GET for several read methods (users.info, usergroups.users.list, ...).
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{key}", self._response)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/api/"

    async def close(self) -> None:
        for method in list(self._holds):
            self.release(method)
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what tests set up and read --------------------------------------------------------

    def add_channel(self, name: str, channel_id: str | None = None) -> str:
        channel_id = channel_id or f"C{next(self._ids):08d}"
        self.channels[channel_id] = name.lstrip("#")
        return channel_id

    def expire_trigger(self, trigger_id: str) -> None:
        self._expired_triggers.add(trigger_id)

    def response_url(self, key: str, *, channel: str | None = None, ts: str | None = None) -> str:
        """A fresh response_url; with channel and ts, replace_original/delete_original act on it."""
        self._response_urls[key] = (channel, ts) if channel and ts else None
        return f"{self.url}/response/{key}"

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def home_text(self, user: str) -> str:
        """All the text of `user`'s Home tab as last published ("" when none was)."""
        return json.dumps(self.homes.get(user, {}).get("blocks", []), ensure_ascii=False)

    def home_buttons(self, user: str) -> list[Args]:
        """The buttons on `user`'s Home tab, top to bottom."""
        blocks = self.homes.get(user, {}).get("blocks", [])
        return [e for b in blocks if b.get("type") == "actions" for e in b["elements"]]

    def direct_messages(self, user: str) -> list[Message]:
        """What the bot sent `user` in their direct message with it, oldest first."""
        dm = "D" + user[1:]
        return sorted((m for m in self.messages.values() if m.channel == dm), key=lambda m: m.ts)

    def message(self, channel: str, ts: str) -> Message:
        return self.messages[(self._channel_id(channel) or channel, ts)]

    def thread(self, channel: str, ts: str) -> list[Message]:
        channel = self._channel_id(channel) or channel
        replies = [m for m in self.messages.values() if m.channel == channel and m.thread_ts == ts]
        return sorted((m for m in replies if m.ts != ts), key=lambda m: float(m.ts))

    async def wait_for(self, method: str, count: int = 1, within: float = 30.0) -> list[Call]:
        """Wait until `count` calls to `method` have arrived; TimeoutError after `within` s."""
        async with asyncio.timeout(within):
            while len(self.calls_to(method)) < count:
                await self._arrival.wait()
        return self.calls_to(method)

    # --- Socket Mode -----------------------------------------------------------------------

    async def socket_send(
        self,
        type_: str,
        payload: Args,
        *,
        accepts_response_payload: bool = True,
        within: float = 30.0,
    ) -> Args:
        """Send an envelope ("slash_commands", "interactive", "events_api") to the newest
        connected client and return its ack: {"envelope_id": ..., "payload"?: ...}.

        TimeoutError if no client is connected or none acks within `within` seconds (Bolt
        sends no ack when no listener matched or the listener raised before ack())."""
        envelope_id = str(uuid.uuid4())
        envelope: Args = {"envelope_id": envelope_id, "type": type_, "payload": payload}
        envelope["accepts_response_payload"] = accepts_response_payload
        waiter: asyncio.Future[Args] = asyncio.get_running_loop().create_future()
        self._ack_waiters[envelope_id] = waiter
        try:
            async with asyncio.timeout(within):
                while not (open_ := [ws for ws in self._sockets if not ws.closed]):
                    await self.socket_connected.wait()
                    await asyncio.sleep(0.01)  # set, but its connection is just closing
                self.socket_envelopes.append(envelope)
                await open_[-1].send_json(envelope)
                return await waiter
        finally:
            self._ack_waiters.pop(envelope_id, None)

    async def socket_disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask every connected client to reconnect, as Slack does before recycling a server;
        the client fetches a new URL (apps.connections.open) and drops the old connection."""
        for ws in [ws for ws in self._sockets if not ws.closed]:
            await ws.send_json({"type": "disconnect", "reason": reason, "debug_info": {}})

    # --- fault injection -------------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        status: int = 200,
        error: str | None = None,
        retry_after: float | None = None,
        count: int = 1,
        messages: list[str] | None = None,
    ) -> None:
        if status == 200 and error is None:
            raise ValueError("fail() needs an HTTP status other than 200 or a Slack error")
        fault = _Fault(status, error, retry_after, messages)
        self._faults.setdefault(method, []).extend([fault] * count)

    def heal(self, method: str) -> None:
        """Drop the faults still queued for `method`: its next calls are served."""
        self._faults.pop(method, None)

    def hold(self, method: str, *, apply_first: bool = False) -> None:
        """Make the next call to `method` wait for release(); with apply_first, its effect
        (message posted, bytes stored) happens before the wait and only the answer is held."""
        self._holds[method] = (asyncio.Event(), apply_first)

    def release(self, method: str) -> None:
        event, _ = self._holds.pop(method)
        self._claimed_holds.discard(method)
        event.set()

    def channel_rate(self, per_second: float) -> None:
        self._rate = per_second

    # --- HTTP plumbing ---------------------------------------------------------------------

    async def _serve(
        self, method: str, args: Args, run: Callable[[Call], Awaitable[web.Response]]
    ) -> web.Response:
        call = self._record(Call(method, args, time.monotonic()))
        hold = None
        if method in self._holds and method not in self._claimed_holds:
            self._claimed_holds.add(method)
            hold = self._holds[method]
        if hold is not None and not hold[1]:
            await hold[0].wait()
        if faults := self._faults.get(method):
            response = self._fault_response(call, faults.pop(0))
        else:
            response = await run(call)
        if hold is not None and hold[1]:
            await hold[0].wait()
        return response

    def _record(self, call: Call) -> Call:
        self.calls.append(call)
        self._arrival.set()
        self._arrival = asyncio.Event()
        return call

    def _fault_response(self, call: Call, fault: _Fault) -> web.Response:
        if fault.status == 429:
            call.fault, call.error = "http_429", "ratelimited"
            seconds = fault.retry_after if fault.retry_after is not None else 1
            headers = {"Retry-After": str(math.ceil(seconds))}
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers=headers
            )
        if fault.status != 200:
            call.fault = f"http_{fault.status}"
            body = f"<html><body><h1>{fault.status} Server Error</h1></body></html>"
            return web.Response(status=fault.status, text=body, content_type="text/html")
        call.fault, call.error = f"error:{fault.error}", fault.error
        if call.method == "upload":
            return web.Response(status=400, text=str(fault.error))
        body: Args = {"ok": False, "error": fault.error}
        if fault.messages:
            body["response_metadata"] = {"messages": fault.messages}
        return web.json_response(body)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: Args = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json() if request.can_read_body else {})
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for key, value in (await request.post()).items():
                args[key] = value.file.read() if isinstance(value, web.FileField) else value
        for key in JSON_FIELDS:
            if isinstance(args.get(key), str) and args[key][:1] in ("[", "{"):
                args[key] = json.loads(args[key])

        async def run(call: Call) -> web.Response:
            # Each Slack method is served by the method named after it: chat.update -> _chat_update.
            handler: Callable[[Args], Args] | None = getattr(
                self, "_" + method.replace(".", "_"), None
            )
            authorization = request.headers.get("Authorization", "")
            token = authorization.removeprefix("Bearer ") or args.pop("token", "")
            app_level = method.startswith("apps.connections.")  # only app-level tokens
            try:
                if handler is None:
                    raise SlackError("unknown_method")
                if not token:
                    raise SlackError("not_authed")
                if app_level != token.startswith("xapp-"):
                    raise SlackError("not_allowed_token_type")
                if token != (self.app_token if app_level else self.token):
                    raise SlackError("invalid_auth")
                check_payload(method, args)
                # Slack tells a bot token's scopes on every answer (auth.test included).
                scopes = {"X-OAuth-Scopes": ",".join(self.scopes)}
                return web.json_response({"ok": True, **handler(args)}, headers=scopes)
            except SlackError as e:
                call.error = e.error
                body: Args = {"ok": False, "error": e.error}
                if e.messages:
                    body["response_metadata"] = {"messages": e.messages}
                return web.json_response(body)

        if (
            method == "chat.postMessage"
            and self._rate is not None
            and not self._faults.get(method)
            and self._over_rate(str(args.get("channel", "")))
        ):
            self.fail(method, status=429, retry_after=1)
        return await self._serve(method, args, run)

    def _over_rate(self, channel: str) -> bool:
        assert self._rate is not None
        now = time.monotonic()
        recent = [t for t in self._posted_at.get(channel, []) if now - t < 1.0]
        self._posted_at[channel] = recent
        if len(recent) >= self._rate:
            return True
        recent.append(now)
        return False

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        ws = web.WebSocketResponse()  # answers the client's pings itself
        await ws.prepare(request)
        self._sockets.append(ws)
        self.socket_connected.set()
        self._record(Call("socket", {"ticket": ticket}, time.monotonic()))
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets),
                "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                "connection_info": {"app_id": "A0TEST"},
            }
        )
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                ack = json.loads(message.data)
                if isinstance(ack, dict) and "envelope_id" in ack:
                    self.socket_acks.append(ack)
                    waiter = self._ack_waiters.get(str(ack["envelope_id"]))
                    if waiter is not None and not waiter.done():
                        waiter.set_result(ack)
        finally:
            self._sockets.remove(ws)
            if not self._sockets:
                self.socket_connected.clear()
        return ws

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if request.content_type.startswith("multipart/"):
            part = await (await request.multipart()).next()
            data = await part.read() if isinstance(part, web.BodyPartReader) else b""
        else:
            data = await request.read()
        args = {"file_id": file_id, "size": len(data), "content_type": request.content_type}
        # How the bytes came: with a Content-Length, or chunked without one.
        args["content_length"] = request.headers.get("Content-Length")
        args["transfer_encoding"] = request.headers.get("Transfer-Encoding")

        async def run(call: Call) -> web.Response:
            if file_id not in self._pending_files:
                return web.Response(status=404, text="file not found")
            if len(data) != self._pending_files[file_id][1]:
                return web.Response(status=400, text="length mismatch")
            self.uploads[file_id] = data
            return web.Response(text=f"OK - {len(data)}")

        return await self._serve("upload", args, run)

    async def _response(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        args: Args = {"key": key, **(await request.json())}

        async def run(call: Call) -> web.Response:
            text, blocks = args.get("text", ""), args.get("blocks")
            self.ephemeral.append(Ephemeral("response_url", args, text=text, blocks=blocks))
            target = self._response_urls.get(key)
            if target and target in self.messages and _truthy(args.get("delete_original")):
                del self.messages[target]
            elif target and target in self.messages and _truthy(args.get("replace_original")):
                # Unlike chat.update, replace_original replaces the whole message.
                self._edit(self.messages[target], {"text": text, "blocks": blocks})
            return web.json_response({"ok": True})

        return await self._serve("response_url", args, run)

    # --- Slack methods ---------------------------------------------------------------------

    def _next_ts(self) -> str:
        self._last_ts = max(time.time_ns() // 1000, self._last_ts + 1)
        return f"{self._last_ts // 1_000_000}.{self._last_ts % 1_000_000:06d}"

    def _channel_id(self, channel: str) -> str | None:
        if channel.startswith("#"):
            return next((cid for cid, name in self.channels.items() if name == channel[1:]), None)
        return channel if channel in self.channels else None

    def _resolve(self, channel: str) -> str:
        """The id of a channel named by id or "#name"; unknown ones are created unless strict.
        A user id names the bot's direct message with that user (as chat.postMessage has it),
        a D… channel of its own."""
        if channel in self.users_unreachable:
            raise SlackError("user_not_found")
        if re.fullmatch(r"[UW][A-Z0-9]+", channel):
            return self.add_channel(f"dm-{channel}", "D" + channel[1:])
        if found := self._channel_id(channel):
            return found
        if self.strict_channels:
            raise SlackError("channel_not_found")
        if channel.startswith("#"):
            return self.add_channel(channel)
        return self.add_channel(channel.lower(), channel)

    def _as_dict(self, message: Message) -> Args:
        body: Args = {"type": "message", "ts": message.ts, "text": message.text}
        body.update(user=message.user, bot_id=message.bot_id, team=self.team_id)
        if message.blocks is not None:
            body["blocks"] = message.blocks
        if message.thread_ts:
            body["thread_ts"] = message.thread_ts
        if message.metadata is not None:
            body["metadata"] = message.metadata
        if message.files:
            body["files"] = message.files
        return body

    def _edit(self, message: Message, args: Args) -> None:
        message.history.append({"text": message.text, "blocks": message.blocks})
        message.text = args.get("text", message.text)
        message.blocks = args.get("blocks", message.blocks)

    def _auth_test(self, args: Args) -> Args:
        return {
            "url": WORKSPACE_URL + "/",
            "team": "IVH Test",
            "user": "ivh-approvals",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, args: Args) -> Args:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return {"url": f"{self.url.replace('http://', 'ws://')}/socket?ticket={ticket}"}

    def _chat_postMessage(self, args: Args) -> Args:
        _require(args, "channel")
        channel = self._resolve(str(args["channel"]))
        if not (args.get("text") or args.get("blocks") or args.get("attachments")):
            raise SlackError("no_text")
        message = Message(channel, self._next_ts(), args.get("text", ""), args.get("blocks"))
        message.thread_ts = args.get("thread_ts") or None
        message.reply_broadcast = _truthy(args.get("reply_broadcast", False))
        message.user, message.bot_id = self.bot_user_id, self.bot_id
        message.metadata = args.get("metadata")
        self.messages[(channel, message.ts)] = message
        return {"channel": channel, "ts": message.ts, "message": self._as_dict(message)}

    def _conversations_history(self, args: Args) -> Args:
        """Top-level messages (and broadcast replies), newest first, between oldest and latest."""
        _require(args, "channel")
        channel = self._resolve(str(args["channel"]))
        oldest, latest = float(args.get("oldest", 0)), float(args.get("latest", "inf"))
        found = [
            m
            for (cid, _), m in self.messages.items()
            if cid == channel
            and (m.thread_ts is None or m.reply_broadcast)
            and oldest < float(m.ts) <= latest
        ]
        found.sort(key=lambda m: float(m.ts), reverse=True)
        limit = int(args.get("limit", 100))
        metadata = _truthy(args.get("include_all_metadata", False))
        shown = [self._as_dict(m) for m in found[:limit]]
        if not metadata:
            for body in shown:
                body.pop("metadata", None)
        return {"messages": shown, "has_more": len(found) > limit}

    def _conversations_replies(self, args: Args) -> Args:
        """A thread, its parent first, oldest first, `limit` a page (cursor: where to go on)."""
        _require(args, "channel", "ts")
        channel = self._resolve(str(args["channel"]))
        parent = self.messages.get((channel, str(args["ts"])))
        if parent is None:
            raise SlackError("thread_not_found")
        found = [parent, *self.thread(channel, parent.ts)]
        start, limit = int(args.get("cursor") or 0), int(args.get("limit", 100))
        page = found[start : start + limit]
        more = start + limit < len(found)
        return {
            "messages": [self._as_dict(m) for m in page],
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _chat_update(self, args: Args) -> Args:
        _require(args, "channel", "ts")
        channel = self._resolve(str(args["channel"]))
        message = self.messages.get((channel, str(args["ts"])))
        if message is None:
            raise SlackError("message_not_found")
        self._edit(message, args)
        body = {"channel": channel, "ts": message.ts, "text": message.text}
        return {**body, "message": self._as_dict(message)}

    def _chat_postEphemeral(self, args: Args) -> Args:
        _require(args, "channel", "user")
        channel = self._resolve(str(args["channel"]))
        text, blocks, user = args.get("text", ""), args.get("blocks"), args["user"]
        self.ephemeral.append(Ephemeral("chat.postEphemeral", args, channel, user, text, blocks))
        return {"message_ts": self._next_ts()}

    def _chat_getPermalink(self, args: Args) -> Args:
        _require(args, "channel", "message_ts")
        channel, ts = self._resolve(str(args["channel"])), str(args["message_ts"])
        message = self.messages.get((channel, ts))
        if message is None:
            raise SlackError("message_not_found")
        link = f"{WORKSPACE_URL}/archives/{channel}/p{ts.replace('.', '')}"
        if message.thread_ts and message.thread_ts != ts:
            link += f"?thread_ts={message.thread_ts}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def _views_open(self, args: Args) -> Args:
        _require(args, "trigger_id", "view")
        trigger_id = str(args["trigger_id"])
        if trigger_id in self._expired_triggers:
            raise SlackError("expired_trigger_id")
        if trigger_id in self._used_triggers:
            raise SlackError("exchanged_trigger_id")
        self._used_triggers.add(trigger_id)
        view_id = f"V{next(self._ids):08d}"
        view = {**args["view"], "id": view_id, "team_id": self.team_id, "hash": f"h{view_id}"}
        self.views[view_id] = {"state": {"values": {}}, **view}
        return {"view": self.views[view_id]}

    def _views_update(self, args: Args) -> Args:
        _require(args, "view")
        view_id = args.get("view_id")
        if view_id not in self.views:
            raise SlackError("not_found")
        if args.get("hash") and args["hash"] != self.views[view_id]["hash"]:
            raise SlackError("hash_conflict")
        hash_ = f"h{view_id}.{next(self._ids)}"
        self.views[view_id] = {**args["view"], "id": view_id, "hash": hash_}
        return {"view": self.views[view_id]}

    def _views_publish(self, args: Args) -> Args:
        _require(args, "user_id", "view")
        if not self.home_tab_enabled:
            raise SlackError("not_enabled")
        view = args["view"]
        if not isinstance(view, dict) or view.get("type") != "home":
            raise SlackError("invalid_arguments")
        if len(json.dumps(view)) > 250_000:
            raise SlackError("view_too_large")
        user = str(args["user_id"])
        view_id = self.homes.get(user, {}).get("id") or f"V{next(self._ids):08d}"
        self.homes[user] = {**view, "id": view_id, "hash": f"h{view_id}.{next(self._ids)}"}
        return {"view": self.homes[user]}

    def _files_getUploadURLExternal(self, args: Args) -> Args:
        _require(args, "filename", "length")
        if not str(args["length"]).isdigit() or int(args["length"]) < 1:
            raise SlackError("invalid_arguments")
        file_id = f"F{next(self._ids):08d}"
        self._pending_files[file_id] = (str(args["filename"]), int(args["length"]))
        return {"upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def _files_completeUploadExternal(self, args: Args) -> Args:
        _require(args, "files")
        if not isinstance(args["files"], list) or not args["files"]:
            raise SlackError("invalid_arguments")
        files: list[Args] = []
        for item in args["files"]:
            if item.get("id") not in self._pending_files:
                raise SlackError("file_not_found")
            if item["id"] not in self.uploads:
                raise SlackError("invalid_arguments")
            name = self._pending_files[item["id"]][0]
            size = len(self.uploads[item["id"]])
            files.append({"id": item["id"], "name": name, "title": item.get("title", name)})
            files[-1].update(size=size, permalink=f"{WORKSPACE_URL}/files/{item['id']}")
        if args.get("channel_id"):
            channel = self._resolve(str(args["channel_id"]))
            comment = args.get("initial_comment", "")
            message = Message(channel, self._next_ts(), comment, files=files)
            message.thread_ts, message.user = args.get("thread_ts") or None, self.bot_user_id
            self.messages[(channel, message.ts)] = message
        return {"files": files}

    def _usergroups_users_list(self, args: Args) -> Args:
        _require(args, "usergroup")
        if args["usergroup"] not in self.groups:
            raise SlackError("no_such_subteam")
        return {"users": list(self.groups[args["usergroup"]])}

    def _users_info(self, args: Args) -> Args:
        _require(args, "user")
        user_id = str(args["user"])
        user = {"name": f"user-{user_id.lower()}", "real_name": f"User {user_id}"}
        user.update(self.users.get(user_id, {}))
        profile = {"real_name": user["real_name"], "display_name": user["name"]}
        return {"user": {"id": user_id, "team_id": self.team_id, "profile": profile, **user}}

    def _conversations_info(self, args: Args) -> Args:
        _require(args, "channel")
        channel = self._resolve(str(args["channel"]))
        name = self.channels[channel]
        return {"channel": {"id": channel, "name": name, "is_channel": True, "is_member": True}}

    _conversations_join = _conversations_info


@contextlib.asynccontextmanager
async def fake_slack(**options: Any) -> AsyncIterator[FakeSlack]:
    fake = FakeSlack(**options)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
