"""Several real `python -m bot.cli run` processes sharing one Redis, driven from one event loop.

Used by tests/test_replicas.py, bench/chaos.py and (its Replica) bench/common.py. The IVH
simulator and the fake Slack run in the caller's event loop, so everything here waits with
`await`, never by blocking. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yarl
from aiohttp import web
from redis.asyncio import Redis

from bot.sim import RunningSimulator
from bot.store import EVENTS_STREAM, SCHEDULE, Store, TaskRecord, claim_key
from tests.conftest import clean_env, free_port, wait_for
from tests.fake_slack import FakeSlack, Message
from tests.harness import (
    CHANNEL,
    SIGNING_SECRET,
    block_actions,
    events_published,
    form_body,
    slack_headers,
    task_posted,
    view_submission,
)

ROOT = Path(__file__).resolve().parents[1]
INTAKE = "replica-intake-token"

RUN = [sys.executable, "-m", "bot.cli", "run"]


# --- one process ----------------------------------------------------------------------------


class Replica:
    """One `run` process: started, SIGKILLed and restarted by its pid only."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], argv: list[str]) -> None:
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.env = env | {"PORT": str(self.port), "HOST": "127.0.0.1"}
        self.argv = argv
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        assert not self.alive, f"{self.name} is running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the driver
            )

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.kills += 1

    async def stop(self, within: float = 10) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop in time. Returns the exit code."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, within)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 10)
        return process.returncode

    async def healthy(self, http: httpx.AsyncClient | None = None) -> bool:
        try:
            if http is not None:
                return (await http.get(f"{self.url}/healthz", timeout=2)).status_code == 200
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{self.url}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# --- a tap on the way to IVH: which replica sent which request ------------------------------


class IvhTap:
    """Forwards /<tag>/... to the simulator, noting which replica (tag) sent each request."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.url = ""
        self.calls: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tag}/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def base_for(self, tag: str) -> str:
        return f"{self.url}/{tag}"

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        try:
            header = json.loads(body)
        except ValueError:
            header = {}
        tail = request.match_info["tail"]
        self.calls.append(
            {
                "tag": request.match_info["tag"],
                "t": time.time(),
                "action": tail.rsplit("/", 1)[-1],
                "request_id": (header.get("Header") or {}).get("RequestID"),
                "task_id": (header.get("Payload") or {}).get("TaskId"),
            }
        )
        raw_query = request.rel_url.raw_query_string
        target = yarl.URL(f"{self.target}/{tail}?{raw_query}", encoded=True)
        headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
        async with self._session.request(
            request.method, target, data=body, headers=headers
        ) as answer:
            data = await answer.read()
            kind = answer.headers.get("Content-Type", "application/octet-stream")
            return web.Response(status=answer.status, body=data, headers={"Content-Type": kind})


# --- the cluster -----------------------------------------------------------------------------


class Cluster:
    """N replicas, the simulator and the fake Slack of the caller, one shared Redis."""

    def __init__(
        self,
        sim: RunningSimulator,
        fake: FakeSlack,
        redis_url: str,
        workdir: Path,
        *,
        replicas: int = 3,
        argv: list[str] | None = None,
        tap: bool = False,
        **settings: str,
    ) -> None:
        self.sim = sim
        self.fake = fake
        self.redis_url = redis_url
        self.workdir = workdir
        self.tap = IvhTap(sim.url) if tap else None
        self._count = replicas
        self._argv = argv or RUN
        if "POLL_INTERVAL" in settings and "POLL_SLOW_INTERVAL" not in settings:
            settings["POLL_SLOW_INTERVAL"] = settings["POLL_INTERVAL"]  # a flat schedule
        self._settings = settings
        self.replicas: list[Replica] = []
        self.redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.store = Store(self.redis)
        self.http = httpx.AsyncClient(timeout=30)
        self._clicks = 0
        self.last_trigger = ""

    def _env(self, name: str) -> dict[str, str]:
        ivh_url = self.tap.base_for(name) if self.tap else self.sim.url
        values = {
            "SLACK_BOT_TOKEN": self.fake.token,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.fake.api_url,
            "SLACK_CHANNEL": CHANNEL,
            "SLACK_POSTS_PER_SECOND": "100",
            "IVH_APPKEY": self.sim.sim.appkey,
            "IVH_ACCESS_TOKEN": self.sim.sim.access_token,
            "IVH_BASE_URL": ivh_url,
            "IVH_MAX_QPS": "200",
            "IVH_TIMEOUT": "5",
            "POLL_INTERVAL": "0.3",
            "POLL_SLOW_INTERVAL": "0.3",
            "REDIS_URL": self.redis_url,
            "INTAKE_TOKEN": INTAKE,
            "VIDEO_HOSTS": httpx.URL(self.sim.url).netloc.decode(),  # its demo videos
            "DATA_DIR": str(self.workdir / name / "data"),
            "LOG_LEVEL": "INFO",
        }
        # The processes import this checkout's `bot` (as the tests do), not whatever is installed.
        here = {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        return clean_env(**(here | values | self._settings))

    async def start(self, within: float = 30, *, wait: bool = True) -> Cluster:
        """Start every replica; with `wait`, until each answers /healthz with 200."""
        if self.tap is not None:
            await self.tap.start()
        for n in range(self._count):
            name = f"r{n}"
            self.replicas.append(Replica(name, self.workdir / name, self._env(name), self._argv))
        for replica in self.replicas:
            replica.start()
        if wait:
            await self.wait_healthy(self.replicas, within)
        return self

    async def wait_healthy(self, replicas: Iterable[Replica], within: float = 30) -> None:
        replicas = list(replicas)

        async def all_healthy() -> bool:
            for replica in replicas:
                if not replica.alive:
                    raise AssertionError(f"{replica.name} exited:\n{replica.tail()}")
            return all(await asyncio.gather(*(r.healthy(self.http) for r in replicas)))

        await wait_for(all_healthy, within, "replicas healthy", every=0.2, detail=self.tails)

    async def restart(self, replica: Replica, within: float = 30) -> None:
        replica.kill()
        replica.start()
        await self.wait_healthy([replica], within)

    async def close(self, *, graceful: bool = False) -> None:
        """Stop every replica: SIGTERM with `graceful`, else SIGKILL (quicker; tests that
        check a clean stop are in test_run.py)."""
        if graceful:
            await asyncio.gather(*(r.stop(within=5) for r in self.replicas))
        for replica in self.replicas:
            replica.kill()
        await self.http.aclose()
        await self.redis.aclose()
        if self.tap is not None:
            await self.tap.close()

    def tails(self) -> str:
        return "\n".join(f"--- {r.name} (pid {r.pid})\n{r.tail()}" for r in self.replicas)

    def by_pid(self, pid: int) -> Replica:
        return next(r for r in self.replicas if r.pid == pid)

    # --- requests to the replicas ----------------------------------------------------------

    async def track(self, task_id: str, replica: int = 0, **fields: Any) -> httpx.Response:
        answer = await self.http.post(
            f"{self.replicas[replica].url}/tasks",
            json={"task_id": task_id, **fields},
            headers={"Authorization": f"Bearer {INTAKE}"},
        )
        assert answer.status_code == 202, answer.text
        return answer

    async def send(self, replica: int, payload: dict[str, Any]) -> httpx.Response:
        """A signed interactivity request to one replica's /slack/events."""
        body = form_body(payload)
        return await self.http.post(
            f"{self.replicas[replica].url}/slack/events",
            content=body,
            headers=slack_headers(body),
        )

    def click_payload(self, action_id: str, value: str, user: str) -> tuple[dict[str, Any], str]:
        """A block_actions payload and the key of its response_url (where answers go)."""
        self._clicks += 1
        key = f"click-{self._clicks}-{user}"
        self.last_trigger = f"trigger-{self._clicks}"
        payload = block_actions(
            self.fake.team_id,
            action_id,
            value,
            user=user,
            trigger_id=self.last_trigger,
            response_url=self.fake.response_url(key),
        )
        return payload, key

    async def click(
        self, replica: int, action_id: str, value: str, user: str
    ) -> tuple[httpx.Response, str]:
        payload, key = self.click_payload(action_id, value, user)
        return await self.send(replica, payload), key

    def reason_payload(self, metadata: str, reason: str, user: str) -> dict[str, Any]:
        trigger = f"trigger-view-{user}"
        return view_submission(self.fake.team_id, metadata, reason, user=user, trigger_id=trigger)

    async def submit_reason(
        self, replica: int, metadata: str, reason: str, user: str
    ) -> httpx.Response:
        return await self.send(replica, self.reason_payload(metadata, reason, user))

    def modal_metadata(self, trigger_id: str) -> str | None:
        """The Reject modal opened for a click, if any: its private_metadata."""
        for call in self.fake.calls_to("views.open"):
            if call.args.get("trigger_id") == trigger_id and call.error is None:
                view = call.args["view"]
                view = json.loads(view) if isinstance(view, str) else view
                return str(view["private_metadata"])
        return None

    def answers(self, key: str) -> list[str]:
        """What was said (ephemerally) in answer to the click whose response_url key is `key`."""
        return [e.text for e in self.fake.ephemeral if e.args.get("key") == key]

    # --- state at the fake Slack, the simulator and Redis ------------------------------------

    def parents(self, task_id: str) -> list[Message]:
        """Every top-level message the bot posted about a task."""
        marker = f"`{task_id}`"
        return [
            m
            for m in list(self.fake.messages.values())
            if m.thread_ts is None and marker in json.dumps(m.blocks or [])
        ]

    def thread_of(self, record: TaskRecord) -> list[Message]:
        assert record.slack_channel and record.slack_ts
        return self.fake.thread(record.slack_channel, record.slack_ts)

    def parent_of(self, record: TaskRecord) -> Message:
        assert record.slack_channel and record.slack_ts
        return self.fake.message(record.slack_channel, record.slack_ts)

    def confirms(self, task_id: str) -> list[dict[str, Any]]:
        """customerconfirm requests the simulator received for a task (whatever it answered)."""
        return [
            r
            for r in self.sim.sim.requests
            if r["action"] == "customerconfirm" and r["task_id"] == task_id
        ]

    async def posted(self, task_id: str) -> bool:
        """The task's message exists and its video step finished."""
        return await task_posted(self.store, task_id)

    async def published(self) -> bool:
        """Every event so far was delivered to a publisher and acknowledged."""
        return await events_published(self.redis)

    async def wait_finished(self, task_id: str, what: str, within: float = 30) -> None:
        """Until the task's message is posted and every event so far is acknowledged."""

        async def finished() -> bool:
            return await self.posted(task_id) and await self.published()

        await wait_for(finished, within, what, detail=self.tails)

    async def wait_posted(self, task_id: str, within: float = 30) -> TaskRecord:
        await wait_for(lambda: self.posted(task_id), within, f"{task_id} posted", detail=self.tails)
        record = await self.store.get(task_id)
        assert record is not None
        return record

    async def pending_consumers(self) -> dict[str, int]:
        """Consumer name -> events it holds unacknowledged."""
        answer = await self.redis.xpending(EVENTS_STREAM, "publishers")
        return {_text(c["name"]): int(c["pending"]) for c in answer.get("consumers") or []}

    def replica_of_consumer(self, consumer: str) -> Replica:
        """Consumer names are host-pid-random (bot.publisher.consumer_name)."""
        return self.by_pid(int(consumer.rsplit("-", 2)[1]))

    async def expire_dead_leases(self, older_than: float = 30.0) -> int:
        """Stand in for the 2-minute poll lease running out: tasks scheduled further than
        `older_than` s ahead (only a lease does that) become due now."""
        now = time.time()
        leased = await self.redis.zrangebyscore(SCHEDULE, now + older_than, "+inf")
        if leased:
            await self.redis.zadd(SCHEDULE, {item: now for item in leased})
        return len(leased)

    async def claim_ttl_ms(self, task_id: str, round_: int) -> int:
        return int(await self.redis.pttl(claim_key(task_id, round_)))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def button_values(message: Message) -> dict[str, str]:
    return {
        element["action_id"]: element["value"]
        for block in message.blocks or []
        if block["type"] == "actions"
        for element in block["elements"]
    }


def blocks_text(message: Message) -> str:
    return message.text + json.dumps(message.blocks or [], ensure_ascii=False)
