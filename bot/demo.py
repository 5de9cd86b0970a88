"""The `demo` command's task: seeded fresh each run, its progress told in the log."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from bot.events import Snapshot
from bot.sim import Simulator
from bot.store import Store, TaskState

log = logging.getLogger(__name__)

DEMO_TITLE = "Demo avatar (simulated)"
TRACKED_BY = "demo"
AUDIT_SECONDS = 10
TRAIN_SECONDS = 30
WATCH_EVERY = 0.5  # seconds between two looks at the demo task's record
EARLIER_RUN = (
    "a simulated task of an earlier demo run; the simulator that ran it stopped with that run"
)


async def retire_earlier_demos(store: Store) -> list[str]:
    """Stop polling the demo tasks of earlier runs (kept in a persisted Redis).

    Their simulator lived in the process that seeded them; the new one does not know them,
    and would make up fresh tasks under their ids that contradict what was recorded.
    """
    retired = []
    for record in await store.polled_tasks():
        if record.tracked_by == TRACKED_BY:
            await store.mark_unknown(record, EARLIER_RUN, time.time())
            retired.append(record.task_id)
    return retired


async def seed_demo(store: Store, sim: Simulator) -> str:
    """A simulated task that reaches CONFIRM in about 40 seconds, under an id of its own."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    task_id, n = f"demo_{stamp}", 1
    while await store.get(task_id) is not None:  # two demos started within one second
        n += 1
        task_id = f"demo_{stamp}_{n}"
    sim.create_task(task_id, audit_seconds=AUDIT_SECONDS, train_seconds=TRAIN_SECONDS)
    await store.track(task_id, channel=None, title=DEMO_TITLE, tracked_by=TRACKED_BY)
    return task_id


def where_to_watch(task_id: str, *, slack: bool) -> str:
    if slack:
        return (
            f"demo: tracking simulated task {task_id}; its demo reaches Slack in about"
            f" {AUDIT_SECONDS + TRAIN_SECONDS} s. Approve or Reject it there; after a Reject,"
            f" round 2 follows {TRAIN_SECONDS} s later."
        )
    return (
        f"demo: tracking simulated task {task_id}; its demo is ready in about"
        f" {AUDIT_SECONDS + TRAIN_SECONDS} s. Without Slack, watch its events with"
        " `ivh-approvals events -f` in a second terminal, in this directory with the same"
        " settings; set SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_CHANNEL to approve in Slack."
    )


def stage_of(snapshot: Snapshot) -> str:
    """Where a task stands, in a few words, with the round it is in."""
    if snapshot.status == "SUCCESS":
        return f"round {snapshot.round}: approved and delivered"
    if snapshot.status == "FAIL":
        return f"failed: {snapshot.fail_message or snapshot.stage}"
    if snapshot.waiting:
        return f"round {snapshot.round}: demo ready, waiting for a decision"
    if snapshot.stage == "AUDIT":
        return "round 1: audit"
    if snapshot.stage == "TRAIN":
        # Outside CONFIRM the round is the last one shown: training makes the next.
        return f"round {snapshot.round + 1}: training"
    if snapshot.stage == "CONFIRM":
        return f"round {snapshot.round}: decided, delivering"
    return f"{snapshot.stage or snapshot.status} ({snapshot.stage_status})".lower()


async def tell_progress(store: Store, task_id: str, *, slack: bool, sim_url: str) -> None:
    """Log each stage the bot sees the demo task reach, until it ends."""
    told = ""
    while True:
        try:
            record = await store.get(task_id)
        except RedisError:
            record = None  # the loops say that Redis is down; try again
        if record is not None and record.snapshot is not None:
            stage = stage_of(record.snapshot)
            if stage != told:
                told = stage
                hint = _hint(stage, task_id, slack, sim_url)
                log.info("demo: task %s %s%s", task_id, stage, hint)
        if record is not None and record.state != TaskState.ACTIVE:
            return
        await asyncio.sleep(WATCH_EVERY)


def _hint(stage: str, task_id: str, slack: bool, sim_url: str) -> str:
    if not stage.endswith("waiting for a decision"):
        return ""
    if slack:
        return "; Approve or Reject it in Slack"
    return (
        f"; without Slack, decide as in the IVH console: curl -XPOST"
        f' {sim_url}/_sim/tasks/{task_id}/confirm -d \'{{"operate": "AGREE"}}\''
    )
