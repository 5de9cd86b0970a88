"""Shared plumbing for the benchmarks: loopback servers, bot processes, bulk tracking, figures.

Every benchmark starts its own private redis-server, the IVH simulator (in the benchmark's
process, with a latency) and, where Slack is involved, the fake Slack Web API from
tests/fake_slack.py. Bots run as real `ivh-approvals run` processes (`python -m bot.cli run`)
pointed at them. Everything listens on 127.0.0.1 and is stopped when the benchmark ends.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from bot.sim import RunningSimulator, Simulator
from bot.sim import start as start_simulator
from bot.store import SCHEDULE, Store, task_key

ROOT = Path(__file__).resolve().parents[1]
# `tests` is not an installed package: the fake Slack, the private Redis and the signed Slack
# requests live there.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster import RUN, Replica  # noqa: E402
from tests.conftest import RedisProcess, clean_env, wait_for  # noqa: E402
from tests.fake_slack import Call, FakeSlack  # noqa: E402
from tests.harness import (  # noqa: E402
    SIGNING_SECRET,
    block_actions,
    form_body,
    slack_headers,
    slash_command,
)

LATENCY_MS = 50.0  # the simulator's answer delay in every benchmark
LONG = 10_000_000.0  # seconds: a phase that outlasts any benchmark
FAR = 10**9  # seconds from now: "not due" in the schedule
BOT_TOKEN = "xoxb-test-token"  # the token FakeSlack accepts
INTAKE = "bench-intake-token"
DEFAULT_CHANNEL = "CBENCH0001"
__all__ = ["Call", "FakeSlack", "slack_headers"]  # re-exported for the benchmarks
# Start-up warnings every benchmark process logs on purpose; not problems.
_EXPECTED = ("SLACK_BOT_TOKEN not set", "APPROVERS nor APPROVER_GROUP", "`token` will be unused")


# --- the machine and the code under test ----------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return f"{os.cpu_count()} CPUs, {cpu}, {memory} RAM, Python {platform.python_version()}"


def code_version() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "bot", "handlers"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in bot/ or handlers/' if dirty else ''}"


def header(title: str, settings: dict[str, Any]) -> None:
    print(f"== {title}")
    print(f"machine: {machine()}")
    print(f"code:    {code_version()}")
    print("config:  " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(flush=True)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --- figures ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def peak_fixed(times: Sequence[float], origin: float | None = None) -> int:
    """The most arrivals in one 1-second bucket, buckets counted from `origin` (first arrival)."""
    if not times:
        return 0
    start = min(times) if origin is None else origin
    counts: dict[int, int] = {}
    for t in times:
        bucket = int((t - start) // 1)
        counts[bucket] = counts.get(bucket, 0) + 1
    return max(counts.values())


def sliding_counts(times: Sequence[float], window: float = 1.0) -> list[int]:
    """For each arrival: how many arrivals fall in the `window` seconds ending with it."""
    ordered = sorted(times)
    return [i - bisect.bisect_right(ordered, t - window) + 1 for i, t in enumerate(ordered)]


def over_limit(times: Sequence[float], limit: float) -> int:
    """Arrivals that found the sliding second already holding `limit` or more arrivals:
    what a strict sliding-window limiter at `limit` per second would have refused."""
    return sum(1 for count in sliding_counts(times) if count > limit)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # nan -> "-"


def spread(values: Sequence[float], unit: str = "s", scale: float = 1.0) -> str:
    """p50 / p95 / p99 / max of `values` (times `scale`), for one line of output."""
    if not values:
        return "no values"
    parts = [f"p{p} {percentile(values, p) * scale:.2f}" for p in (50, 95, 99)]
    return "  ".join([*parts, f"max {max(values) * scale:.2f} {unit}", f"(n={len(values)})"])


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


class LoopLag:
    """How late this process's event loop wakes up (the simulator and fake Slack run in it):
    when it lags, the simulator's arrival times bunch up and its per-second peaks overstate."""

    def __init__(self, period: float = 0.02) -> None:
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.monotonic() - started - self.period)

    def start(self) -> None:
        self.worst = 0.0
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.worst


# --- servers ---------------------------------------------------------------------------------


def _proc_status(pid: int, name: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM); 0 when the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class BotProcess(Replica):
    """One `ivh-approvals run` process (the tests' cluster replica), with what it cost."""

    def rss_mb(self) -> float:
        return _proc_status(self.pid or 0, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return _proc_status(self.pid or 0, "VmHWM") / 1024

    def cpu(self) -> float:
        return cpu_seconds(self.pid or 0)

    def problems(self) -> Counter[str]:
        """WARNING and worse log lines, ids and numbers blanked out, counted by kind."""
        kinds: Counter[str] = Counter()
        for line in self.log_text().splitlines():
            found = re.search(r" (WARNING|ERROR|CRITICAL) (\S+): (.*)", line)
            if found is None or any(e in found[3] for e in _EXPECTED):
                continue
            text = re.sub(r"\(RequestID [^)]*\)", "", found[3])
            text = re.sub(r"[\w-]*\d[\w.-]*", "#", text)
            kinds[f"{found[1]} {found[2]}: {text[:100]}"] += 1
        return kinds

    async def wait_healthy(self, within: float = 60.0) -> None:
        async def healthy() -> bool:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.tail(20)}")
            return await self.healthy()

        await wait_for(healthy, within, f"{self.name} healthy", every=0.1, detail=self.tail)


@dataclass
class Lab:
    """The servers of one benchmark, and the bot processes it started."""

    workdir: Path
    redis_server: RedisProcess
    redis: Redis
    store: Store
    sim: Simulator
    running_sim: RunningSimulator
    fake: FakeSlack | None
    bots: list[BotProcess] = field(default_factory=list)

    def env(
        self,
        *,
        qps: float,
        interval: float,
        slack: bool,
        channel: str = DEFAULT_CHANNEL,
        **extra: Any,
    ) -> dict[str, str]:
        settings: dict[str, Any] = {
            "DATA_DIR": self.workdir / "data",
            "REDIS_URL": self.redis_server.url,
            "IVH_BASE_URL": self.running_sim.url,
            "IVH_APPKEY": self.sim.appkey,
            "IVH_ACCESS_TOKEN": self.sim.access_token,
            "IVH_MAX_QPS": qps,
            "POLL_INTERVAL": interval,
            "INTAKE_TOKEN": INTAKE,
            "LOG_LEVEL": "INFO",
        }
        if slack:
            assert self.fake is not None
            settings |= {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": self.fake.api_url,
                "SLACK_CHANNEL": channel,
                # The simulator serves the demo videos, on its own port.
                "VIDEO_HOSTS": httpx.URL(self.running_sim.url).netloc.decode(),
            }
        return clean_env(**{k: str(v) for k, v in (settings | extra).items()})

    def spawn(
        self, name: str, *, qps: float, interval: float, slack: bool, **extra: Any
    ) -> BotProcess:
        env = self.env(qps=qps, interval=interval, slack=slack, **extra)
        # Its log is <workdir>/<name>-<n>.log; its cwd the workdir, where no .env file is.
        bot = BotProcess(f"{name}-{len(self.bots)}", self.workdir, env, RUN)
        bot.start()
        self.bots.append(bot)
        return bot

    async def start_bots(
        self, count: int, *, qps: float, interval: float, slack: bool, **extra: Any
    ) -> list[BotProcess]:
        """Start `count` replicas and wait until each answers /healthz."""
        bots = [
            self.spawn(f"replica{i + 1}", qps=qps, interval=interval, slack=slack, **extra)
            for i in range(count)
        ]
        await asyncio.gather(*(bot.wait_healthy() for bot in bots))
        return bots

    async def stop_bots(self) -> None:
        await asyncio.gather(*(bot.stop(within=20) for bot in self.bots))
        self.bots.clear()

    async def reset(self) -> None:
        """Stop the bots and empty Redis, the simulator's request log and the fake's records."""
        await self.stop_bots()
        await self.redis.flushall()
        self.sim.requests.clear()
        if self.fake is not None:
            self.fake.calls.clear()

    def create_tasks(
        self, ids: Iterable[str], *, audit: float = 0.0, train: float = LONG, **options: Any
    ) -> None:
        """Simulated tasks (kept when they exist): by default training for longer than any run."""
        for task_id in ids:
            if task_id not in self.sim.tasks:
                self.sim.create_task(task_id, audit_seconds=audit, train_seconds=train, **options)

    async def track(
        self,
        ids: Sequence[str],
        *,
        channel: str | None = None,
        channels: dict[str, str] | None = None,
        title: str | None = None,
        due: float | None = None,
        dues: dict[str, float] | None = None,
        concurrency: int = 32,
    ) -> float:
        """Track tasks through the store (what POST /tasks does), `concurrency` at a time.

        `due` (or `dues`, per task) is when they are first due for a poll (their `tracked_at`);
        FAR from now keeps them waiting for release(). Returns the seconds it took.
        """
        started = time.monotonic()
        limit = asyncio.Semaphore(concurrency)

        async def one(task_id: str) -> None:
            async with limit:
                where = channels.get(task_id, channel) if channels else channel
                await self.store.track(
                    task_id,
                    channel=where,
                    title=title or task_id,
                    tracked_by="bench",
                    now=dues.get(task_id, due) if dues else due,
                )

        await asyncio.gather(*(one(task_id) for task_id in ids))
        return time.monotonic() - started

    async def release(self, ids: Sequence[str], at: float | None = None) -> float:
        """Make tracked tasks due at `at` (now) in one step: a thundering start on purpose."""
        when = time.time() if at is None else at
        async with self.redis.pipeline(transaction=True) as pipe:
            for start in range(0, len(ids), 1000):
                pipe.zadd(SCHEDULE, dict.fromkeys(ids[start : start + 1000], when), xx=True)
            await pipe.execute()
        return when

    async def redis_info(self, section: str) -> dict[str, Any]:
        return dict(await self.redis.info(section))

    async def redis_cpu(self) -> float:
        info = await self.redis_info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def getprogress_since(self, index: int) -> tuple[list[dict[str, Any]], int]:
        """The simulator's getprogress requests logged after position `index`, and the end."""
        new = self.sim.requests[index:]
        return [r for r in new if r["action"] == "getprogress"], index + len(new)


@contextlib.asynccontextmanager
async def lab(*, latency_ms: float = LATENCY_MS, slack: bool = False) -> AsyncIterator[Lab]:
    """Redis, the IVH simulator (tasks train for LONG unless told) and optionally fake Slack."""
    with tempfile.TemporaryDirectory(prefix="ivh-bench-") as folder:
        workdir = Path(folder)
        server = RedisProcess(workdir, fsync="everysec")  # production-like persistence
        server.start()
        redis = Redis.from_url(server.url, socket_timeout=30)
        sim = Simulator(audit_seconds=0, train_seconds=LONG, latency_ms=latency_ms)
        running = await start_simulator(sim)
        fake: FakeSlack | None = None
        the_lab: Lab | None = None
        try:
            if slack:
                fake = FakeSlack()
                await fake.start()
            the_lab = Lab(workdir, server, redis, Store(redis), sim, running, fake)
            yield the_lab
        finally:
            if the_lab is not None:
                await the_lab.stop_bots()
            if fake is not None:
                await fake.close()
            await running.close()
            await redis.aclose()
            server.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, within: float, every: float = 0.2, what: str = ""
) -> bool:
    """tests' wait_for, but a benchmark reports what it got instead of failing: False after
    `within` seconds (never raises)."""
    try:
        await wait_for(check, within, what or "condition", every=every)
    except AssertionError:
        if what:
            say(f"gave up waiting for {what} after {within:.0f}s")
        return False
    return True


async def all_polled(store: Store, ids: Sequence[str], batch: int = 500) -> bool:
    """Has every task a stored snapshot (polled at least once)?"""
    for start in range(0, len(ids), batch):
        async with store.redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + batch]:
                pipe.hget(task_key(task_id), "snapshot")
            values = await pipe.execute()
        if not all(values):
            return False
    return True


# --- Slack requests, signed as Slack signs them -------------------------------------------------


def click_body(
    fake: FakeSlack, *, action_id: str, value: str, user: str, channel: str, key: str
) -> str:
    """A block_actions request body: a click on a decision button in `channel`."""
    payload = block_actions(
        fake.team_id,
        action_id,
        value,
        user=user,
        trigger_id=f"trigger-{key}",
        response_url=fake.response_url(key),
        channel=channel,
        app_id="A0BENCH",
    )
    return form_body(payload)


def command_body(fake: FakeSlack, text: str, *, user: str, channel: str, key: str) -> str:
    form = slash_command(
        fake.team_id,
        text,
        user=user,
        channel=channel,
        response_url=fake.response_url(key),
        trigger_id=f"trigger-{key}",
    )
    return urllib.parse.urlencode(form)


def problem_summary(bots: Sequence[BotProcess], top: int = 4) -> tuple[int, str]:
    """How many WARNING+ lines the replicas logged, and the commonest kinds."""
    kinds: Counter[str] = Counter()
    for bot in bots:
        kinds.update(bot.problems())
    text = "; ".join(f"{count} x {kind}" for kind, count in kinds.most_common(top))
    return sum(kinds.values()), text


def parent_posts(fake: FakeSlack, channels: Iterable[str]) -> dict[str, list[float]]:
    """Accepted top-level chat.postMessage calls per channel: when each arrived (monotonic)."""
    wanted = set(channels)
    found: dict[str, list[float]] = {}
    for call in fake.calls:
        if call.method != "chat.postMessage" or call.fault or call.error:
            continue
        channel = str(call.args.get("channel", ""))
        if channel in wanted and not call.args.get("thread_ts"):
            found.setdefault(channel, []).append(call.at)
    return found
