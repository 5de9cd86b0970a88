"""Footprint: one process's memory with many tasks, Redis bytes per task, growth over a soak.

Part 1: one `ivh-approvals run` process (HTTP mode, fake Slack) tracking `--tasks` tasks
(default 10,000) in a long TRAIN phase, first due at random moments within one POLL_INTERVAL
(the steady state of a running bot). After every task was read once: the process's VmRSS and
VmHWM from /proc/PID/status [<= 150 MB], and Redis's used_memory per task [<= 2 KB], by key
family (MEMORY USAGE of a sample of keys).

Part 2, a soak compressed in time: `--soak-tasks` tasks (default 10) first polled without
change (does anything grow per poll?), then driven through round after round: training for
0.3 s, demo posted, rejected "in the console" 0.5 s later, next round. Redis is sampled every
`--sample` seconds: bytes per key family, history entries, stream entries. Printed: growth per
round and per task, whether the history list stops at its cap, the stream's bytes per entry
and its size at the ~100k cap, then all tasks are approved and the keys' TTLs are read.

    .venv/bin/python bench/footprint.py                        # about 7 minutes
    .venv/bin/python bench/footprint.py --tasks 2000 --soak-seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from common import (
    LATENCY_MS,
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

from bot.store import (
    EVENTS_MAXLEN,
    EVENTS_STREAM,
    IVH_RATE,
    SCHEDULE,
    family_pattern,
    history_key,
    task_key,
)

FAMILIES = ("task", "history", "decisions", "uploads", "demos", "claim", "steps")
SINGLES = {"schedule": SCHEDULE, "events": EVENTS_STREAM, "rate": IVH_RATE}


@dataclass
class Options:
    tasks: int
    q: float
    interval: float
    soak_tasks: int
    soak_seconds: float
    sample: float


async def used_memory(the_lab: Lab) -> int:
    """used_memory less what clients' buffers and the AOF buffer hold at this instant."""
    info = await the_lab.redis_info("memory")
    transient = sum(int(info.get(k, 0)) for k in ("mem_clients_normal", "mem_aof_buffer"))
    return int(info["used_memory"]) - transient


async def usage(the_lab: Lab, keys: list[str]) -> int:
    """Bytes Redis holds for these keys (MEMORY USAGE, exact: SAMPLES 0)."""
    total = 0
    for start in range(0, len(keys), 500):
        async with the_lab.redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 500]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in await pipe.execute())
    return total


async def keys_of(the_lab: Lab, family: str) -> list[str]:
    found = [k async for k in the_lab.redis.scan_iter(match=family_pattern(family), count=1000)]
    return [k.decode() if isinstance(k, bytes) else k for k in found]


async def families(the_lab: Lab) -> dict[str, tuple[int, int]]:
    """Per key family: (keys, bytes)."""
    result: dict[str, tuple[int, int]] = {}
    for family in FAMILIES:
        keys = await keys_of(the_lab, family)
        result[family] = (len(keys), await usage(the_lab, keys))
    for name, key in SINGLES.items():
        exists = int(await the_lab.redis.exists(key))
        result[name] = (exists, await usage(the_lab, [key]) if exists else 0)
    return result


async def count_polled(the_lab: Lab, ids: list[str]) -> int:
    read = 0
    for start in range(0, len(ids), 500):
        async with the_lab.redis.pipeline(transaction=False) as pipe:
            for task_id in ids[start : start + 500]:
                pipe.hexists(task_key(task_id), "snapshot")
            read += sum(1 for found in await pipe.execute() if found)
    return read


async def part_one(the_lab: Lab, o: Options) -> None:
    say(f"part 1: one process, {o.tasks} tasks, IVH_MAX_QPS={o.q:g}, POLL_INTERVAL={o.interval:g}")
    ids = [f"mem_{i:06d}" for i in range(o.tasks)]
    the_lab.create_tasks(ids)
    [bot] = await the_lab.start_bots(1, qps=o.q, interval=o.interval, slack=True)
    await asyncio.sleep(2.0)
    idle_rss = bot.rss_mb()
    empty = await used_memory(the_lab)
    start = time.time() + 15  # tracking takes a few seconds: nothing is due before it ends
    dues = {task_id: start + random.uniform(0, o.interval) for task_id in ids}
    took = await the_lab.track(ids, dues=dues)
    tracked = await used_memory(the_lab)
    say(f"tracked in {took:.1f}s; waiting for one full poll cycle (about {o.interval:.0f}s)")

    async def cycle_done() -> bool:
        return await all_polled(the_lab.store, ids)

    done = await wait_until(cycle_done, within=o.interval + 120, every=2.0, what="full cycle")
    read = len(ids) if done else await count_polled(the_lab, ids)
    await asyncio.sleep(2.0)
    rss, peak = bot.rss_mb(), bot.peak_rss_mb()
    polled = await used_memory(the_lab)
    sample = random.Random(7).sample(ids, min(500, len(ids)))
    task_bytes = await usage(the_lab, [task_key(t) for t in sample]) / len(sample)
    history_bytes = await usage(the_lab, [history_key(t) for t in sample]) / len(sample)
    schedule_bytes = await usage(the_lab, [SCHEDULE]) / len(ids)
    history_len = sum([await the_lab.redis.llen(history_key(t)) for t in sample]) / len(sample)
    fields = await the_lab.redis.hgetall(task_key(sample[0]))
    encoding = await the_lab.redis.object("encoding", task_key(sample[0]))
    if isinstance(encoding, bytes):
        encoding = encoding.decode()
    names = {k: k.decode() if isinstance(k, bytes) else str(k) for k in fields}
    widest = sorted(((len(k) + len(v), names[k]) for k, v in fields.items()), reverse=True)
    problems = problem_summary([bot])
    await the_lab.reset()
    n = len(ids)
    print()
    print(f"process RSS: idle {idle_rss:.0f} MB; after a full cycle of {n} tasks"
          f" {rss:.0f} MB (peak {peak:.0f} MB)"
          f" -> target <= 150 MB: {'ok' if peak <= 150 else 'MISSED'}")  # fmt: skip
    if not done:
        print(f"  INCOMPLETE: only {read} of {n} tasks were read within POLL_INTERVAL + 120 s;"
              " the figures below undercount the first poll's share")  # fmt: skip
    print(f"Redis used_memory per task: {(tracked - empty) / n:.0f} B tracked,"
          f" {(polled - empty) / n:.0f} B after the first poll"
          f" -> target <= 2 KB: {'ok' if (polled - empty) / n <= 2048 else 'MISSED'}")  # fmt: skip
    print(f"  by key (MEMORY USAGE, mean of {len(sample)} tasks): ivh:task {task_bytes:.0f} B,"
          f" ivh:history {history_bytes:.0f} B ({history_len:.1f} entries),"
          f" ivh:schedule {schedule_bytes:.0f} B per member;"
          f" sum {task_bytes + history_bytes + schedule_bytes:.0f} B")  # fmt: skip
    print(f"  ivh:task is a {encoding} hash of {len(fields)} fields,"
          f" {sum(w for w, _ in widest)} B of names+values;"
          " widest: " + ", ".join(f"{k} {w} B" for w, k in widest[:3]))  # fmt: skip
    print(f"replica logged {problems[0]} warnings: {problems[1] or '-'}")
    print()


async def part_two(the_lab: Lab, o: Options) -> None:
    ids = [f"soak_{i:04d}" for i in range(o.soak_tasks)]
    say(f"part 2: soak of {len(ids)} tasks for {o.soak_seconds:.0f}s (POLL_INTERVAL 0.2 s)")
    the_lab.create_tasks(ids)
    [bot] = await the_lab.start_bots(1, qps=500, interval=0.2, slack=True)
    await the_lab.track(ids)

    async def polled() -> bool:
        return await all_polled(the_lab.store, ids)

    await wait_until(polled, within=30, what="soak tasks read")
    base, keys_before = await used_memory(the_lab), await families(the_lab)
    index = len(the_lab.sim.requests)
    await asyncio.sleep(10.0)
    polls = sum(1 for r in the_lab.sim.requests[index:] if r["action"] == "getprogress")
    drift = await used_memory(the_lab) - base
    keys_after = await families(the_lab)
    grown = sum(keys_after[f][1] - keys_before[f][1] for f in keys_after)
    print(f"no-change polling: {polls} polls in 10 s; the keys' MEMORY USAGE changed by"
          f" {grown:+d} B ({grown / max(1, polls):+.1f} B per poll); used_memory by"
          f" {drift:+d} B (allocator and buffers included)")  # fmt: skip
    for task_id in ids:  # from now on: 0.3 s of training per round
        the_lab.sim.tasks[task_id].train_seconds = 0.3
    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    next_sample = started
    while True:
        now = time.monotonic()
        if now >= next_sample:
            samples.append(await snapshot(the_lab, ids, now - started))
            next_sample += o.sample
        if now - started >= o.soak_seconds:
            break
        clock = the_lab.sim.clock()
        for task_id in ids:
            task = the_lab.sim.task(task_id)
            if task.phase.value == "WAIT" and clock - task.phase_started >= 0.5:
                the_lab.sim.confirm(task_id, "REJECT", f"soak round {task.round}")
        await asyncio.sleep(0.05)
    lag = await publisher_lag(the_lab)
    soaked = time.monotonic() - started
    print()
    print(table([{k: v for k, v in s.items() if not k.startswith("_")} for s in samples]))
    first, last = samples[1] if len(samples) > 1 else samples[0], samples[-1]
    rounds = last["rounds"] - first["rounds"]
    per_task = rounds / len(ids)
    print(f"\ngrowth between t={first['t']} s and t={last['t']} s: {rounds} rounds"
          f" ({per_task:.1f} per task)")  # fmt: skip
    handled = last["stream entries"] - lag
    print(f"publisher: handled {handled} of {last['stream entries']} events in {soaked:.0f} s"
          f" ({handled / soaked:.1f}/s); {lag} behind at the end")  # fmt: skip
    if rounds > 0:
        rows = []
        for family in (*FAMILIES, *SINGLES):
            delta = last["_bytes"][family] - first["_bytes"][family]
            rows.append(
                {
                    "key family": family,
                    "bytes at end": last["_bytes"][family],
                    "bytes per round": fmt(delta / rounds, 0),
                }
            )
        print(table(rows))
        entries = (last["history entries"] - first["history entries"]) / rounds
        print(f"history: {entries:.1f} entries per round; longest list {last['longest history']}"
              " entries")  # fmt: skip
        events = last["stream entries"] - first["stream entries"]
        stream_bytes = last["_bytes"]["events"] - first["_bytes"]["events"]
        if events > 0:
            per_entry = stream_bytes / events
            print(f"stream: {events / rounds:.1f} entries per round, {per_entry:.0f} B per entry"
                  f" -> about {per_entry * EVENTS_MAXLEN / 2**20:.0f} MB at its"
                  f" ~{EVENTS_MAXLEN} entry cap")  # fmt: skip
        total = (last["used_memory"] - first["used_memory"]) / rounds
        print(f"used_memory: {total:.0f} B per round overall")
    await approve_all(the_lab, ids)
    problems = problem_summary([bot])
    print(f"replica logged {problems[0]} warnings: {problems[1] or '-'}")


async def snapshot(the_lab: Lab, ids: list[str], t: float) -> dict[str, Any]:
    per_family = await families(the_lab)
    lengths = [await the_lab.redis.llen(history_key(task_id)) for task_id in ids]
    rounds = sum(the_lab.sim.tasks[task_id].round - 1 for task_id in ids)
    return {
        "t": round(t),
        "rounds": rounds,
        "used_memory": await used_memory(the_lab),
        "history entries": sum(lengths),
        "longest history": max(lengths),
        "stream entries": int(await the_lab.redis.xlen(EVENTS_STREAM)),
        "history KB": round(per_family["history"][1] / 1024),
        "stream KB": round(per_family["events"][1] / 1024),
        "other KB": round(
            sum(b for f, (_, b) in per_family.items() if f not in ("history", "events")) / 1024
        ),
        "steps keys": per_family["steps"][0],
        "_bytes": {family: b for family, (_, b) in per_family.items()},
    }


async def publisher_lag(the_lab: Lab) -> int:
    groups = await the_lab.redis.xinfo_groups(EVENTS_STREAM)
    return sum(int(g.get("lag") or 0) + int(g.get("pending") or 0) for g in groups)


async def approve_all(the_lab: Lab, ids: list[str]) -> None:
    """Approve every task; once they succeeded, read their keys' time to live."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = [t for t in ids if the_lab.sim.task(t).phase.value != "SUCCESS"]
        if not pending:
            break
        for task_id in pending:
            if the_lab.sim.task(task_id).phase.value == "WAIT":
                the_lab.sim.confirm(task_id, "AGREE")
        await asyncio.sleep(0.2)

    async def finished() -> bool:
        records = [await the_lab.store.get(t) for t in ids]
        return all(r is not None and r.state.value == "finished" for r in records)

    await wait_until(finished, within=30, what="tasks finished in the store")
    ttls = []
    for family in FAMILIES:
        for key in await keys_of(the_lab, family):
            if key.startswith((family_pattern("claim")[:-1], family_pattern("steps")[:-1])):
                continue
            ttls.append(int(await the_lab.redis.ttl(key)))
    forever = sum(1 for t in ttls if t == -1)
    days = [t / 86400 for t in ttls if t > 0]
    print(f"after approval: {len(ttls)} task keys; {forever} without expiry;"
          f" the others expire in {fmt(min(days, default=float('nan')), 1)}"
          f"-{fmt(max(days, default=float('nan')), 1)} days")  # fmt: skip


async def main(o: Options) -> None:
    header(
        "footprint",
        {
            "tasks": o.tasks,
            "IVH_MAX_QPS": o.q,
            "POLL_INTERVAL": o.interval,
            "soak tasks": o.soak_tasks,
            "soak seconds": o.soak_seconds,
            "simulator latency ms": LATENCY_MS,
        },
    )
    async with lab(slack=True) as the_lab:
        if o.tasks:
            await part_one(the_lab, o)
        if o.soak_tasks and o.soak_seconds:
            await part_two(the_lab, o)


def parse() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10000, help="part 1 tasks (10000)")
    parser.add_argument("--q", type=float, default=50, help="part 1 IVH_MAX_QPS (50)")
    parser.add_argument("--interval", type=float, help="part 1 POLL_INTERVAL (1.1 x tasks/Q)")
    parser.add_argument("--soak-tasks", type=int, default=10, help="part 2 tasks (10)")
    parser.add_argument("--soak-seconds", type=float, default=120, help="part 2 length (120)")
    parser.add_argument("--sample", type=float, default=15, help="part 2 sampling period (15)")
    args = parser.parse_args()
    interval = args.interval or max(10.0, 1.1 * args.tasks / args.q)
    return Options(args.tasks, args.q, interval, args.soak_tasks, args.soak_seconds, args.sample)


if __name__ == "__main__":
    asyncio.run(main(parse()))
