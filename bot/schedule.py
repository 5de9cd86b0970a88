"""When to read a task's progress next: often where news is due, rarely where it is not."""

from __future__ import annotations

from dataclasses import dataclass

from bot.model import Snapshot

EARLY_STAGES = frozenset({"SUBMIT", "AUDIT", "PROCESS"})


@dataclass(frozen=True)
class Schedule:
    """Stage-aware polling.

    - CONFIRM (a demo waits, or delivery runs), unknown stages, and training that is due to
      end: every `interval` seconds.
    - Submission, audit and preprocessing: every `slow_interval` seconds; nothing the team
      acts on can happen there (a failure is still reported, only later).
    - Training: every `slow_interval` seconds for its first `train_min` seconds (the shortest
      training you expect), then every `interval` seconds, so the demo is seen promptly.
    With `slow_interval <= interval` or `train_min == 0` it is a flat schedule.
    """

    interval: float
    slow_interval: float = 0.0
    train_min: float = 0.0

    def delay(self, snapshot: Snapshot, stage_since: float, now: float) -> float:
        slow = max(self.slow_interval, self.interval)
        if snapshot.status != "MAKING":
            return self.interval
        if snapshot.stage in EARLY_STAGES:
            return slow
        if snapshot.stage == "TRAIN":
            due = stage_since + self.train_min - now
            if due > self.interval:
                return min(slow, due)
        return self.interval
