"""What a change in a task's progress means: pure functions from two snapshots to events."""

from __future__ import annotations

from bot.model import Event, EventType, Progress, Snapshot


def snapshot_of(progress: Progress, previous: Snapshot | None = None) -> Snapshot:
    """The snapshot of `progress`, numbered against the last one seen (`previous`)."""
    return Snapshot(
        status=progress.status,
        stage=progress.stage,
        stage_status=progress.stage_status,
        round=round_of(previous, progress),
        demo_urls=tuple(progress.demo_urls),
        train_records=progress.train_records,
        reject_reason=progress.confirm.reject_reason if progress.confirm else "",
        fail_message=progress.fail_message,
        assets=tuple(progress.assets),
    )


def demo_identity(urls: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Which videos a set of demo URLs names: the URLs without query or fragment, since a
    storage link may be signed afresh on every read while naming the same file."""
    return frozenset(url.split("#", 1)[0].split("?", 1)[0] for url in urls)


def round_of(previous: Snapshot | None, progress: Progress) -> int:
    """Which round `progress` is in, given the last snapshot seen of the task.

    Right under both readings of TrainRecord (it lists the round awaiting confirmation, or only
    the earlier ones) and when a retrain finishes between two polls: a new round starts when the
    task comes back to WAIT_PROCESS after leaving it, or when, still waiting, its demo videos
    change or TrainRecord grows. TrainRecord may only raise the count, never lower it.
    """
    listed = progress.train_records or 0
    last = previous.round if previous is not None else 0
    if not progress.waiting_for_confirmation:
        # Outside WAIT_PROCESS nothing starts a round; a task first seen delivering has had one.
        return max(last, listed, 1 if progress.confirm is not None else 0)
    if previous is None or last == 0:
        return max(listed, 1)  # the first round seen: TrainRecord's count is all there is
    if not previous.waiting:
        return max(last + 1, listed)  # back to WAIT_PROCESS after leaving it
    grew = previous.train_records is not None and listed > previous.train_records
    before, now = demo_identity(previous.demo_urls), demo_identity(progress.demo_urls)
    # An answer without demo links (StageInfo missing or empty) says nothing about the round.
    changed = bool(before) and bool(now) and before != now
    if grew or changed:
        return max(last + 1, listed)  # retrained between two polls
    return last


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
