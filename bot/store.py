"""Redis: the bot's only state. This module names every key and owns its format."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from bot.events import Event, EventType, Snapshot

PREFIX = "ivh:"
EVENTS_STREAM = PREFIX + "events"
SCHEDULE = PREFIX + "schedule"  # sorted set: task id -> when it is next due for a poll
EVENTS_MAXLEN = 100_000


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def history_key(task_id: str) -> str:
    return f"{PREFIX}history:{task_id}"


def rate_key(name: str) -> str:
    return f"{PREFIX}rate:{name}"


class TaskState(StrEnum):
    ACTIVE = "active"  # polled
    UNKNOWN = "unknown"  # IVH does not know the id; not polled
    FINISHED = "finished"  # SUCCESS or FAIL; not polled


class TaskRecord(BaseModel):
    task_id: str
    channel: str | None = None
    title: str | None = None
    tracked_by: str = ""
    tracked_at: float = 0.0
    state: TaskState = TaskState.ACTIVE
    round: int = 0
    snapshot: Snapshot | None = None
    polled_at: float | None = None
    error: str = ""
    failures: int = 0
    slack_channel: str | None = None
    slack_ts: str | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "snapshot" in data:
            data["snapshot"] = Snapshot.model_validate_json(data["snapshot"])
        return cls.model_validate(data)


# Track a task once. 1: new; 2: an unknown task tracked again (polled again); 0: already known.
_TRACK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'channel', ARGV[2], 'title', ARGV[3],
             'tracked_by', ARGV[4], 'tracked_at', ARGV[5], 'state', 'active', 'round', 0)
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[6])
  return 1
end
if state == 'unknown' then
  redis.call('HSET', KEYS[1], 'state', 'active', 'error', '')
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
  redis.call('RPUSH', KEYS[3], ARGV[6])
  return 2
end
return 0
"""

# Lease up to ARGV[2] due tasks: push their next poll to the lease's end, so that no other
# poller takes them until this one reschedules them or dies and the lease runs out.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return due
"""

# Compare-and-set of the last seen snapshot; the events and history go in the same step,
# so each transition is appended exactly once even when two pollers race or one restarts.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], 'snapshot') or ''
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2], 'round', ARGV[3], 'polled_at', ARGV[4],
           'state', ARGV[5], 'error', '', 'failures', 0)
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[4], ARGV[8])
else
  redis.call('ZADD', KEYS[4], 'XX', ARGV[6], ARGV[8])
end
if ARGV[7] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[7]) end
for i = 10, #ARGV do
  local event = cjson.decode(ARGV[i])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*',
             'type', event['type'], 'task_id', event['task_id'], 'event', ARGV[i])
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
return 1
"""


class Store:
    """Tasks, their last seen progress, history, schedule and the events stream."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._track = redis.register_script(_TRACK)
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._record = redis.register_script(_RECORD)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    # --- tasks ---------------------------------------------------------------------------

    async def track(
        self,
        task_id: str,
        *,
        channel: str | None,
        title: str | None,
        tracked_by: str,
        now: float | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Start tracking a task (idempotent). Returns the record and whether polling (re)starts."""
        now = time.time() if now is None else now
        entry = _history_entry("tracked", now, by=tracked_by, channel=channel, title=title)
        result = await self._track(
            keys=[task_key(task_id), SCHEDULE, history_key(task_id)],
            args=[task_id, channel or "", title or "", tracked_by, repr(now), entry],
        )
        record = await self.get(task_id)
        assert record is not None
        return record, int(result) > 0

    async def get(self, task_id: str) -> TaskRecord | None:
        raw = await self.redis.hgetall(task_key(task_id))
        return TaskRecord.from_hash(_decode(raw)) if raw else None

    async def history(self, task_id: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in await self.redis.lrange(history_key(task_id), 0, -1)]

    async def append_history(self, task_id: str, kind: str, **fields: Any) -> None:
        await self.redis.rpush(history_key(task_id), _history_entry(kind, time.time(), **fields))

    async def set_slack_message(self, task_id: str, channel: str, ts: str) -> None:
        await self.redis.hset(task_key(task_id), mapping={"slack_channel": channel, "slack_ts": ts})

    # --- polling -------------------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float) -> list[str]:
        if limit <= 0:
            return []
        due = await self._claim_due(keys=[SCHEDULE], args=[repr(now), limit, repr(now + lease)])
        return [_text(item) for item in due]

    async def next_due(self) -> float | None:
        first = await self.redis.zrange(SCHEDULE, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def reschedule(self, task_id: str, at: float) -> None:
        await self.redis.zadd(SCHEDULE, {task_id: at}, xx=True)

    async def record_progress(
        self,
        record: TaskRecord,
        snapshot: Snapshot,
        events: list[Event],
        *,
        now: float,
        next_poll: float | None,
    ) -> bool:
        """Store a new snapshot and append its events, if nobody changed it since `record`."""
        expected = record.snapshot.model_dump_json() if record.snapshot else ""
        state = TaskState.FINISHED if snapshot.finished else TaskState.ACTIVE
        changed = record.snapshot != snapshot
        entry = (
            _history_entry(
                "progress",
                now,
                status=snapshot.status,
                stage=snapshot.stage,
                stage_status=snapshot.stage_status,
                round=snapshot.round,
            )
            if changed
            else ""
        )
        done = await self._record(
            keys=[task_key(record.task_id), EVENTS_STREAM, history_key(record.task_id), SCHEDULE],
            args=[
                expected,
                snapshot.model_dump_json(),
                snapshot.round,
                repr(now),
                state.value,
                "" if next_poll is None else repr(next_poll),
                entry,
                record.task_id,
                EVENTS_MAXLEN,
                *(event.model_dump_json() for event in events),
            ],
        )
        return bool(done)

    async def mark_unknown(self, record: TaskRecord, message: str, now: float) -> None:
        """IVH does not know the id: stop polling it and tell whoever tracked it."""
        event = Event(type=EventType.UNKNOWN_TASK, task_id=record.task_id, at=now, message=message)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                task_key(record.task_id),
                mapping={"state": TaskState.UNKNOWN.value, "error": message, "polled_at": now},
            )
            pipe.zrem(SCHEDULE, record.task_id)
            pipe.rpush(history_key(record.task_id), _history_entry("unknown", now, message=message))
            pipe.xadd(EVENTS_STREAM, _stream_fields(event), maxlen=EVENTS_MAXLEN)
            await pipe.execute()

    async def record_failure(self, task_id: str, message: str, now: float, retry_at: float) -> int:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(task_key(task_id), mapping={"error": message, "polled_at": now})
            pipe.hincrby(task_key(task_id), "failures", 1)
            pipe.zadd(SCHEDULE, {task_id: retry_at}, xx=True)
            results = await pipe.execute()
        return int(results[1])

    # --- events --------------------------------------------------------------------------

    async def events(self, start: str = "-", count: int | None = None) -> list[tuple[str, Event]]:
        entries = await self.redis.xrange(EVENTS_STREAM, min=start, count=count)
        return [(_text(entry_id), _event(fields)) for entry_id, fields in entries]

    async def wait_for_events(self, after: str, block_ms: int = 5000) -> None:
        """Return when an event newer than `after` exists, or after `block_ms`."""
        await self.redis.xread({EVENTS_STREAM: after}, count=1, block=block_ms)


def _stream_fields(event: Event) -> dict[str, str]:
    return {"type": event.type.value, "task_id": event.task_id, "event": event.model_dump_json()}


def _event(fields: dict[Any, Any]) -> Event:
    return Event.model_validate_json(_decode(fields)["event"])


def _history_entry(kind: str, at: float, **fields: Any) -> str:
    return json.dumps({"kind": kind, "at": at, **fields}, ensure_ascii=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}
