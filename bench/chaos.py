"""Chaos: N decisions across replicas of `ivh-approvals run` while replicas are SIGKILLed.

    .venv/bin/python bench/chaos.py [--decisions 200] [--replicas 3] [--seed N]

Starts a private redis-server (or the embedded valkey-server), the IVH simulator and the fake
Slack Web API in this process, and `--replicas` real `python -m bot.cli run` processes sharing
that Redis (everything on 127.0.0.1). Each simulated task gets a plan (0-3 rejections, then an
approval); simulated users wait for a round's buttons in Slack and click Approve, or Reject and
fill in the form, on a random replica, sometimes several users at once (now and then one of
them rejecting what the others approve). Meanwhile a random
replica is SIGKILLed every few seconds and restarted, Redis is restarted once (same port, AOF),
and IVH and Slack answer some requests with errors and timeouts. A user whose click shows no
outcome clicks again, as a person would. Then everything settles and the figures are printed;
the exit status is 1 if any figure that should be 0 is not.

By default the recovery timings are shortened (DECISION_CLAIM_SECONDS=30,
DECISION_SETTLE_SECONDS=8, EVENT_RECLAIM_SECONDS=10) so that a run takes a few minutes;
--production-timings keeps the defaults (120/30/60 s). The poll lease (2 min) is not a setting:
a task whose poll was in flight in a killed replica is read again only after it runs out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tests` (the fake Slack, the cluster helper) is not installed
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bot.sim import Simulator  # noqa: E402
from bot.sim import start as start_simulator  # noqa: E402
from bot.sim.state import CUSTOMER_CONFIRM, Fault  # noqa: E402
from bot.store import EVENTS_STREAM, SCHEDULE, family_pattern  # noqa: E402
from tests.cluster import INTAKE, Cluster, blocks_text, button_values  # noqa: E402
from tests.conftest import RedisProcess  # noqa: E402
from tests.fake_slack import FakeSlack, Message, fake_slack  # noqa: E402

FAST_TIMINGS = {
    "DECISION_CLAIM_SECONDS": "30",
    "DECISION_SETTLE_SECONDS": "8",
    "EVENT_RECLAIM_SECONDS": "10",
}
REASONS = [
    "green outline around the hair",
    "口型不同步 — lips out of sync",
    "<b>voice</b> too *flat* & slow",
    "hands look wrong\nsecond line",
    "x" * 300,
    "eyes blink too often",
]
SILENCE_EXPLAINED = 10.0  # s: a click on a replica killed this soon after is explained
DECISION_REPLY = re.compile(
    r"Round \d+ (approved|rejected|decided outside Slack)"
)  # a thread reply
_TASK_IN_HEADING = re.compile(r"`([^`]+)`")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- what the simulated users did ----------------------------------------------------------


@dataclass
class Attempt:
    """One user's try at deciding a round: an Approve click, or Reject + the form."""

    task_id: str
    round: int
    operate: str
    user: str
    replica: int  # where the decision was sent (the click, or the form's submission)
    at: float
    key: str = ""  # the click's response_url key
    accepted: bool = False  # acknowledged (HTTP 200) with the decision in it
    modal: bool = False  # Reject: the form opened
    inline: str = ""  # the form's inline error, if any
    failure: str = ""  # why it was not accepted (HTTP status, connection error)


@dataclass
class Story:
    task_id: str
    plan: list[str]  # the operate for each round, in order
    decided: dict[int, str] = field(default_factory=dict)  # round -> operate, at the simulator
    requested: dict[int, float] = field(default_factory=dict)  # round -> first accepted attempt
    gave_up: str = ""
    done: bool = False


class Index:
    """What the fake Slack holds, indexed once per refresh instead of per question."""

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self._seen = 0
        self.by_key: dict[str, list[str]] = defaultdict(list)
        self.by_user: dict[str, list[str]] = defaultdict(list)
        self.parents: dict[str, list[Message]] = {}

    def refresh(self) -> None:
        answers = self.fake.ephemeral
        for answer in answers[self._seen :]:
            key = answer.args.get("key")
            if key:
                self.by_key[str(key)].append(answer.text or "")
            if answer.user:
                self.by_user[str(answer.user)].append(answer.text or "")
        self._seen = len(answers)
        parents: dict[str, list[Message]] = defaultdict(list)
        for message in list(self.fake.messages.values()):
            if message.thread_ts is None and message.blocks:
                task_id = task_of(message)
                if task_id:
                    parents[task_id].append(message)
        self.parents = parents

    def answered(self, attempt: Attempt) -> list[str]:
        return self.by_key.get(attempt.key, []) + self.by_user.get(attempt.user, [])


def task_of(message: Message) -> str | None:
    try:
        heading = message.blocks[0]["text"]["text"]  # type: ignore[index]
    except (IndexError, KeyError, TypeError):
        return None
    found = _TASK_IN_HEADING.search(heading)
    return found[1] if found else None


def live_round(message: Message) -> tuple[int, str] | None:
    """The round the message's buttons decide, and the button value; None without buttons."""
    value = button_values(message).get("approve")
    if value is None:
        return None
    return int(json.loads(value)["round"]), value


# --- the bench ---------------------------------------------------------------------------------


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.started = time.monotonic()
        self.stories: list[Story] = []
        self.attempts: list[Attempt] = []
        self.kills: list[tuple[int, float]] = []  # (replica, time.time())
        self.redis_down: list[tuple[float, float]] = []
        self.confirm_log: list[dict[str, Any]] = []  # customerconfirm as the simulator saw it
        self.leased_at_kills: set[str] = set()
        self.killing: set[int] = set()  # replicas killed on purpose, not restarted yet
        self.crashes: list[str] = []  # replicas that exited by themselves
        self.faults = Counter[str]()
        self.users = 0
        self.chaos_over = asyncio.Event()
        self.cluster: Cluster
        self.sim: Simulator
        self.fake: FakeSlack
        self.redis: RedisProcess
        self.index: Index
        self._supervisor: asyncio.Task[None]  # restarts what chaos killed
        self._reporter: asyncio.Task[None]  # a progress line every 15 s

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def new_user(self) -> str:
        self.users += 1
        return f"UB{self.users:06d}"

    # --- set-up --------------------------------------------------------------------------

    def plans(self) -> list[list[str]]:
        plans, left = [], self.args.decisions
        while left > 0:
            rejects = min(self.rng.choice([0, 1, 1, 2, 2, 3]), left - 1)
            plans.append(["REJECT"] * rejects + ["AGREE"])
            left -= rejects + 1
        return plans

    def watch_confirms(self) -> None:
        """Note the round and phase each customerconfirm found at the simulator."""
        sim, original = self.sim, self.sim.answer

        def answer(action: str, query: Any, body: Any, media_base: str) -> Any:
            if action == CUSTOMER_CONFIRM and isinstance(body, dict):
                payload = body.get("Payload") if isinstance(body.get("Payload"), dict) else {}
                task = sim.tasks.get(str(payload.get("TaskId")))
                if task is not None:
                    task.settle(sim.clock())
                    self.confirm_log.append(
                        {
                            "task_id": task.task_id,
                            "round": task.round,
                            "phase": task.phase.value,
                            "operate": payload.get("Operate"),
                        }
                    )
            return original(action, query, body, media_base)

        sim.answer = answer  # type: ignore[method-assign]

    # --- simulated users ------------------------------------------------------------------

    def sim_decided(self, task_id: str, round_: int) -> str | None:
        for decision in self.sim.tasks[task_id].decisions:
            if decision["round"] == round_:
                return str(decision["operate"])
        return None

    async def story(self, story: Story, delay: float) -> None:
        """Decide each round as planned (or as a dissenting colleague won it) until approved."""
        await asyncio.sleep(delay)
        if not await self.track(story.task_id):
            story.gave_up = "tracking: no replica took the task"
            return
        round_ = 0
        while True:
            round_ += 1
            operate = story.plan[round_ - 1] if round_ <= len(story.plan) else "AGREE"
            value = await self.buttons(story.task_id, round_)
            if value is None:
                story.gave_up = f"round {round_}: its buttons never showed"
                return
            await asyncio.sleep(self.rng.uniform(0, 1.5))  # watching the demo
            await self.decide(story, round_, operate, value)
            applied = story.decided.get(round_)
            if applied is None:
                story.gave_up = f"round {round_}: not decided in {self.args.decide_timeout} s"
                return
            if applied == "AGREE":
                story.done = True
                return

    async def track(self, task_id: str) -> bool:
        """POST /tasks to a random replica until one takes it (some are down, Redis too)."""
        deadline = time.monotonic() + self.args.round_timeout
        while time.monotonic() < deadline:
            replica = self.cluster.replicas[self.rng.randrange(self.args.replicas)]
            try:
                answer = await self.cluster.http.post(
                    f"{replica.url}/tasks",
                    json={"task_id": task_id},
                    headers={"Authorization": f"Bearer {INTAKE}"},
                )
                if answer.status_code == 202:
                    return True
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        return False

    async def buttons(self, task_id: str, round_: int) -> str | None:
        deadline = time.monotonic() + self.args.round_timeout
        while time.monotonic() < deadline:
            for message in self.index.parents.get(task_id, []):
                live = live_round(message)
                if live and live[0] == round_:
                    return live[1]
            await asyncio.sleep(0.25)
        return None

    async def decide(self, story: Story, round_: int, operate: str, value: str) -> None:
        deadline = time.monotonic() + self.args.decide_timeout
        while time.monotonic() < deadline:
            # Sometimes several people click at once; now and then one of them rejects a demo
            # the others approve (so a race may add a round, never skip one).
            copies = self.rng.choice([2, 3]) if self.rng.random() < 0.25 else 1
            operates = [operate] + [
                "REJECT" if operate == "AGREE" and self.rng.random() < 0.3 else operate
                for _ in range(copies - 1)
            ]
            tries = await asyncio.gather(
                *(self.attempt(story, round_, op, value) for op in operates)
            )
            wait_until = time.monotonic() + 6
            while time.monotonic() < wait_until:
                done = self.sim_decided(story.task_id, round_)
                if done:
                    story.decided[round_] = done
                    return
                if all(self.index.answered(a) or not a.accepted for a in tries):
                    break  # everyone was told something (or nothing was taken): try again
                await asyncio.sleep(0.2)
            await asyncio.sleep(self.rng.uniform(1, 3))
        done = self.sim_decided(story.task_id, round_)
        if done:
            story.decided[round_] = done

    async def attempt(self, story: Story, round_: int, operate: str, value: str) -> Attempt:
        user = self.new_user()
        replica = self.rng.randrange(self.args.replicas)
        action = "approve" if operate == "AGREE" else "reject"
        payload, key = self.cluster.click_payload(action, value, user)
        trigger = payload["trigger_id"]
        attempt = Attempt(story.task_id, round_, operate, user, replica, time.time(), key)
        self.attempts.append(attempt)
        clicked = await self.send(attempt, replica, payload)
        if operate == "AGREE" or not clicked:
            attempt.accepted = clicked
        else:
            metadata = None
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and metadata is None:
                if self.index.answered(attempt):
                    break  # refused at once (round closed, storage down...)
                metadata = self.cluster.modal_metadata(trigger)
                await asyncio.sleep(0.2)
            if metadata is None:
                answered = " (answered)" if self.index.answered(attempt) else ""
                attempt.failure = "no form" + answered
            else:
                attempt.modal = True
                attempt.replica = self.rng.randrange(self.args.replicas)
                reason = self.rng.choice(REASONS)
                form = self.cluster.reason_payload(metadata, reason, user)
                attempt.at = time.time()
                attempt.accepted = await self.send(attempt, attempt.replica, form)
        if attempt.accepted:
            story.requested.setdefault(round_, attempt.at)
        return attempt

    async def send(self, attempt: Attempt, replica: int, payload: dict[str, Any]) -> bool:
        try:
            answer = await self.cluster.send(replica, payload)
        except httpx.HTTPError as error:
            attempt.failure = type(error).__name__
            return False
        if answer.status_code != 200:
            attempt.failure = f"HTTP {answer.status_code}"
            return False
        if answer.content and "response_action" in answer.text:
            attempt.inline = answer.json().get("errors", {}).get("reason", answer.text)
            attempt.failure = "form refused: " + " ".join(attempt.inline.split()[:3])
            return False
        return True

    # --- faults ---------------------------------------------------------------------------

    async def chaos(self) -> None:
        """Kill a random replica every few seconds and restart it; restart Redis once."""
        replicas = self.cluster.replicas
        redis_at = self.args.decisions * self.rng.uniform(0.2, 0.4)  # requested so far
        while not self.chaos_over.is_set():
            with contextlib.suppress(TimeoutError):
                pause = self.args.kill_every * self.rng.uniform(0.5, 1.5)
                await asyncio.wait_for(self.chaos_over.wait(), pause)
            if self.chaos_over.is_set():
                break
            requested = sum(len(s.requested) for s in self.stories)
            if not self.redis_down and requested >= redis_at:
                await self.restart_redis()
                continue
            alive = [n for n, r in enumerate(replicas) if r.alive]
            if len(alive) < 2:
                continue
            victim = self.rng.choice(alive)
            self.killing.add(victim)
            replicas[victim].kill()
            self.kills.append((victim, time.time()))
            await asyncio.sleep(0.2)
            self.leased_at_kills |= await self.leased_far_ahead()
            await asyncio.sleep(self.rng.uniform(0.3, 2.0))
            replicas[victim].start()
            self.killing.discard(victim)

    async def restart_redis(self) -> None:
        down = time.time()
        say("restarting Redis")
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(self.rng.uniform(1, 2))
        await asyncio.to_thread(self.redis.start)
        await self.cluster.redis.connection_pool.disconnect()
        self.redis_down.append((down, time.time()))

    async def leased_far_ahead(self) -> set[str]:
        """Tasks whose next poll is a lease's end away: held by a poller (maybe the dead one)."""
        try:
            far = await self.cluster.redis.zrangebyscore(SCHEDULE, time.time() + 60, "+inf")
        except Exception:  # Redis restarting: not counted
            return set()
        return {item.decode() if isinstance(item, bytes) else item for item in far}

    async def supervise(self) -> None:
        """Like a process supervisor: restart a replica that exited by itself, and note it."""
        while True:
            await asyncio.sleep(0.5)
            for n, replica in enumerate(self.cluster.replicas):
                if n in self.killing or replica.alive or replica.process is None:
                    continue
                code = replica.process.returncode
                critical = [x for x in replica.log_text().splitlines() if "CRITICAL" in x]
                why = critical[-1].split(": ", 1)[-1] if critical else "no CRITICAL line"
                self.crashes.append(f"r{n} exited with status {code} ({why})")
                say(f"r{n} exited by itself (status {code}): {why}; restarting it")
                replica.start()

    async def inject(self) -> None:
        """Now and then: IVH 5xx and timed-out confirmations, Slack 429 and 5xx."""
        timeout = float(self.args.ivh_timeout) + 1
        while not self.chaos_over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.chaos_over.wait(), self.rng.uniform(3, 7))
            if self.chaos_over.is_set():
                break
            kind = self.rng.choice(["progress", "confirm", "slack429", "slack5xx"])
            self.faults[kind] += 1
            if kind == "progress":
                self.sim.add_fault(Fault(action="getprogress", kind="http500", count=3))
            elif kind == "confirm":
                apply = self.rng.random() < 0.5
                self.sim.add_fault(
                    Fault(action=CUSTOMER_CONFIRM, kind="timeout", seconds=timeout, apply=apply)
                )
            elif kind == "slack429":
                self.fake.fail("chat.postMessage", status=429, retry_after=1)
            else:
                self.fake.fail("chat.update", status=503)

    # --- the run --------------------------------------------------------------------------

    async def run(self, workdir: Path) -> int:
        self.redis = RedisProcess(workdir / "redis")
        self.redis.directory.mkdir(parents=True)
        await asyncio.to_thread(self.redis.start)
        self.sim = Simulator(audit_seconds=0, train_seconds=2, deliver_seconds=1)
        self.watch_confirms()
        running_sim = await start_simulator(self.sim)
        try:
            async with fake_slack() as fake:
                self.fake = fake
                self.index = Index(fake)
                return await self._run(workdir, running_sim)
        finally:
            await running_sim.close()
            self.redis.stop()

    async def _run(self, workdir: Path, running_sim: Any) -> int:
        args = self.args
        settings = {
            "IVH_MAX_QPS": "100",
            "IVH_TIMEOUT": str(args.ivh_timeout),
            "POLL_INTERVAL": "1",
            "POLL_SLOW_INTERVAL": "1",
        }
        if not args.production_timings:
            settings |= FAST_TIMINGS
        self.cluster = Cluster(
            running_sim, self.fake, self.redis.url, workdir, replicas=args.replicas, **settings
        )
        try:
            await self.cluster.start(within=60)
            say(f"{args.replicas} replicas up; logs in {workdir}")
            return await self._drive()
        finally:
            await self.cluster.close(graceful=True)

    async def _drive(self) -> int:
        refresher = asyncio.create_task(self._refresh())
        self.create_stories()
        stories = await self.decide_under_chaos()
        await self.settle(stories)
        refresher.cancel()
        self.index.refresh()
        await asyncio.sleep(0)
        return await self.figures()

    def create_stories(self) -> None:
        """Set-up: one simulated task per plan, with random stage lengths."""
        for plan in self.plans():
            task = self.sim.create_task(
                audit_seconds=self.rng.uniform(0, 1),
                train_seconds=self.rng.uniform(1, 3),
                deliver_seconds=self.rng.uniform(0.5, 2),
            )
            self.stories.append(Story(task.task_id, plan))
        say(f"{len(self.stories)} tasks, {self.args.decisions} decisions to make")

    async def decide_under_chaos(self) -> list[asyncio.Task[None]]:
        """Drive: the users decide while replicas are killed and faults injected, until every
        story is done or --chaos-seconds pass. Returns the stories, some maybe still running."""
        args = self.args
        spread = min(20.0, len(self.stories) * 0.25)
        stories = [
            asyncio.create_task(self.story(s, self.rng.uniform(0, spread))) for s in self.stories
        ]
        chaos = asyncio.create_task(self.chaos())
        self._supervisor = asyncio.create_task(self.supervise())
        faults = asyncio.create_task(self.inject()) if args.faults else None
        self._reporter = asyncio.create_task(self._report())
        await asyncio.wait(stories, timeout=args.chaos_seconds)
        self.chaos_over.set()
        await asyncio.gather(chaos, *([faults] if faults else []))
        say(f"chaos over after {self.elapsed():.0f} s: {len(self.kills)} kills; settling")
        return stories

    async def settle(self, stories: list[asyncio.Task[None]]) -> None:
        """Until every story is done and the cluster settled, at most --settle-seconds."""
        settle_end = time.monotonic() + self.args.settle_seconds
        waiting_for: str | None = "the stories"
        while time.monotonic() < settle_end:
            running = sum(not s.done() for s in stories)
            waiting_for = f"{running} stories" if running else await self.unsettled()
            if waiting_for is None:
                break
            await asyncio.sleep(1)
        if waiting_for is not None:
            say(f"not settled after {self.args.settle_seconds:.0f} s: {waiting_for}")
        for story_task in stories:
            story_task.cancel()
        await asyncio.gather(*stories, return_exceptions=True)
        self._reporter.cancel()
        self._supervisor.cancel()

    async def _refresh(self) -> None:
        while True:
            self.index.refresh()
            await asyncio.sleep(0.25)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(15)
            decided = sum(len(s.decided) for s in self.stories)
            requested = sum(len(s.requested) for s in self.stories)
            alive = sum(r.alive for r in self.cluster.replicas)
            say(
                f"{self.elapsed():.0f} s: {requested} decisions requested, {decided} decided"
                f" at IVH, {len(self.kills)} kills, {alive}/{self.args.replicas} replicas up"
            )

    async def unsettled(self) -> str | None:
        """What is not settled yet (None: every task delivered at the simulator, seen so by
        the bot, shown, and published)."""
        try:
            if not await self.cluster.published():
                return "events not yet acknowledged"
            for story in self.stories:
                task_id = story.task_id
                if (phase := self.sim.tasks[task_id].phase.value) != "SUCCESS":
                    return f"{task_id}: {phase} at the simulator"
                record = await self.cluster.store.get(task_id)
                if record is None or record.snapshot is None or not record.snapshot.finished:
                    seen = record.snapshot if record else None
                    return f"{task_id}: the bot has not seen it finish ({seen})"
                if "Complete" not in blocks_text(self.cluster.parent_of(record)):
                    return f"{task_id}: its message does not say Complete"
        except Exception as error:  # Redis restarting, a message not posted yet...
            return f"{type(error).__name__}: {error}"
        return None

    # --- the figures ----------------------------------------------------------------------

    async def figures(self) -> int:
        store, redis = self.cluster.store, self.cluster.redis
        problems: dict[str, list[str]] = defaultdict(list)  # figure -> examples
        info: dict[str, Any] = {}

        requests = [r for r in self.sim.requests if r["action"] == CUSTOMER_CONFIRM]
        received = Counter(str(r["operate"]) for r in requests)
        applied = Counter(
            str(d["operate"])
            for task in self.sim.tasks.values()
            for d in task.decisions
            if d["source"] == "api"
        )
        requested = sum(len(s.requested) for s in self.stories)
        clicked = {(a.task_id, a.round, a.operate) for a in self.attempts if a.accepted}

        # Duplicates: a confirmation that found its round already decided (Tencent refused it
        # or, worse, applied it to the next round).
        for entry in self.confirm_log:
            if entry["phase"] != "WAIT":
                problems["duplicates"].append(
                    f"{entry['task_id']}: {entry['operate']} reached Tencent in {entry['phase']}"
                    f" (round {entry['round']})"
                )
        for task in self.sim.tasks.values():
            for d in task.decisions:
                if (task.task_id, d["round"], d["operate"]) not in clicked:
                    problems["wrong-round decisions"].append(
                        f"{task.task_id} round {d['round']}: {d['operate']} nobody clicked"
                    )

        stored: dict[str, dict[int, Any]] = {}
        records: dict[str, Any] = {}
        for story in self.stories:
            loaded = await store.view(story.task_id)
            records[story.task_id] = loaded.record if loaded else None
            stored[story.task_id] = {d.round: d for d in (loaded.view.decisions if loaded else [])}

        left = {
            (event.task_id, event.round)
            for _, event in await store.events()
            if event.type == "left_confirmation"
        }
        answered = silent_explained = 0
        for a in self.attempts:
            if not a.accepted:
                continue
            decision = stored[a.task_id].get(a.round)
            if (decision and decision.user == a.user) or self.index.answered(a):
                answered += 1
                continue
            if self._explained(a):
                silent_explained += 1
                continue
            problems["lost: accepted, never answered"].append(
                f"{a.task_id} round {a.round}: {a.operate} by {a.user} on r{a.replica}"
            )
        info["accepted clicks silent because their replica was killed"] = silent_explained

        for story in self.stories:
            sim_task = self.sim.tasks[story.task_id]
            by_round = {d["round"]: d["operate"] for d in sim_task.decisions}
            for round_, decision in stored[story.task_id].items():
                if decision.source == "slack" and by_round.get(round_) != decision.operate:
                    problems["lost: shown in Slack, no call"].append(
                        f"{story.task_id} round {round_}: {decision.operate} by {decision.user}"
                    )
                elif decision.source == "elsewhere" and round_ in by_round:
                    problems["messages disagreeing"].append(
                        f"{story.task_id} round {round_}: 'decided outside Slack' for a click"
                    )
            for round_ in story.requested:
                if round_ not in by_round:
                    problems["lost: clicked, never decided"].append(
                        f"{story.task_id} round {round_}: {story.gave_up or 'undecided'}"
                    )
            for round_ in by_round:
                if round_ not in stored[story.task_id]:
                    seen = "" if (story.task_id, round_) in left else ": no left_confirmation"
                    problems["stuck"].append(
                        f"{story.task_id} round {round_}: decided at IVH, never recorded{seen}"
                    )
            if sim_task.phase.value == "WAIT":
                live = [live_round(m) for m in self.index.parents.get(story.task_id, [])]
                if not any(x and x[0] == sim_task.round for x in live):
                    problems["stuck"].append(
                        f"{story.task_id}: waits at IVH (round {sim_task.round}), no live buttons"
                    )
            self._compare(story, records[story.task_id], sim_task, problems)

        claims = [key async for key in redis.scan_iter(match=family_pattern("claim"))]
        for key in claims:
            ttl = await redis.pttl(key)
            if ttl < 0:
                problems["stuck"].append(f"{key!r}: a claim with no expiry")
        info["claims left (expiring)"] = len(claims)
        pending = (await redis.xpending(EVENTS_STREAM, "publishers"))["pending"]
        if pending:
            problems["stuck"].append(f"{pending} events never acknowledged")

        problems["replicas that exited by themselves"] = self.crashes
        doubles = {t: len(ms) for t, ms in self.index.parents.items() if len(ms) > 1}
        info["tasks with more than one parent message"] = len(doubles)
        doubled = self._double_videos(records)
        info["rounds with more than one video in the thread"] = f"{len(doubled)} {doubled[:3]}"
        missing = self._missing_replies(records)
        info["decision replies missing from threads"] = f"{len(missing)} {missing[:3]}"
        told_twice = self._double_replies(records)
        info["decision replies told twice in a thread"] = f"{len(told_twice)} {told_twice[:3]}"
        info["kills (SIGKILL) / Redis restarts"] = f"{len(self.kills)} / {len(self.redis_down)}"
        info["tasks leased by a poller at a kill"] = len(self.leased_at_kills)
        info["reads of a task more than 30 s apart / longest gap"] = self._poll_gaps()
        info["IVH/Slack faults injected"] = dict(self.faults) or "none"
        info["attempts: sent / accepted / refused or failed"] = (
            f"{len(self.attempts)} / {sum(a.accepted for a in self.attempts)}"
            f" / {sum(not a.accepted for a in self.attempts)}"
        )
        why = Counter(a.failure or "?" for a in self.attempts if not a.accepted)
        info["not accepted, why"] = dict(why.most_common(6))
        info["gave up"] = sum(bool(s.gave_up) for s in self.stories)
        info["elapsed"] = f"{self.elapsed():.0f} s"
        info["replica log lines: ERROR / CRITICAL / Traceback"] = self._log_problems()
        if errors := self._error_lines():
            info["first ERROR / CRITICAL lines"] = "\n    " + "\n    ".join(errors[:5])

        must_be_zero = [
            "duplicates",
            "wrong-round decisions",
            "lost: shown in Slack, no call",
            "lost: clicked, never decided",
            "lost: accepted, never answered",
            "stuck",
            "messages disagreeing",
            "replicas that exited by themselves",
        ]
        rows = [
            ("decisions requested (planned)", f"{requested} ({self.args.decisions})"),
            (
                "customerconfirm received: AGREE / REJECT",
                f"{received['AGREE']} / {received['REJECT']}",
            ),
            ("  applied by Tencent: AGREE / REJECT", f"{applied['AGREE']} / {applied['REJECT']}"),
            *((name, str(len(problems[name]))) for name in must_be_zero),
        ]
        width = max(len(name) for name, _ in rows) + 2
        print()
        print(f"{'figure':<{width}}value")
        print("-" * (width + 12))
        for name, value in rows:
            print(f"{name:<{width}}{value}")
        print()
        for name, value in info.items():
            print(f"  {name}: {value}")
        failing = [name for name in must_be_zero if problems[name]]
        for name in failing:
            print(f"\n{name}:")
            for example in problems[name][:8]:
                print(f"  - {example}")
            if len(problems[name]) > 8:
                print(f"  ... {len(problems[name]) - 8} more")
        short = any(s.gave_up for s in self.stories)
        if short:
            gave_up = Counter(s.gave_up.split(":")[1].strip() for s in self.stories if s.gave_up)
            print(f"\nnot every decision was requested; stories gave up: {dict(gave_up)}")
        return 1 if failing or short else 0

    def _explained(self, a: Attempt) -> bool:
        for replica, at in self.kills:
            if replica == a.replica and a.at - 1 <= at <= a.at + SILENCE_EXPLAINED:
                return True
        return any(down - 1 <= a.at <= up + 5 for down, up in self.redis_down)

    def _compare(self, story: Story, record: Any, sim_task: Any, problems: dict) -> None:
        """The task's message against Tencent's state."""
        phase = sim_task.phase.value
        if record is None or record.slack_ts is None:
            problems["messages disagreeing"].append(f"{story.task_id}: no message at all")
            return
        try:
            text = blocks_text(self.cluster.parent_of(record))
        except KeyError:
            problems["messages disagreeing"].append(f"{story.task_id}: its message is gone")
            return
        expected = {
            "SUCCESS": "Complete",
            "DELIVER": "Approved by",
            "WAIT": '"action_id": "approve"',
            "TRAIN": "Rejected by",
        }.get(phase)
        if expected and expected not in text:
            problems["messages disagreeing"].append(
                f"{story.task_id}: Tencent says {phase}, the message does not ({expected!r})"
            )
        for other in self.index.parents.get(story.task_id, []):
            if other.ts != record.slack_ts and phase != "WAIT" and live_round(other):
                problems["messages disagreeing"].append(
                    f"{story.task_id}: a second message {other.ts} still has live buttons (a"
                    " post redone: a kill or a Redis failure between posting and recording it)"
                )

    def _missing_replies(self, records: dict[str, Any]) -> list[str]:
        missing = []
        for story in self.stories:
            record = records[story.task_id]
            if record is None or record.slack_ts is None:
                continue
            thread = " ".join(m.text for m in self.cluster.thread_of(record))
            for d in self.sim.tasks[story.task_id].decisions:
                word = "approved" if d["operate"] == "AGREE" else "rejected"
                if f"Round {d['round']} {word}" not in thread:
                    missing.append(f"{story.task_id} round {d['round']}")
        return missing

    def _double_replies(self, records: dict[str, Any]) -> list[str]:
        doubled = []
        for story in self.stories:
            record = records[story.task_id]
            if record is None or record.slack_ts is None:
                continue
            replies = Counter(
                m.text for m in self.cluster.thread_of(record) if DECISION_REPLY.fullmatch(m.text)
            )
            doubled += [f"{story.task_id} {text!r}" for text, n in replies.items() if n > 1]
        return doubled

    def _double_videos(self, records: dict[str, Any]) -> list[str]:
        doubled = []
        for story in self.stories:
            record = records[story.task_id]
            if record is None or record.slack_ts is None:
                continue
            rounds = Counter(
                m.text.split(" demo")[0] for m in self.cluster.thread_of(record) if m.files
            )
            doubled += [f"{story.task_id} {r}" for r, n in rounds.items() if n > 1]
        return doubled

    def _poll_gaps(self) -> str:
        reads: dict[str, list[float]] = defaultdict(list)
        for r in self.sim.requests:
            if r["action"] == "getprogress" and r["task_id"]:
                reads[r["task_id"]].append(r["t"])
        gaps = [b - a for times in reads.values() for a, b in itertools.pairwise(times)]
        long_gaps = sum(1 for gap in gaps if gap > 30)
        return f"{long_gaps} / {max(gaps, default=0):.0f} s"

    def _log_problems(self) -> str:
        counts = Counter[str]()
        for replica in self.cluster.replicas:
            for line in replica.log_text().splitlines():
                for word in ("ERROR", "CRITICAL", "Traceback"):
                    if word in line:
                        counts[word] += 1
        return f"{counts['ERROR']} / {counts['CRITICAL']} / {counts['Traceback']}"

    def _error_lines(self) -> list[str]:
        return [
            f"{replica.name}: {line}"
            for replica in self.cluster.replicas
            for line in replica.log_text().splitlines()
            if " ERROR " in line or " CRITICAL " in line
        ]


def _logged_errors(workdir: Path) -> bool:
    """Whether a replica logged an ERROR line: its logs are then kept for the traceback."""
    return any(" ERROR " in path.read_text(errors="replace") for path in workdir.rglob("*.log"))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds, on average")
    parser.add_argument("--chaos-seconds", type=float, default=90.0, help="longest chaos phase")
    parser.add_argument("--settle-seconds", type=float, default=200.0, help="longest settling")
    parser.add_argument("--round-timeout", type=float, default=200.0)
    parser.add_argument("--decide-timeout", type=float, default=150.0)
    parser.add_argument("--ivh-timeout", type=int, default=3)
    parser.add_argument("--no-faults", dest="faults", action="store_false")
    parser.add_argument("--production-timings", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs even when all is 0")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(10**6)
    if args.replicas < 2:
        parser.error("--replicas: at least 2 (one is killed while the others serve)")
    return args


def main() -> int:
    # A killed replica's half-sent request makes the simulator's aiohttp log a traceback.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    args = parse()
    say(f"seed {args.seed}")
    workdir = Path(tempfile.mkdtemp(prefix="ivh-chaos-"))
    code = 1
    try:
        code = asyncio.run(Chaos(args).run(workdir))
    finally:
        if code == 0 and not args.keep and not _logged_errors(workdir):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs kept in {workdir}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
