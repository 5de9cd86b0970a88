"""Assembles one bot process from its settings: Redis, IVH, poller, Slack side, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import httpx
from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError

import handlers
from bot.aio import LoopCrashed
from bot.approvers import Approvers
from bot.config import Settings, SettingsError, listen_error
from bot.decisions import Decider
from bot.embedded import start_embedded
from bot.home import Home
from bot.hosts import HostPolicy
from bot.ivh import IvhClient
from bot.metrics import Metrics
from bot.poller import Poller
from bot.publisher import Publisher
from bot.ratelimit import RedisRateLimiter
from bot.reminders import Policy, Reminders, mentions
from bot.schedule import Schedule
from bot.slack import ChannelPace, Thread, make_client
from bot.store import IVH_RATE, Store
from bot.web import add_slack_route, make_web_app
from handlers.handoff import Handoff

if TYPE_CHECKING:
    from bot.sim import Simulator

log = logging.getLogger(__name__)

HEALTH_KEYS = ("redis", "poller", "publisher")  # what /healthz answers, always all of them
REDIS_POOL = 64  # connections per process; a burst beyond waits for a free one
REDIS_WARM = 48  # opened at start: a replica's share of a burst of 100 clicks, and then some
PREPARE_SECONDS = 10  # start-up's one-time work waits this long for Redis, then goes on

# The demo's poller reads every tracked task from its simulator, which makes up any id it is
# asked about: it must not meet real tasks, in another Redis or in a `run`'s embedded one.
DEMO_WITH_REDIS_URL = (
    "configuration error: REDIS_URL: the demo keeps its simulated tasks in its own embedded"
    " Redis (under DATA_DIR); unset REDIS_URL, else the demo would read that Redis's tasks"
    " from the simulator"
)
DEMO_SHARED_DATA_DIR = (
    "configuration error: DATA_DIR: another ivh-approvals process runs the embedded Redis under"
    " {}; stop it, or give the demo another DATA_DIR"
)
MISSING_IVH_KEYS = (
    "configuration error: IVH_APPKEY, IVH_ACCESS_TOKEN: required by `run` (the IVH console's"
    " app key and access token); the built-in simulator is for `ivh-approvals demo` and"
    " `ivh-approvals simulate`"
)


@dataclass(frozen=True)
class Upstreams:
    """Where Redis and IVH are: from the settings, or the embedded Redis and demo simulator."""

    redis_url: str
    ivh_base_url: str
    ivh_appkey: str
    ivh_access_token: str
    simulator: Simulator | None = None  # the built-in one, in the demo only


@contextlib.asynccontextmanager
async def upstreams(settings: Settings, *, simulator: bool = False) -> AsyncIterator[Upstreams]:
    """Start the embedded Redis when REDIS_URL is unset, and with `simulator` (the demo) the
    built-in IVH simulator; else IVH is the one the settings name."""
    async with contextlib.AsyncExitStack() as stack:
        redis_url = settings.REDIS_URL
        if redis_url is None:
            redis_url, server = await start_embedded(settings.DATA_DIR)
            if server is not None:
                stack.callback(server.stop)
            elif simulator:
                raise SettingsError(DEMO_SHARED_DATA_DIR.format(settings.DATA_DIR))
        if not simulator:
            if not (settings.IVH_APPKEY and settings.IVH_ACCESS_TOKEN):
                raise SettingsError(MISSING_IVH_KEYS)
            yield Upstreams(
                redis_url,
                settings.IVH_BASE_URL,
                settings.IVH_APPKEY,
                settings.IVH_ACCESS_TOKEN.get_secret_value(),
            )
            return
        from bot.sim import Simulator, start  # the demo's only: `run` never loads it

        sim = Simulator(audit_seconds=10, train_seconds=30, auto_create=True)
        running = await start(sim)
        stack.push_async_callback(running.close)
        log.warning(
            "demo: using the built-in IVH simulator at %s (simulated tasks only; any task id"
            " you track is created there)",
            running.url,
        )
        yield Upstreams(redis_url, running.url, sim.appkey, sim.access_token, sim)


@dataclass
class SlackSide:
    bolt: AsyncApp
    publisher: Publisher
    media: httpx.AsyncClient
    session: aiohttp.ClientSession  # every Slack call's keep-alive connections
    handoff: Handoff  # work started after acks
    reminders: Reminders
    home: Home


@dataclass
class Runtime:
    """The long-lived objects of one process, passed to whatever needs them."""

    settings: Settings
    redis: Redis
    store: Store
    ivh: IvhClient
    poller: Poller
    slack: SlackSide | None = None
    metrics: Metrics = field(default_factory=Metrics)
    slack_accepted: bool | None = None  # auth.test at start: None until Slack answered

    @classmethod
    def build(cls, settings: Settings, up: Upstreams) -> Runtime:
        # A blocking pool: a burst waits for a free connection instead of failing with
        # "Too many connections" (redis-py's default pool raises). A command that meets a
        # connection Redis closed (it restarted) is sent again on a new one: retried, with
        # backoff, instead of failing once per pooled connection.
        pool = BlockingConnectionPool.from_url(
            up.redis_url,
            max_connections=REDIS_POOL,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
        )
        redis = Redis(connection_pool=pool)
        store = Store(redis, audit_retention_days=settings.AUDIT_RETENTION_DAYS)
        metrics = Metrics()
        limiter = RedisRateLimiter(redis, IVH_RATE, settings.IVH_MAX_QPS)
        ivh = IvhClient(
            up.ivh_base_url,
            up.ivh_appkey,
            up.ivh_access_token,
            timeout=httpx.Timeout(settings.IVH_TIMEOUT, connect=min(5.0, settings.IVH_TIMEOUT)),
            limiter=limiter,
            observe=metrics.ivh_answered,
        )
        schedule = Schedule(
            settings.POLL_INTERVAL, settings.POLL_SLOW_INTERVAL, settings.TRAIN_MIN_SECONDS
        )
        if up.simulator is not None:
            schedule = Schedule(settings.POLL_INTERVAL)  # simulated stages last seconds
        poller = Poller(
            store,
            ivh,
            interval=settings.POLL_INTERVAL,
            max_qps=settings.IVH_MAX_QPS,
            schedule=schedule,
            cycle=metrics.poll_cycle.observe,
        )
        runtime = cls(settings, redis, store, ivh, poller, metrics=metrics)
        if settings.SLACK_BOT_TOKEN is not None:
            video_hosts = settings.video_hosts
            if up.simulator is not None:
                # The built-in simulator serves its demo videos from loopback.
                simulator = httpx.URL(up.ivh_base_url)
                video_hosts = video_hosts.including(simulator.host, simulator.port)
            runtime.slack = runtime._build_slack(
                settings.SLACK_BOT_TOKEN.get_secret_value(), video_hosts
            )
        return runtime

    def _build_slack(self, token: str, video_hosts: HostPolicy) -> SlackSide:
        settings = self.settings
        # One keep-alive session for all Slack calls; aiohttp needs the running loop here.
        session = aiohttp.ClientSession()
        client = make_client(
            token, settings.SLACK_API_URL, session=session, on_error=self.metrics.slack_failed
        )
        pace = ChannelPace(self.redis, settings.SLACK_POSTS_PER_SECOND)
        thread = Thread(
            self.store,
            client,
            settings.SLACK_CHANNEL,
            pace,
            metrics=self.metrics,
            required_approvals=settings.REQUIRED_APPROVALS,
        )
        approvers = Approvers(settings.APPROVERS, settings.APPROVER_GROUP, client)
        if approvers.anyone:
            log.warning("neither APPROVERS nor APPROVER_GROUP is set: anyone may decide")
        decider = Decider(
            self.store,
            self.ivh,
            thread,
            approvers,
            claim_ttl=settings.DECISION_CLAIM_SECONDS,
            prevent_self_approval=settings.PREVENT_SELF_APPROVAL,
            required_approvals=settings.REQUIRED_APPROVALS,
            reject_categories=settings.REJECT_CATEGORIES,
        )
        # Redirects are followed by bot.video, each hop re-checked; no proxies from the
        # environment (they would bypass the pinned, checked address).
        media = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.VIDEO_TIMEOUT, connect=10.0),
            follow_redirects=False,
            trust_env=False,
        )
        publisher = Publisher(
            self.store,
            thread,
            media,
            video_hosts=video_hosts,
            video_max_bytes=settings.VIDEO_MAX_BYTES,
            video_time_limit=settings.VIDEO_TIMEOUT,
            reclaim_after=settings.EVENT_RECLAIM_SECONDS,
            settle_after=settings.DECISION_SETTLE_SECONDS,
        )
        secret = settings.SLACK_SIGNING_SECRET
        bolt = AsyncApp(
            client=client,
            signing_secret=secret.get_secret_value() if secret else "",
            # bot/web.py verifies every HTTP-mode request before anything parses it (a forged or
            # stale one gets 401 and costs nothing); Socket Mode needs no signature. Verifying
            # again in bolt would only spend the ack's time twice.
            request_verification_enabled=False,
            # Listeners ack, hand the rest to `handoff` and return: bolt answers as soon as
            # they do, instead of polling every 10 ms for the ack while the rest runs.
            process_before_response=True,
        )
        handoff = Handoff()
        home = Home(
            self.store,
            client,
            approvers,
            required_approvals=settings.REQUIRED_APPROVALS,
            prevent_self_approval=settings.PREVENT_SELF_APPROVAL,
            every=settings.HOME_REFRESH_SECONDS,
        )
        handlers.register(
            bolt,
            store=self.store,
            decider=decider,
            approvers=approvers,
            on_track=self.poller.wake,
            handoff=handoff,
            home=home,
        )
        reminders = Reminders(
            self.store,
            thread,
            Policy(
                remind_after=settings.REMIND_AFTER,
                remind_every=settings.REMIND_EVERY or settings.REMIND_AFTER or 1.0,
                escalate_after=settings.ESCALATE_AFTER,
                escalate_to=mentions(settings.ESCALATE_TO),
                quiet=settings.quiet_hours,
            ),
            approvers.describe,
            sent=self.metrics.reminded,
        )
        return SlackSide(bolt, publisher, media, session, handoff, reminders, home)

    async def prepare(self) -> None:
        """One-time work at start-up, before the loops: the rounds an earlier version left
        waiting for a decision join /ivh pending, the reminders and the escalations (that
        version kept none of them; a round is put there when it starts)."""
        try:
            async with asyncio.timeout(PREPARE_SECONDS):
                queued = await self.store.queue_earlier_waiting()
        except (RedisError, TimeoutError) as error:
            log.warning(
                "rounds left waiting by an earlier version not queued (Redis: %s); they are at"
                " the next start",
                error or "slow",
            )
            return
        if queued:
            log.info("%d round(s) left waiting by an earlier version: in /ivh pending now", queued)

    async def health(self) -> dict[str, bool]:
        """/healthz: the same keys whatever is configured (HEALTH_KEYS, README).

        A part that is not configured has nothing that can fail: without Slack no publisher
        runs, and `publisher` is true.
        """
        try:
            redis_ok = await asyncio.wait_for(self.store.ping(), timeout=2)
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        publisher_ok = self.slack is None or self.slack.publisher.running
        return {"redis": redis_ok, "poller": self.poller.healthy, "publisher": publisher_ok}

    async def readiness(self) -> dict[str, bool]:
        """/readyz, for orchestrators: Redis answers, the loops have started, and Slack took
        the bot token (asked once, at start or on the first look after a failure)."""
        health = await self.health()
        return {
            "redis": health["redis"],
            "loops": health["poller"] and health["publisher"],
            "slack": await self.slack_credentials_accepted(),
        }

    async def slack_credentials_accepted(self) -> bool:
        """Whether Slack accepted SLACK_BOT_TOKEN (auth.test); true without Slack."""
        if self.slack is None or self.slack_accepted:
            return True
        try:
            async with asyncio.timeout(3):
                await self.slack.bolt.client.auth_test()
        except SlackApiError as error:
            log.error("Slack refused SLACK_BOT_TOKEN: %s", error.response.get("error"))
            self.slack_accepted = False
            return False
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.warning("Slack did not answer auth.test (%s)", error or "timeout")
            return False
        self.slack_accepted = True
        return True

    async def render_metrics(self) -> bytes:
        return await self.metrics.render(self.store, self.ivh.circuit)

    def web_app(self) -> web.Application:
        app = make_web_app(
            self.store,
            intake_token=self.settings.INTAKE_TOKEN,
            health=self.health,
            ready=self.readiness,
            render_metrics=self.render_metrics,
            on_track=self.poller.wake,
        )
        secret = self.settings.SLACK_SIGNING_SECRET
        if self.slack is not None and not self.settings.socket_mode and secret is not None:
            add_slack_route(app, self.slack.bolt, secret.get_secret_value())
        return app

    async def aclose(self) -> None:
        if self.slack is not None:
            await self.slack.handoff.aclose()
            await self.slack.session.close()
            await self.slack.media.aclose()
        await self.ivh.aclose()
        await self.redis.aclose()


async def _socket_mode(bolt: AsyncApp, app_token: str) -> contextlib.AsyncExitStack:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    handler = AsyncSocketModeHandler(bolt, app_token)
    stack = contextlib.AsyncExitStack()
    stack.push_async_callback(handler.close_async)
    try:
        # connect_async() retries every 10 s, forever, when apps.connections.open fails:
        # fetch the URL once here so that a wrong app token stops the start-up.
        handler.client.wss_uri = await handler.client.issue_new_wss_url()
        await asyncio.wait_for(handler.connect_async(), timeout=30)
    except BaseException:
        await stack.aclose()
        raise
    log.info("connected to Slack in Socket Mode")
    return stack


def _stop_if_crashed(task: asyncio.Task[None], stop: asyncio.Event, crashed: list[str]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("%s stopped unexpectedly", task.get_name(), exc_info=task.exception())
        crashed.append(task.get_name())
        stop.set()


def check_port(host: str, port: int) -> None:
    """Fail before anything starts when PORT is taken, instead of after Redis and IVH are up.

    The server's own bind (below) still reports a port taken in between.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return  # the server's bind says what is wrong with HOST
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio's server does: a port left in TIME_WAIT is free, one listened on is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise listen_error("PORT", host, port, error) from None


async def serve(settings: Settings, stop: asyncio.Event, *, demo: bool = False) -> None:
    """Run the HTTP server, the poller and the publisher until `stop` is set.

    With `demo`, IVH is always the built-in simulator and one demo task is seeded; without
    it, IVH keys are required: `run` never quietly talks to a simulator.
    """
    if demo:
        if settings.REDIS_URL is not None:
            raise SettingsError(DEMO_WITH_REDIS_URL)
        settings = settings.model_copy(update={"IVH_APPKEY": None, "IVH_ACCESS_TOKEN": None})
    elif not settings.ivh_configured:
        raise SettingsError(MISSING_IVH_KEYS)
    check_port(settings.HOST, settings.PORT)
    if settings.INTAKE_TOKEN is None:
        log.warning("INTAKE_TOKEN not set: POST /tasks refuses every request")
    if not settings.slack_configured and not demo:
        log.warning("SLACK_BOT_TOKEN not set: running the Tencent side only (no Slack messages)")
    if settings.REDIS_URL is None and not demo:
        log.warning(
            "REDIS_URL not set: this process keeps its state in an embedded Redis under"
            " DATA_DIR (%s); replicas of `run` need one shared Redis: set REDIS_URL to run more"
            " than one",
            settings.DATA_DIR,
        )
    async with upstreams(settings, simulator=demo) as up, contextlib.AsyncExitStack() as stack:
        runtime = Runtime.build(settings, up)
        stack.push_async_callback(runtime.aclose)
        try:
            async with asyncio.timeout(5):
                await runtime.store.open_connections(REDIS_WARM)
        except (RedisError, TimeoutError) as error:
            log.warning("Redis unavailable at start (%s); the loops wait for it", error or "slow")
        if not await runtime.slack_credentials_accepted() and runtime.slack_accepted is False:
            raise SettingsError(
                "configuration error: SLACK_BOT_TOKEN: Slack refused it (see the line above);"
                " copy the Bot User OAuth Token (xoxb-…) again"
            )
        runner = web.AppRunner(runtime.web_app(), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(runner, settings.HOST, settings.PORT).start()
        except OSError as error:
            raise listen_error("PORT", settings.HOST, settings.PORT, error) from None
        log.info("listening on http://%s:%d", settings.HOST, settings.PORT)
        demo_task = None
        if demo:
            from bot.demo import retire_earlier_demos, seed_demo, tell_progress, where_to_watch
        if demo and up.simulator is not None:
            # Before the poller starts: it must not poll an earlier run's task even once.
            retired = await retire_earlier_demos(runtime.store)
            if retired:
                log.info("demo: no longer polling earlier demo tasks %s", ", ".join(retired))
            demo_task = await seed_demo(runtime.store, up.simulator)
        await runtime.prepare()
        loops = [asyncio.create_task(runtime.poller.run(), name="poller")]
        if runtime.slack is not None:
            loops.append(asyncio.create_task(runtime.slack.publisher.run(), name="publisher"))
            loops.append(asyncio.create_task(runtime.slack.reminders.run(), name="reminders"))
            loops.append(asyncio.create_task(runtime.slack.home.run(), name="app home"))
            if settings.SLACK_APP_TOKEN is not None:
                try:
                    socket_mode = await _socket_mode(
                        runtime.slack.bolt, settings.SLACK_APP_TOKEN.get_secret_value()
                    )
                except SlackApiError as error:
                    code = error.response.get("error", "refused")
                    raise SettingsError(
                        f"configuration error: SLACK_APP_TOKEN: Slack answered {code}"
                        " (an app-level token with connections:write is needed)"
                    ) from None
                stack.push_async_callback(socket_mode.aclose)
        crashed: list[str] = []
        for loop in loops:
            loop.add_done_callback(lambda task: _stop_if_crashed(task, stop, crashed))
        if demo_task is not None:
            slack = runtime.slack is not None
            log.warning("%s", where_to_watch(demo_task, slack=slack))
            progress = tell_progress(runtime.store, demo_task, slack=slack, sim_url=up.ivh_base_url)
            loops.append(asyncio.create_task(progress, name="demo progress"))
        await stop.wait()
        log.info("stopping")
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    if crashed:
        raise LoopCrashed(", ".join(crashed))
    log.info("stopped")
