"""What a change in a task's progress means: pure functions from two snapshots to events."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from bot.ivh import Progress, awaiting_confirmation


class EventType(StrEnum):
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    ROUND_CHANGED = "round_changed"
    LEFT_CONFIRMATION = "left_confirmation"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN_TASK = "unknown_task"


class Snapshot(BaseModel):
    """The part of a progress answer the bot acts on; equal snapshots mean nothing changed."""

    model_config = ConfigDict(frozen=True)

    status: str
    stage: str = ""
    stage_status: str = ""
    round: int = 0
    demo_urls: tuple[str, ...] = ()
    reject_reason: str = ""
    fail_message: str = ""
    assets: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, progress: Progress, *, previous_round: int = 0) -> Snapshot:
        # The round never goes backwards: outside CONFIRM, StageInfo is empty and says nothing.
        return cls(
            status=progress.status,
            stage=progress.stage,
            stage_status=progress.stage_status,
            round=max(progress.round, previous_round),
            demo_urls=tuple(progress.demo_urls),
            reject_reason=progress.confirm.reject_reason if progress.confirm else "",
            fail_message=progress.fail_message,
            assets=tuple(progress.assets),
        )

    @property
    def waiting(self) -> bool:
        return awaiting_confirmation(self.status, self.stage, self.stage_status)

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCESS", "FAIL")


class Event(BaseModel):
    """One entry of the events stream."""

    type: EventType
    task_id: str
    round: int = 0
    at: float
    status: str = ""
    stage: str = ""
    stage_status: str = ""
    demo_urls: list[str] = []
    reject_reason: str = ""
    fail_message: str = ""
    assets: list[dict[str, Any]] = []
    message: str = ""


def transitions(previous: Snapshot | None, current: Snapshot) -> list[EventType]:
    """The events that going from `previous` (None: never seen) to `current` produces."""
    found: list[EventType] = []
    was_waiting = previous is not None and previous.waiting
    if current.waiting:
        if not was_waiting:
            found.append(EventType.AWAITING_CONFIRMATION)
        elif previous is not None and current.round != previous.round:
            found.append(EventType.ROUND_CHANGED)
    elif was_waiting:
        found.append(EventType.LEFT_CONFIRMATION)
    previous_status = previous.status if previous else None
    if current.status == "SUCCESS" and previous_status != "SUCCESS":
        found.append(EventType.SUCCEEDED)
    if current.status == "FAIL" and previous_status != "FAIL":
        found.append(EventType.FAILED)
    return found


def build_events(
    task_id: str, previous: Snapshot | None, current: Snapshot, at: float
) -> list[Event]:
    return [
        Event(
            type=kind,
            task_id=task_id,
            round=current.round,
            at=at,
            status=current.status,
            stage=current.stage,
            stage_status=current.stage_status,
            demo_urls=list(current.demo_urls) if current.waiting else [],
            reject_reason=current.reject_reason,
            fail_message=current.fail_message,
            assets=list(current.assets),
        )
        for kind in transitions(previous, current)
    ]


def operate_that_left(event: Event) -> str | None:
    """Which decision moves a task from WAIT_PROCESS to where `event` found it, if any."""
    delivering = event.status == "MAKING" and event.stage == "CONFIRM"
    if event.status == "SUCCESS" or (delivering and event.stage_status != "WAIT_PROCESS"):
        return "AGREE"
    if event.status == "MAKING" and event.stage == "TRAIN":
        return "REJECT"
    return None
