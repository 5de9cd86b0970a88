"""Button clicks under a burst: HTTP acknowledgement latency, and click -> customerconfirm.

`--replicas` bot processes (default 3) in HTTP mode share one Redis. `--tasks` tasks (default
50) wait for a decision, each with its parent message posted in its own channel. Then
`--clicks` signed Approve clicks (default 100) are sent at once: click i goes to task i mod
tasks and to replica i mod replicas, each from a different user, so every task gets clicks
from two users on two replicas and exactly one of them must win. Optional `--background`
tasks keep the shared IVH budget busy with polls meanwhile.

Printed: acknowledgement latency (request sent -> HTTP answer, measured by this process)
p50 / p99 [p99 <= 100 ms], from the moment the request is written to its socket; also from
when this process starts the send, which adds this process's own cost of opening 100
connections at once (about 1 ms of CPU each on a 2-core machine); click -> customerconfirm
arriving at the simulator p50 [<= 300 ms] (from each task's first click), customerconfirm
calls per task (must be 1), and the floor the IVH budget sets: confirmations leave at most Q
per second.

    .venv/bin/python bench/acks.py                      # under a minute
    .venv/bin/python bench/acks.py --background 1000 --q 50
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import aiohttp
from common import (
    LATENCY_MS,
    BotProcess,
    FakeSlack,
    Lab,
    all_polled,
    click_body,
    command_body,
    header,
    lab,
    percentile,
    problem_summary,
    say,
    slack_headers,
    spread,
    table,
    wait_until,
)

from bot.messages import APPROVE, button_value


@dataclass
class Options:
    replicas: int
    tasks: int
    clicks: int
    q: float
    interval: float
    background: int
    slack_rate: float


@dataclass
class Click:
    task_id: str
    replica: int
    sent_wall: float
    ack_s: float = float("nan")  # from the start of the send, connection setup included
    wire_s: float = float("nan")  # from the request's bytes written to the socket
    written: float = float("nan")
    status: int = 0


async def _written(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestChunkSentParams,
) -> None:
    click = context.trace_request_ctx
    if isinstance(click, Click):
        click.written = time.perf_counter()  # the last chunk is handed to the socket next


async def send(
    http: aiohttp.ClientSession, bot: BotProcess, body: str, click: Click, go: asyncio.Event
) -> None:
    headers = slack_headers(body)
    await go.wait()
    click.sent_wall = time.time()
    started = time.perf_counter()
    async with http.post(
        f"{bot.url}/slack/events", data=body, headers=headers, trace_request_ctx=click
    ) as answer:
        await answer.read()
        click.status = answer.status
    done = time.perf_counter()
    click.ack_s, click.wire_s = done - started, done - click.written


@dataclass
class Tasks:
    """The tasks of one run, and the channel each is posted in."""

    ids: list[str]  # clicked in the burst
    solo: list[str]  # one click at a time, first, one per replica
    background: list[str]  # only polled, to load the IVH budget
    channel_of: dict[str, str]

    @classmethod
    def of(cls, o: Options) -> Tasks:
        ids = [f"ack_{i:04d}" for i in range(o.tasks)]
        background = [f"bg_{i:06d}" for i in range(o.background)]
        solo = [f"solo_{i:02d}" for i in range(o.replicas)]
        channel_of = {task_id: f"CACK{i:05d}" for i, task_id in enumerate(ids + solo)}
        return cls(ids, solo, background, channel_of)


@dataclass
class Outcome:
    solo_ack: list[float]
    solo_confirm: list[float]
    clicks: list[Click]
    sent: list[dict[str, object]]  # the burst's customerconfirm requests at the simulator
    problems: tuple[int, str]
    busy: int  # "Already being approved" answers


def print_header(o: Options) -> None:
    header(
        "acknowledgements and click -> customerconfirm",
        {
            "replicas": o.replicas,
            "tasks waiting": o.tasks,
            "clicks at once": o.clicks,
            "IVH_MAX_QPS": o.q,
            "POLL_INTERVAL": o.interval,
            "background tasks polled": o.background,
            "simulator latency ms": LATENCY_MS,
            "fake Slack chat.postMessage per channel per s": o.slack_rate,
        },
    )


async def post_every_message(the_lab: Lab, o: Options, t: Tasks) -> list[BotProcess]:
    """Set-up: the replicas post every clicked task's message and video (and poll the rest)."""
    ids, solo, background, channel_of = t.ids, t.solo, t.background, t.channel_of
    assert the_lab.fake is not None
    the_lab.fake.channel_rate(o.slack_rate)
    the_lab.create_tasks(ids + solo, train=0.0)  # waiting for a decision at once
    the_lab.create_tasks(background)
    bots = await the_lab.start_bots(o.replicas, qps=o.q, interval=o.interval, slack=True)
    now = time.time()
    dues = {t: now + random.uniform(0, min(o.interval, 5.0)) for t in ids + solo}
    dues |= {t: now + random.uniform(0, o.interval) for t in background}
    await the_lab.track(ids + solo + background, channels=channel_of, dues=dues)

    async def ready() -> bool:
        if not await all_polled(the_lab.store, ids + solo):
            return False
        for task_id in ids + solo:
            loaded = await the_lab.store.view(task_id)
            if loaded is None or not loaded.record.slack_ts or loaded.view.upload is None:
                return False
        return True

    say("waiting until every task's message and video are posted")
    await wait_until(ready, within=180, every=0.5, what="messages posted")
    if o.background:
        say(f"letting {o.background} background tasks load the budget for 5 s")
        await asyncio.sleep(5.0)
    return bots


async def warm_up(http: aiohttp.ClientSession, fake: FakeSlack, bots: list[BotProcess]) -> None:
    for i, bot in enumerate(bots):  # the first request of a process is slower
        body = command_body(fake, "help", user="UWARM0001", channel="CWARM", key=f"w{i}")
        async with http.post(
            f"{bot.url}/slack/events", data=body, headers=slack_headers(body)
        ) as answer:
            await answer.read()


async def click_one_at_a_time(
    http: aiohttp.ClientSession, the_lab: Lab, bots: list[BotProcess], t: Tasks
) -> tuple[list[float], list[float]]:
    """One click per idle replica: its ack and its click -> customerconfirm, in seconds."""
    fake, solo, channel_of = the_lab.fake, t.solo, t.channel_of
    assert fake is not None
    say("one click at a time, one per replica")
    solo_ack, solo_confirm = [], []
    for i, bot in enumerate(bots):
        single = Click(solo[i], i, 0.0)
        body = click_body(
            fake,
            action_id=APPROVE,
            value=button_value(solo[i], 1),
            user="USOLO0001",
            channel=channel_of[solo[i]],
            key=f"solo{i}",
        )
        mark, now_event = len(the_lab.sim.requests), asyncio.Event()
        now_event.set()
        await send(http, bot, body, single, now_event)
        solo_ack.append(single.ack_s)

        def solo_confirms(task_id: str = solo[i], mark: int = mark) -> list[float]:
            return [
                float(r["t"])
                for r in the_lab.sim.requests[mark:]
                if r["action"] == "customerconfirm" and r["task_id"] == task_id
            ]

        async def confirmed(found: Callable[[], list[float]] = solo_confirms) -> bool:
            return bool(found())

        await wait_until(confirmed, within=10, every=0.005)
        solo_confirm += [t - single.sent_wall for t in solo_confirms()[:1]]
        await asyncio.sleep(1.0)  # its message update and thread reply go out now
    return solo_ack, solo_confirm


async def click_all_at_once(
    http: aiohttp.ClientSession, fake: FakeSlack, o: Options, bots: list[BotProcess], t: Tasks
) -> list[Click]:
    """`o.clicks` Approve clicks released together, click i on task i mod tasks."""
    ids, channel_of = t.ids, t.channel_of
    go = asyncio.Event()
    clicks: list[Click] = []
    sends = []
    for i in range(o.clicks):
        task_id = ids[i % len(ids)]
        click = Click(task_id, i % len(bots), 0.0)
        body = click_body(
            fake,
            action_id=APPROVE,
            value=button_value(task_id, 1),
            user=f"UBENCH{i:04d}",
            channel=channel_of[task_id],
            key=f"click{i}",
        )
        clicks.append(click)
        sends.append(asyncio.create_task(send(http, bots[click.replica], body, click, go)))
    say(f"sending {o.clicks} clicks at once")
    go.set()
    await asyncio.gather(*sends)
    return clicks


async def click_and_wait_for_confirms(
    the_lab: Lab, o: Options, bots: list[BotProcess], t: Tasks
) -> Outcome:
    """Drive: warm-up, the single clicks, then the burst, until Tencent has every decision."""
    fake = the_lab.fake
    assert fake is not None
    burst = set(t.ids)
    connector = aiohttp.TCPConnector(limit=0)
    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(_written)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[tracing]) as http:
        await warm_up(http, fake, bots)
        solo_ack, solo_confirm = await click_one_at_a_time(http, the_lab, bots, t)
        index = len(the_lab.sim.requests)
        clicks = await click_all_at_once(http, fake, o, bots, t)

    def confirms() -> list[dict[str, object]]:
        return [
            r
            for r in the_lab.sim.requests[index:]
            if r["action"] == "customerconfirm" and r["task_id"] in burst
        ]

    async def all_confirmed() -> bool:
        return len({r["task_id"] for r in confirms()}) == len(t.ids)

    await wait_until(all_confirmed, within=60, every=0.1, what="every customerconfirm")
    await asyncio.sleep(2.0)  # a second confirmation of a task would arrive now
    sent = confirms()
    problems = problem_summary(bots)
    busy = [e for e in fake.ephemeral if "Already being" in e.text]
    return Outcome(solo_ack, solo_confirm, clicks, sent, problems, len(busy))


def report(o: Options, t: Tasks, replicas: int, outcome: Outcome) -> None:
    ids, clicks, sent, problems = t.ids, outcome.clicks, outcome.sent, outcome.problems
    solo_ack, solo_confirm = outcome.solo_ack, outcome.solo_confirm
    first_click: dict[str, float] = {}
    for click in clicks:
        first_click[click.task_id] = min(first_click.get(click.task_id, math.inf), click.sent_wall)
    per_task = Counter(str(r["task_id"]) for r in sent)
    to_confirm = [
        float(r["t"]) - first_click[str(r["task_id"])]  # type: ignore[arg-type]
        for r in sent
    ]
    acks = [c.wire_s for c in clicks if c.status == 200]
    from_start = [c.ack_s for c in clicks if c.status == 200]
    statuses = Counter(c.status for c in clicks)
    floor = [k / o.q for k in range(len(ids))]
    print()
    print(f"single clicks on idle replicas: ack {', '.join(f'{a * 1000:.0f}' for a in solo_ack)}"
          f" ms; click -> customerconfirm {', '.join(f'{c * 1000:.0f}' for c in solo_confirm)}"
          " ms")  # fmt: skip
    print(f"burst of {o.clicks} clicks:")
    print(f"HTTP answers: {dict(statuses)}")
    print(f"ack latency:          {spread(acks, 'ms', 1000)}")
    p99 = percentile(acks, 99) * 1000
    print(f"  target p99 <= 100 ms: {'ok' if p99 <= 100 else 'MISSED'}")
    print(f"  with this process's connection setup: {spread(from_start, 'ms', 1000)}")
    rows = []
    for replica in range(replicas):
        mine = [c.wire_s for c in clicks if c.replica == replica and c.status == 200]
        rows.append(
            {
                "replica": replica + 1,
                "clicks": len(mine),
                "ack p50 ms": f"{percentile(mine, 50) * 1000:.1f}",
                "ack p99 ms": f"{percentile(mine, 99) * 1000:.1f}",
            }
        )
    print(table(rows))
    print(f"click -> customerconfirm at the simulator: {spread(to_confirm, 'ms', 1000)}")
    p50 = percentile(to_confirm, 50) * 1000
    print(f"  target p50 <= 300 ms: {'ok' if p50 <= 300 else 'MISSED'}")
    print(
        f"  floor set by IVH_MAX_QPS={o.q:g} for {len(ids)} confirmations at once:"
        f" p50 {percentile(floor, 50) * 1000:.0f} ms, last {floor[-1] * 1000:.0f} ms"
        " (+ the polls already holding slots)"
    )
    doubles = sum(1 for n in per_task.values() if n > 1)
    print(
        f"customerconfirm calls: {len(sent)} for {len(per_task)} of {len(ids)} tasks;"
        f" tasks confirmed twice: {doubles}; 'Already being approved' answers: {outcome.busy}"
    )
    print(f"replicas logged {problems[0]} warnings: {problems[1] or '-'}")


async def main(o: Options) -> None:
    print_header(o)
    tasks = Tasks.of(o)
    async with lab(slack=True) as the_lab:
        bots = await post_every_message(the_lab, o, tasks)
        outcome = await click_and_wait_for_confirms(the_lab, o, bots, tasks)
    report(o, tasks, len(bots), outcome)


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3, help="bot processes (default 3)")
    parser.add_argument("--tasks", type=int, default=50, help="tasks waiting (default 50)")
    parser.add_argument("--clicks", type=int, default=100, help="clicks at once (default 100)")
    parser.add_argument("--q", type=float, default=200, help="IVH_MAX_QPS (default 200)")
    parser.add_argument("--interval", type=float, default=60, help="POLL_INTERVAL (60)")
    parser.add_argument("--background", type=int, default=0, help="tasks polled meanwhile")
    parser.add_argument("--slack-rate", type=float, default=1.0, help="posts/s per channel")
    args = parser.parse_args()
    return Options(
        args.replicas,
        args.tasks,
        args.clicks,
        args.q,
        args.interval,
        args.background,
        args.slack_rate,
    )


if __name__ == "__main__":
    asyncio.run(main(parse()))
