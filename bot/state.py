"""The state a task's Slack message is rebuilt from, and the pure rules that derive it."""

from __future__ import annotations

from bot.model import Decision, Phase, TaskRecord, TaskView, Upload, Votes


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
    votes: dict[int, Votes] | None = None,
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
        votes=(votes or {}).get(current),
        upload=uploads.get(current),
        tencent_reject_reason=snapshot.reject_reason if snapshot else "",
        fail_message=snapshot.fail_message if snapshot else "",
        assets=list(snapshot.assets) if snapshot else [],
    )
