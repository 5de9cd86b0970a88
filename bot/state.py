"""The state a task's Slack message is rebuilt from, and the pure rules that derive it."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from bot.store import TaskRecord

Source = Literal["slack", "elsewhere"]


class Phase(StrEnum):
    TRAINING = "training"  # tracked, no demo to decide on yet
    PENDING = "pending"  # a demo waits for a decision
    APPROVED = "approved"
    REJECTED = "rejected"  # back to training for another round
    ELSEWHERE = "elsewhere"  # decided outside Slack (the Tencent console)
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Decision(BaseModel):
    """What was decided for one round, by whom, when and why."""

    round: int
    operate: Literal["AGREE", "REJECT"] | None  # None: decided elsewhere, outcome unseen
    user: str = ""
    at: float
    reason: str = ""
    request_id: str = ""
    source: Source = "slack"


class Upload(BaseModel):
    """How copying one round's demo videos into the thread went."""

    round: int
    ok: bool
    files: int = 0
    error: str = ""


class TaskView(BaseModel):
    """Everything the message shows; built by `view_of`, rendered by `bot.messages`."""

    task_id: str
    title: str | None = None
    tracked_by: str = ""
    tracked_at: float = 0.0
    phase: Phase
    round: int
    demo_urls: list[str] = []
    decisions: list[Decision] = []
    upload: Upload | None = None
    tencent_reject_reason: str = ""
    fail_message: str = ""
    assets: list[dict[str, Any]] = []

    @property
    def current_decision(self) -> Decision | None:
        return next((d for d in self.decisions if d.round == self.round), None)

    @property
    def earlier_rejections(self) -> list[Decision]:
        return [d for d in self.decisions if d.round < self.round and d.operate == "REJECT"]


def phase_of(record: TaskRecord, decision: Decision | None) -> Phase:
    """Ending first, then a decision on the current round, then the live stage."""
    snapshot = record.snapshot
    if snapshot is not None and snapshot.status == "SUCCESS":
        return Phase.SUCCEEDED
    if snapshot is not None and snapshot.status == "FAIL":
        return Phase.FAILED
    if decision is not None:
        if decision.source == "elsewhere":
            return Phase.ELSEWHERE
        return Phase.APPROVED if decision.operate == "AGREE" else Phase.REJECTED
    if snapshot is not None and snapshot.waiting:
        return Phase.PENDING
    return Phase.TRAINING


def view_of(
    record: TaskRecord,
    decisions: dict[int, Decision],
    uploads: dict[int, Upload],
    demos: dict[int, list[str]],
) -> TaskView:
    snapshot = record.snapshot
    current = record.round
    return TaskView(
        task_id=record.task_id,
        title=record.title,
        tracked_by=record.tracked_by,
        tracked_at=record.tracked_at,
        phase=phase_of(record, decisions.get(current)),
        round=current,
        demo_urls=demos.get(current, []),
        decisions=[decisions[n] for n in sorted(decisions)],
        upload=uploads.get(current),
        tencent_reject_reason=snapshot.reject_reason if snapshot else "",
        fail_message=snapshot.fail_message if snapshot else "",
        assets=list(snapshot.assets) if snapshot else [],
    )
