"""Stage-aware schedule: IVH requests per task-hour against a flat POLL_INTERVAL, and what it
costs in detection latency, over a simulated mix of customization tasks.

Each task lives through the stages of a customization (audit, preprocessing, training, the
confirm stage waiting for a decision, a REJECT sending it back to training, delivery after an
AGREE) with durations drawn from the ranges below. Every poll asks the bot's own
`bot.schedule.Schedule` when to read the task next, exactly as the poller does (the stage seen,
since when it was first seen), on a simulated clock: days of tasks' lives take a second, and no
server is involved (the poll cycle and detection benchmarks measure the I/O).

Printed, for the flat schedule and the stage-aware one side by side: requests per task-hour,
the cut, and the detection latency of each demo (a task entering CONFIRM/WAIT_PROCESS -> the
first poll that sees it), p50 / p95 / max [target: cut >= 3x, p95 <= POLL_INTERVAL + 1 s].

    .venv/bin/python bench/schedule.py
    .venv/bin/python bench/schedule.py --train-hours 4 12 --train-min-hours 4   # voices
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

from common import fmt, header, percentile, table

from bot.events import Snapshot
from bot.schedule import Schedule

HOUR = 3600.0


@dataclass(frozen=True)
class Stage:
    snapshot: Snapshot
    start: float
    end: float


def making(stage: str, stage_status: str = "PROCESSING", round_: int = 0) -> Snapshot:
    return Snapshot(status="MAKING", stage=stage, stage_status=stage_status, round=round_)


def life(rng: random.Random, args: argparse.Namespace) -> list[Stage]:
    """One task's stages, from being tracked to SUCCESS."""

    def hours(bounds: list[float]) -> float:
        return rng.uniform(*bounds) * HOUR

    stages: list[Stage] = []

    def add(snapshot: Snapshot, seconds: float) -> None:
        start = stages[-1].end if stages else 0.0
        stages.append(Stage(snapshot, start, start + seconds))

    add(making("AUDIT"), hours(args.audit_hours))
    add(making("PROCESS"), hours(args.preprocess_hours))
    round_ = 1
    while True:
        add(making("TRAIN", round_=round_ - 1), hours(args.train_hours))
        add(making("CONFIRM", "WAIT_PROCESS", round_), hours(args.decision_hours))
        if rng.random() >= args.reject_share or round_ == 3:
            break
        round_ += 1
    add(making("CONFIRM", round_=round_), hours(args.delivery_hours))
    add(Snapshot(status="SUCCESS", round=round_), 0.0)
    return stages


def poll(stages: list[Stage], schedule: Schedule, first: float) -> tuple[int, list[float]]:
    """Poll one task's life as the poller would: requests made, detection latency of each demo."""
    requests, now = 0, first
    seen: Snapshot | None = None
    stage_since = now
    detected: list[float] = []
    index = 0
    while True:
        while stages[index].end <= now and index < len(stages) - 1:
            index += 1
        stage = stages[index]
        requests += 1
        if stage.snapshot.finished:
            return requests, detected
        if seen is None or (seen.stage, seen.status, seen.stage_status) != (
            stage.snapshot.stage,
            stage.snapshot.status,
            stage.snapshot.stage_status,
        ):
            if stage.snapshot.waiting:
                detected.append(now - stage.start)
            # Like the poller, "since" is when a stage was first seen (status and stage).
            if seen is None or (seen.stage, seen.status) != (
                stage.snapshot.stage,
                stage.snapshot.status,
            ):
                stage_since = now
            seen = stage.snapshot
        elif stage.snapshot.waiting and seen.round != stage.snapshot.round:
            detected.append(now - stage.start)
            seen = stage.snapshot
        now += schedule.delay(stage.snapshot, stage_since, now)


def measure(
    lives: list[list[Stage]], firsts: list[float], schedule: Schedule
) -> tuple[float, list[float]]:
    requests, task_hours, detections = 0, 0.0, []
    for stages, first in zip(lives, firsts, strict=True):
        made, detected = poll(stages, schedule, first)
        requests += made
        task_hours += stages[-1].end / HOUR
        detections += detected
    return requests / task_hours, detections


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--interval", type=float, default=30.0, help="POLL_INTERVAL")
    parser.add_argument("--slow-interval", type=float, default=300.0, help="POLL_SLOW_INTERVAL")
    parser.add_argument(
        "--train-min-hours", type=float, default=24.0, help="TRAIN_MIN_SECONDS, in hours"
    )
    parser.add_argument("--audit-hours", type=float, nargs=2, default=[2.0, 24.0])
    parser.add_argument("--preprocess-hours", type=float, nargs=2, default=[0.5, 2.0])
    parser.add_argument("--train-hours", type=float, nargs=2, default=[24.0, 36.0])
    parser.add_argument("--decision-hours", type=float, nargs=2, default=[0.1, 4.0])
    parser.add_argument("--delivery-hours", type=float, nargs=2, default=[1.0, 4.0])
    parser.add_argument("--reject-share", type=float, default=0.25)
    return parser.parse_args()


def tasks_to_simulate(args: argparse.Namespace) -> tuple[list[list[Stage]], list[float]]:
    """The header, then each task's life and its first poll, from the seed."""
    header(
        "stage-aware schedule (simulated clock)",
        {
            "tasks": args.tasks,
            "POLL_INTERVAL": args.interval,
            "POLL_SLOW_INTERVAL": args.slow_interval,
            "TRAIN_MIN_SECONDS": args.train_min_hours * HOUR,
            "audit h": args.audit_hours,
            "preprocess h": args.preprocess_hours,
            "training h": args.train_hours,
            "decision h": args.decision_hours,
            "delivery h": args.delivery_hours,
            "REJECT share": args.reject_share,
        },
    )
    rng = random.Random(args.seed)
    lives = [life(rng, args) for _ in range(args.tasks)]
    firsts = [rng.uniform(0, args.interval) for _ in lives]
    return lives, firsts


def poll_under_both(
    args: argparse.Namespace, lives: list[list[Stage]], firsts: list[float]
) -> dict[str, tuple[float, list[float]]]:
    """Requests per task-hour and detection latencies, flat schedule and stage-aware."""
    flat = Schedule(args.interval)
    aware = Schedule(args.interval, args.slow_interval, args.train_min_hours * HOUR)
    return {
        name: measure(lives, firsts, schedule)
        for name, schedule in (("flat", flat), ("stage-aware", aware))
    }


def report(args: argparse.Namespace, results: dict[str, tuple[float, list[float]]]) -> None:
    rows = [
        {
            "schedule": name,
            "requests/task-hour": fmt(rate, 1),
            "demos": len(detections),
            "detection p50 s": fmt(percentile(detections, 50), 1),
            "p95 s": fmt(percentile(detections, 95), 1),
            "max s": fmt(max(detections), 1),
        }
        for name, (rate, detections) in results.items()
    ]
    print(table(rows))
    cut = results["flat"][0] / results["stage-aware"][0]
    print(f"\ncut: {cut:.2f}x fewer requests per task-hour [target >= 3x]")
    print(f"detection target: p95 <= POLL_INTERVAL + 1 s = {args.interval + 1:.0f} s")


def main() -> None:
    args = parse()
    lives, firsts = tasks_to_simulate(args)
    report(args, poll_under_both(args, lives, firsts))


if __name__ == "__main__":
    main()
