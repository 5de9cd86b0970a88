"""Posting burst: many tasks reach CONFIRM in the same second, in one channel.

`--tasks` tasks (default 200) train in channel CBURST, plus one bystander task in its own
channel COTHER. Once every task was read once, all of them are flipped to CONFIRM/WAIT_PROCESS
within a few milliseconds (`Simulator.advance`). The fake Slack paces chat.postMessage at
`--slack-rate` per channel (default 1/s) and answers 429 with Retry-After beyond it, as Slack
does.

Printed: parent messages posted (none missing, none twice), the time from the flip to the
last parent post divided by the bound the rate limit allows (tasks / rate: 200 s at 1/s), the
429 answers, the bystander's latency (the other channel), and every Slack call the bot made
per task during the burst.

    .venv/bin/python bench/posting_burst.py               # 200 tasks: about 5 minutes
    .venv/bin/python bench/posting_burst.py --tasks 30    # under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from common import (
    LATENCY_MS,
    BotProcess,
    Call,
    Lab,
    all_polled,
    fmt,
    header,
    lab,
    problem_summary,
    say,
    table,
    wait_until,
)

BURST, OTHER = "CBURST0001", "COTHER0001"
BYSTANDER = "bystander_0001"


@dataclass
class Options:
    tasks: int
    slack_rate: float
    q: float
    interval: float
    replicas: int


def task_in(args: dict[str, object]) -> str | None:
    found = re.search(r"burst_\d{4}|" + BYSTANDER, json.dumps(args, default=str))
    return str(found[0]) if found else None


@dataclass
class Burst:
    """What the fake Slack saw from the flip on, and when."""

    flipped: float  # monotonic: every task at CONFIRM
    done: float  # monotonic: every parent message posted
    calls: list[Call]
    problems: tuple[int, str]


def print_header(o: Options) -> None:
    header(
        "posting burst",
        {
            "tasks in one channel": o.tasks,
            "fake Slack chat.postMessage per channel per s": o.slack_rate,
            "IVH_MAX_QPS": o.q,
            "POLL_INTERVAL": o.interval,
            "replicas": o.replicas,
            "simulator latency ms": LATENCY_MS,
        },
    )


def burst_tasks(o: Options) -> list[str]:
    return [f"burst_{i:04d}" for i in range(o.tasks)]


async def track_and_read_once(the_lab: Lab, o: Options, everyone: list[str]) -> list[BotProcess]:
    """Set-up: the bots track every task, spread over one interval, until each was read."""
    assert the_lab.fake is not None
    the_lab.fake.channel_rate(o.slack_rate)
    the_lab.create_tasks(everyone)
    bots = await the_lab.start_bots(o.replicas, qps=o.q, interval=o.interval, slack=True)
    channels = {task_id: BURST for task_id in everyone} | {BYSTANDER: OTHER}
    now = time.time()
    dues = {task_id: now + random.uniform(0, o.interval) for task_id in everyone}
    await the_lab.track(everyone, channels=channels, dues=dues)

    async def read() -> bool:
        return await all_polled(the_lab.store, everyone)

    await wait_until(read, within=o.interval + 150, every=0.5, what="every task read")
    return bots


async def flip_and_wait_for_posts(the_lab: Lab, o: Options, everyone: list[str]) -> Burst:
    """Drive: every task to CONFIRM at once, then until every message and video is at Slack."""
    fake = the_lab.fake
    assert fake is not None
    await asyncio.sleep(1.0)
    before = len(fake.calls)
    started = time.monotonic()
    for task_id in everyone:
        the_lab.sim.advance(task_id)
    flipped = time.monotonic()
    say(f"flipped {len(everyone)} tasks in {1000 * (flipped - started):.1f} ms")
    bound = o.tasks / o.slack_rate

    progress = {"shown": 0.0}

    async def all_posted() -> bool:
        count = len(posted_from(fake.calls[before:]))
        if time.monotonic() - progress["shown"] > 30:
            progress["shown"] = time.monotonic()
            say(f"  {count} of {len(everyone)} parent messages posted")
        return count == len(everyone)

    await wait_until(all_posted, within=2.5 * bound + 90, every=0.5, what="every post")
    done = time.monotonic()

    async def uploads_done() -> bool:
        completed = fake.calls_to("files.completeUploadExternal")
        return sum(1 for c in completed if not c.fault and not c.error) >= len(everyone)

    await wait_until(uploads_done, within=30, every=0.5, what="every video upload")
    await asyncio.sleep(3.0)  # anything sent twice would arrive now
    return Burst(flipped, done, fake.calls[before:], problem_summary(the_lab.bots))


def report(o: Options, everyone: list[str], burst: Burst) -> None:
    flipped, calls = burst.flipped, burst.calls
    bound = o.tasks / o.slack_rate
    posts = posted_from(calls)
    burst_times = [min(at) for task_id, at in posts.items() if task_id != BYSTANDER]
    last = max(burst_times, default=float("nan"))
    doubles = {task_id: len(at) for task_id, at in posts.items() if len(at) > 1}
    missing = [task_id for task_id in everyone if task_id not in posts]
    elapsed = last - flipped
    limited = [c for c in calls if c.method == "chat.postMessage" and c.fault == "http_429"]

    def kind(call: Call) -> str:
        return str(call.method) + (" (thread reply)" if call.args.get("thread_ts") else "")

    per_method = Counter(kind(c) for c in calls)
    accepted = Counter(kind(c) for c in calls if not c.fault and not c.error)
    print()
    print(f"parent messages posted: {len(burst_times)} / {o.tasks} in {BURST}"
          f"; missing {len(missing)}; posted twice {len(doubles)}")  # fmt: skip
    print(f"flip -> first parent post: {fmt(min(burst_times, default=float('nan')) - flipped)} s")
    print(f"flip -> last parent post:  {fmt(elapsed, 1)} s; bound at {o.slack_rate:g}/s:"
          f" {bound:.0f} s; ratio {fmt(elapsed / bound)}")  # fmt: skip
    print(f"429 answers to chat.postMessage: {len(limited)}"
          f" ({len(limited) / max(1, o.tasks):.2f} per task)")  # fmt: skip
    if BYSTANDER in posts:
        print(
            f"bystander in {OTHER}: posted {fmt(min(posts[BYSTANDER]) - flipped)} s after the flip"
        )
    else:
        print(f"bystander in {OTHER}: not posted")
    print(f"all done (posts and uploads) {fmt(burst.done - flipped, 1)} s after the flip")
    print(
        f"\nSlack calls per task during the burst (all {len(calls)} calls / {len(everyone)} tasks):"
    )
    rows = [
        {
            "method": method,
            "attempts/task": fmt(count / len(everyone)),
            "accepted/task": fmt(accepted[method] / len(everyone)),
            "paced by the fake": "yes" if method == "chat.postMessage" else "no",
        }
        for method, count in sorted(per_method.items())
    ]
    print(table(rows))
    print(f"\nreplicas logged {burst.problems[0]} warnings: {burst.problems[1] or '-'}")


async def main(o: Options) -> None:
    print_header(o)
    everyone = [*burst_tasks(o), BYSTANDER]
    async with lab(slack=True) as the_lab:
        await track_and_read_once(the_lab, o, everyone)
        burst = await flip_and_wait_for_posts(the_lab, o, everyone)
    report(o, everyone, burst)


def posted_from(calls: Sequence[Call]) -> dict[str, list[float]]:
    """Accepted top-level chat.postMessage calls per task: when each arrived (monotonic)."""
    found: dict[str, list[float]] = {}
    for call in calls:
        if call.method != "chat.postMessage" or call.fault or call.error:
            continue
        if call.args.get("thread_ts"):
            continue
        task_id = task_in(call.args)
        if task_id is not None:
            found.setdefault(task_id, []).append(call.at)
    return found


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks in the burst (200)")
    parser.add_argument("--slack-rate", type=float, default=1.0, help="posts/s per channel")
    parser.add_argument("--q", type=float, default=50, help="IVH_MAX_QPS (default 50)")
    parser.add_argument("--interval", type=float, default=5, help="POLL_INTERVAL (default 5)")
    parser.add_argument("--replicas", type=int, default=1, help="bot processes (default 1)")
    args = parser.parse_args()
    return Options(args.tasks, args.slack_rate, args.q, args.interval, args.replicas)


if __name__ == "__main__":
    asyncio.run(main(parse()))
