"""Poll cycle at the limit.

N tracked tasks, all in a long TRAIN phase (so every one stays polled), IVH_MAX_QPS = Q, the
simulator answering after 50 ms, 1 or more `ivh-approvals run` processes (replicas) sharing
the budget through Redis. The tasks are tracked while the replicas wait, then all made due at
once; the benchmark watches the simulator's request log until every task was read once.

Printed per combination:
- cycle: first getprogress at the simulator -> the last task's first getprogress [<= 1.1 N/Q]
- peak requests per second at the simulator, fixed 1 s buckets and sliding 1 s window [<= Q]
- over-Q: arrivals beyond Q in a sliding second (what a strict IVH limiter would refuse) [0];
  the simulator itself never answers "too frequent", so that count is 0 by construction
- errors: poll failures the replicas logged; repeats: tasks read twice within the cycle
- CPU per poll in the replicas, in Redis and in this process (the simulator)

POLL_INTERVAL is 2 N/Q + 10 s, so no task is due again before the cycle ends.

    .venv/bin/python bench/poll_cycle.py            # --quick (default): 5 combinations, 2-4 minutes
    .venv/bin/python bench/poll_cycle.py --full     # all 8 (N 1k/10k x Q 50/200 x 1/3 replicas)
    .venv/bin/python bench/poll_cycle.py --n 1000 --q 200 --replicas 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

from common import (
    FAR,
    LATENCY_MS,
    Lab,
    LoopLag,
    fmt,
    header,
    lab,
    over_limit,
    own_cpu_seconds,
    peak_fixed,
    problem_summary,
    say,
    sliding_counts,
    table,
)

QUICK = [(1000, 50, 1), (1000, 50, 3), (1000, 200, 1), (1000, 200, 3), (10000, 200, 3)]
FULL = list(itertools.product((1000, 10000), (50, 200), (1, 3)))


@dataclass
class Result:
    n: int
    q: int
    replicas: int
    interval: float
    polled: int
    cycle: float
    wake: float
    peak_fixed: int
    peak_sliding: int
    peak_at: float
    per_second: list[int]
    over_q: int
    repeats: int
    errors: int
    problems: str
    bot_cpu: float
    redis_cpu: float
    sim_cpu: float
    rss_mb: float
    sim_lag_ms: float

    def row(self) -> dict[str, Any]:
        ideal = self.n / self.q
        done = self.polled == self.n
        return {
            "N": self.n,
            "Q": self.q,
            "replicas": self.replicas,
            "POLL_INTERVAL": f"{self.interval:.0f}",
            "polled": self.polled,
            "cycle s": fmt(self.cycle, 1) + ("" if done else " (stopped)"),
            "polls/s": fmt(self.polled / self.cycle, 0) if self.cycle > 0 else "-",
            "N/Q s": fmt(ideal, 1),
            "ratio": fmt(self.cycle / ideal, 3) if done else "-",
            "cycle target": "ok" if done and self.cycle <= 1.1 * ideal else "MISSED",
            "peak/s fixed": self.peak_fixed,
            "peak/s sliding": self.peak_sliding,
            "peak target": "ok" if self.peak_sliding <= self.q else "MISSED",
            "over-Q": self.over_q,
            "errors": self.errors,
            "repeats": self.repeats,
            "bot CPU ms/poll": fmt(1000 * self.bot_cpu / max(1, self.polled)),
            "redis ms/poll": fmt(1000 * self.redis_cpu / max(1, self.polled)),
            "sim ms/poll": fmt(1000 * self.sim_cpu / max(1, self.polled)),
            "RSS MB": fmt(self.rss_mb, 0),
            "sim loop lag ms": fmt(self.sim_lag_ms, 0),
        }


def per_second(times: list[float], start: float) -> list[int]:
    """Arrivals in each whole second from `start` (the fixed buckets of `peak_fixed`)."""
    counts = [0] * (int(max(times, default=start) - start) + 1)
    for t in times:
        counts[int(t - start)] += 1
    return counts


def busiest_second_ends(times: list[float]) -> float:
    """When the sliding second holding the most arrivals ends (nan for no arrivals)."""
    counts = sliding_counts(times)
    if not counts:
        return float("nan")
    return sorted(times)[counts.index(max(counts))]


async def measure(the_lab: Lab, n: int, q: int, replicas: int, ids: list[str]) -> Result:
    await the_lab.reset()
    tasks = ids[:n]
    interval = 2 * n / q + 10
    took = await the_lab.track(tasks, due=time.time() + FAR)
    bots = await the_lab.start_bots(replicas, qps=q, interval=interval, slack=False)
    say(f"N={n} Q={q} replicas={replicas}: tracked in {took:.1f}s, replicas up; releasing")
    cpu0 = [bot.cpu() for bot in bots]
    redis0, sim0 = await the_lab.redis_cpu(), own_cpu_seconds()
    lag = LoopLag()
    lag.start()
    released = await the_lab.release(tasks)
    # Past 1.2 N/Q the target is missed anyway: stop there (plus time to start up).
    deadline = time.monotonic() + 1.2 * n / q + 15
    first: dict[str, float] = {}
    times: list[float] = []
    repeats, index = 0, 0
    while len(first) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        new, index = the_lab.getprogress_since(index)
        for request in new:
            times.append(request["t"])
            if request["task_id"] in first:
                repeats += 1
            else:
                first[request["task_id"]] = request["t"]
    sim_lag = await lag.stop()
    bot_cpu = sum(bot.cpu() - c for bot, c in zip(bots, cpu0, strict=True))
    redis_cpu, sim_cpu = await the_lab.redis_cpu() - redis0, own_cpu_seconds() - sim0
    rss = max(bot.rss_mb() for bot in bots)
    errors, problems = problem_summary(bots)
    await the_lab.stop_bots()
    start = min(times) if times else released
    # Finished: when the last task was first read. Stopped: when the benchmark gave up.
    end = max(first.values()) if len(first) == n else time.time()
    return Result(
        n=n,
        q=q,
        replicas=replicas,
        interval=interval,
        polled=len(first),
        cycle=end - start,
        wake=start - released,
        peak_fixed=peak_fixed(times),
        peak_sliding=max(sliding_counts(times), default=0),
        peak_at=busiest_second_ends(times) - start,
        per_second=per_second(times, start),
        over_q=over_limit(times, q),
        repeats=repeats,
        errors=errors,
        problems=problems,
        bot_cpu=bot_cpu,
        redis_cpu=redis_cpu,
        sim_cpu=sim_cpu,
        rss_mb=rss,
        sim_lag_ms=1000 * sim_lag,
    )


def print_header(combos: list[tuple[int, int, int]]) -> None:
    header(
        "poll cycle at the limit",
        {
            "combinations (N, Q, replicas)": combos,
            "simulator latency ms": LATENCY_MS,
            "replicas": "separate `ivh-approvals run` processes sharing one Redis",
            "POLL_INTERVAL": "2 N/Q + 10 s",
        },
    )


def say_result(result: Result, n: int, q: int) -> None:
    """One combination's figures as soon as it is measured."""
    ratio = result.cycle / (n / q)
    say(
        f"  cycle {result.cycle:.1f}s for {result.polled}/{n} tasks"
        f" (N/Q {n / q:.1f}s, ratio {ratio:.3f}, target <= 1.1);"
        f" peak {result.peak_sliding}/s sliding, {result.peak_fixed}/s fixed"
        f" (target <= {q}), busiest second ends at +{result.peak_at:.1f}s;"
        f" over-Q {result.over_q}; {result.errors} warnings"
    )
    say(f"  requests per second: {' '.join(map(str, result.per_second))}")
    if result.problems:
        say(f"  replicas logged: {result.problems}")


async def measure_each(combos: list[tuple[int, int, int]]) -> list[Result]:
    """Set-up (one lab, every task created once) and drive: one cycle per combination."""
    ids = [f"poll_{i:06d}" for i in range(max(n for n, _, _ in combos))]
    results: list[Result] = []
    async with lab() as the_lab:
        the_lab.create_tasks(ids)
        for n, q, replicas in combos:
            result = await measure(the_lab, n, q, replicas, ids)
            say_result(result, n, q)
            results.append(result)
    return results


def report(results: list[Result]) -> None:
    print()
    print(table([r.row() for r in results]))
    print(
        "\ncycle: first request at the simulator -> last task's first request;"
        " ratio: cycle / (N/Q); cycle target: ratio <= 1.1."
        "\npeak/s: requests at the simulator in one second (fixed buckets from the first"
        " request; sliding window); peak target: sliding <= Q."
        " over-Q: requests beyond Q in a sliding"
        " second. The simulator has no limiter: it answered no 'too frequent' (100012) code."
        "\nerrors: WARNING-or-worse lines the replicas logged (failed polls, retries, Redis)."
        "\nsim loop lag: the worst late wake-up of this process's event loop (the simulator's);"
        " arrivals it delays are stamped late and bunch, overstating the peaks."
        "\nCPU per poll: replicas' user+system CPU, Redis's, and this process's (simulator)"
        " over the cycle, divided by the tasks polled."
    )


async def main(combos: list[tuple[int, int, int]]) -> None:
    print_header(combos)
    report(await measure_each(combos))


def parse() -> list[tuple[int, int, int]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="5 combinations (default): N=1000 x Q 50/200 x 1/3 replicas; N=10000, Q=200, 3",
    )
    mode.add_argument("--full", action="store_true", help="all 8 combinations (about 12 minutes)")
    parser.add_argument("--n", type=int, nargs="+", help="tracked tasks (e.g. 1000 10000)")
    parser.add_argument("--q", type=int, nargs="+", help="IVH_MAX_QPS values (e.g. 50 200)")
    parser.add_argument("--replicas", type=int, nargs="+", help="replica counts (e.g. 1 3)")
    args = parser.parse_args()
    combos = FULL if args.full else QUICK
    if args.n or args.q or args.replicas:
        n, q, r = args.n or [1000, 10000], args.q or [50, 200], args.replicas or [1, 3]
        combos = list(itertools.product(n, q, r))
    return combos


if __name__ == "__main__":
    asyncio.run(main(parse()))
