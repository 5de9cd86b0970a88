"""Redis: the bot's only state. This module names every key and owns its format."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from bot.events import Event, EventType, Snapshot
from bot.state import Decision, TaskView, Upload, view_of

PREFIX = "ivh:"
EVENTS_STREAM = PREFIX + "events"
SCHEDULE = PREFIX + "schedule"  # sorted set: task id -> when it is next due for a poll
EVENTS_MAXLEN = 100_000
HISTORY_MAX = 500  # entries kept per task; the oldest go first
RETENTION = 30 * 24 * 3600  # a finished or unknown task's keys live this long after it ends


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def history_key(task_id: str) -> str:
    return f"{PREFIX}history:{task_id}"


def rate_key(name: str) -> str:
    return f"{PREFIX}rate:{name}"


def decisions_key(task_id: str) -> str:
    return f"{PREFIX}decisions:{task_id}"  # hash: round -> Decision


def uploads_key(task_id: str) -> str:
    return f"{PREFIX}uploads:{task_id}"  # hash: round -> Upload


def demos_key(task_id: str) -> str:
    return f"{PREFIX}demos:{task_id}"  # hash: round -> demo URLs


def claim_key(task_id: str, round_: int) -> str:
    return f"{PREFIX}claim:{task_id}:{round_}"  # who is deciding this round right now


def steps_key(entry_id: str) -> str:
    return f"{PREFIX}steps:{entry_id}"  # which steps of handling one event are done


def replies_key(task_id: str) -> str:
    return f"{PREFIX}replies:{task_id}"  # hash: round -> ts of its decision's thread reply


def lock_key(name: str) -> str:
    return f"{PREFIX}lock:{name}"  # one process at a time does this Slack step


PUBLISHERS = "publishers"  # the consumer group on EVENTS_STREAM
STEPS_TTL = 7 * 24 * 3600


class Claim(BaseModel):
    """Who is deciding a round right now, and what they sent (or are sending) to Tencent."""

    user: str
    operate: str
    at: float
    token: str
    reason: str = ""


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
    stage_since: float | None = None  # when the poller first saw the current stage
    error: str = ""
    failures: int = 0
    slack_channel: str | None = None
    slack_ts: str | None = None
    slack_permalink: str | None = None
    posting_since: float | None = None  # a parent post began then and was not recorded (yet)
    # The snapshot exactly as stored, for the compare-and-set: one written by an earlier
    # version may lack a field this version's Snapshot has (and so dumps differently).
    stored_snapshot: str = Field(default="", exclude=True, repr=False)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "snapshot" in data:
            data["stored_snapshot"] = data["snapshot"]
            data["snapshot"] = Snapshot.model_validate_json(data["snapshot"])
        return cls.model_validate(data)


def _where(snapshot: Snapshot) -> tuple[str, str, str, int]:
    return (snapshot.status, snapshot.stage, snapshot.stage_status, snapshot.round)


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
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[3])
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
           'state', ARGV[5], 'error', '', 'failures', 0, 'stage_since', ARGV[10])
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[4], ARGV[8])
else
  redis.call('ZADD', KEYS[4], 'XX', ARGV[6], ARGV[8])
end
if ARGV[7] ~= '' then redis.call('RPUSH', KEYS[3], ARGV[7]) end
for i = 11, #ARGV do
  local event = cjson.decode(ARGV[i])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], '*',
             'type', event['type'], 'task_id', event['task_id'], 'event', ARGV[i])
  redis.call('RPUSH', KEYS[3], ARGV[i])
end
redis.call('LTRIM', KEYS[3], -HISTORY_MAX, -1)
return 1
""".replace("HISTORY_MAX", str(HISTORY_MAX))


# Renew a pending event's claim, only while `consumer` still owns it.
_KEEP_CLAIMED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# The same, and note a step's result in the event's steps hash in that one step: a publisher
# that lost the event to another (too slow to renew its claim) notes nothing.
_NOTE_IF_CLAIMED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""

# Delete a claim or a lock only if it still carries our token.
_RELEASE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['token'] == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Store:
    """Tasks, their last seen progress, history, schedule and the events stream."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._track = redis.register_script(_TRACK)
        self._claim_due = redis.register_script(_CLAIM_DUE)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)
        self._keep_claimed = redis.register_script(_KEEP_CLAIMED)
        self._note_if_claimed = redis.register_script(_NOTE_IF_CLAIMED)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def open_connections(self, count: int) -> None:
        """Fill the pool with `count` connections now: each costs a handshake of several round
        trips, which the first burst of clicks after start-up would otherwise pay for."""
        await asyncio.gather(*(self.redis.ping() for _ in range(count)))

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

    async def append_history(
        self, task_id: str, kind: str, at: float | None = None, **fields: Any
    ) -> None:
        entry = _history_entry(kind, time.time() if at is None else at, **fields)
        await self.redis.rpush(history_key(task_id), entry)

    async def set_slack_message(
        self, task_id: str, channel: str, ts: str, permalink: str | None = None
    ) -> None:
        fields: dict[FieldT, EncodableT] = {"slack_channel": channel, "slack_ts": ts}
        if permalink:
            fields["slack_permalink"] = permalink
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(task_key(task_id), mapping=fields)
            pipe.hdel(task_key(task_id), "posting_since")
            await pipe.execute()

    async def mark_posting(self, task_id: str, since: float) -> None:
        """A parent post starts: if it is never recorded, look for it before posting again."""
        await self.redis.hset(task_key(task_id), "posting_since", repr(since))

    async def retire(self, task_id: str, after: float = RETENTION) -> None:
        """The task's story is over: let all its keys expire after `after` seconds."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in _task_keys(task_id):
                pipe.expire(key, int(after))
            await pipe.execute()

    async def clear_slack_message(self, task_id: str) -> None:
        await self.redis.hdel(task_key(task_id), "slack_channel", "slack_ts", "slack_permalink")

    # --- the Slack side: decisions, uploads, demos, claims ------------------------------

    async def view(self, task_id: str) -> tuple[TaskRecord, TaskView] | None:
        """Read everything a message is built from, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            _read_view(pipe, task_id)
            return _view_from(await pipe.execute())

    async def save_demos(self, task_id: str, round_: int, urls: list[str]) -> None:
        await self.redis.hset(demos_key(task_id), str(round_), json.dumps(urls))

    async def save_upload(self, task_id: str, upload: Upload) -> None:
        await self.redis.hset(uploads_key(task_id), str(upload.round), upload.model_dump_json())

    async def decision(self, task_id: str, round_: int) -> Decision | None:
        raw = await self.redis.hget(decisions_key(task_id), str(round_))
        return Decision.model_validate_json(raw) if raw else None

    async def save_decision(self, task_id: str, decision: Decision) -> bool:
        """Record the decision of a round; the first one recorded stands."""
        first = await self.redis.hsetnx(
            decisions_key(task_id), str(decision.round), decision.model_dump_json()
        )
        if first:
            await self.append_history(task_id, "decision", **decision.model_dump())
        return bool(first)

    async def decision_replied(self, task_id: str, round_: int) -> bool:
        return bool(await self.redis.hexists(replies_key(task_id), str(round_)))

    async def mark_decision_replied(self, task_id: str, round_: int, ts: str) -> None:
        await self.redis.hset(replies_key(task_id), str(round_), ts)

    async def demos(self, task_id: str, round_: int) -> list[str] | None:
        """The demo links the bot showed for a round; None when it never saw the round."""
        raw = await self.redis.hget(demos_key(task_id), str(round_))
        return json.loads(raw) if raw else None

    async def lock(self, name: str, ttl: float) -> str | None:
        """Take the lock `name` for `ttl` seconds: its token, or None when someone holds it."""
        token = uuid.uuid4().hex
        held = await self.redis.set(
            lock_key(name), json.dumps({"token": token}), nx=True, px=int(ttl * 1000)
        )
        return token if held else None

    async def unlock(self, name: str, token: str) -> None:
        await self._release(keys=[lock_key(name)], args=[token])

    async def claim(
        self, task_id: str, round_: int, claim: Claim, ttl: float
    ) -> tuple[Claim | None, tuple[TaskRecord, TaskView] | None]:
        """Take the right to decide a round: None when we got it, else the holder's claim;
        with the task as it stands once the claim is taken, read in the same round trip."""
        key = claim_key(task_id, round_)
        while True:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, claim.model_dump_json(), nx=True, px=int(ttl * 1000))
                pipe.get(key)
                _read_view(pipe, task_id)
                taken, raw, *view = await pipe.execute()
            if taken:
                return None, _view_from(view)
            if raw:  # else it expired between the two calls: try again
                return Claim.model_validate_json(raw), _view_from(view)

    async def current_claim(self, task_id: str, round_: int) -> Claim | None:
        raw = await self.redis.get(claim_key(task_id, round_))
        return Claim.model_validate_json(raw) if raw else None

    async def release(self, task_id: str, round_: int, token: str) -> None:
        """Give a claim back, if it is still ours."""
        await self._release(keys=[claim_key(task_id, round_)], args=[token])

    # --- the publisher's consumer group -------------------------------------------------

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(EVENTS_STREAM, PUBLISHERS, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read_group(
        self, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, Event | None]]:
        answer: Any = await self.redis.xreadgroup(
            PUBLISHERS, consumer, {EVENTS_STREAM: ">"}, count=count, block=block_ms
        )
        return [(_text(i), _readable(f)) for _, entries in answer or [] for i, f in entries]

    async def reclaim(
        self, consumer: str, min_idle_ms: int, count: int
    ) -> list[tuple[str, Event | None]]:
        """Take over events another publisher read but never acknowledged (it died)."""
        answer = await self.redis.xautoclaim(
            EVENTS_STREAM, PUBLISHERS, consumer, min_idle_time=min_idle_ms, count=count
        )
        return [(_text(i), _readable(f)) for i, f in answer[1] if f]

    async def ack(self, entry_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(EVENTS_STREAM, PUBLISHERS, entry_id)
            pipe.delete(steps_key(entry_id))
            await pipe.execute()

    async def count_attempt(self, entry_id: str) -> int:
        """One more try at handling an event; returns how many there have been."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(steps_key(entry_id), "attempts", 1)
            pipe.expire(steps_key(entry_id), STEPS_TTL)
            attempts, _ = await pipe.execute()
        return int(attempts)

    async def keep_claimed(self, entry_id: str, consumer: str) -> bool:
        """Reset the event's idle time so that no other publisher reclaims it; False when
        another publisher has taken it over already (this one was too slow to say so)."""
        return bool(
            await self._keep_claimed(keys=[EVENTS_STREAM], args=[PUBLISHERS, consumer, entry_id])
        )

    async def mark_step_if_claimed(
        self, entry_id: str, consumer: str, step: str, result: str
    ) -> bool:
        """`mark_step`, and `keep_claimed`, only while `consumer` still holds the event;
        False (nothing noted) when another publisher has taken it over."""
        keys = [EVENTS_STREAM, steps_key(entry_id)]
        args: list[str | int] = [PUBLISHERS, consumer, entry_id, step, result, STEPS_TTL]
        return bool(await self._note_if_claimed(keys=keys, args=args))

    async def step_done(self, entry_id: str, step: str) -> str | None:
        raw = await self.redis.hget(steps_key(entry_id), step)
        return None if raw is None else _text(raw)

    async def mark_step(self, entry_id: str, step: str, result: str = "1") -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps_key(entry_id), step, result)
            pipe.expire(steps_key(entry_id), STEPS_TTL)
            await pipe.execute()

    # --- polling -------------------------------------------------------------------------

    async def claim_due(self, now: float, limit: int, lease: float) -> list[str]:
        if limit <= 0:
            return []
        due = await self._claim_due(keys=[SCHEDULE], args=[repr(now), limit, repr(now + lease)])
        return [_text(item) for item in due]

    async def next_due(self) -> float | None:
        first = await self.redis.zrange(SCHEDULE, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def make_due(self, task_ids: set[str], at: float) -> None:
        """Tasks still tracked among `task_ids` are due at `at`."""
        if task_ids:
            await self.redis.zadd(SCHEDULE, dict.fromkeys(task_ids, at), xx=True)

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
        stage_since: float | None = None,
    ) -> bool:
        """Store a new snapshot and append its events, if nobody changed it since `record`."""
        expected = record.stored_snapshot or (
            record.snapshot.model_dump_json() if record.snapshot else ""
        )
        state = TaskState.FINISHED if snapshot.finished else TaskState.ACTIVE
        # History keeps where the task went, not every new signature on a demo link.
        changed = record.snapshot is None or _where(record.snapshot) != _where(snapshot)
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
                repr(now if stage_since is None else stage_since),
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
            for key in (task_key(record.task_id), history_key(record.task_id)):
                pipe.expire(key, RETENTION)
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
        entries: Any = await self.redis.xrange(EVENTS_STREAM, min=start, count=count)
        return [(_text(entry_id), _event(fields)) for entry_id, fields in entries]

    async def wait_for_events(self, after: str, block_ms: int = 5000) -> None:
        """Return when an event newer than `after` exists, or after `block_ms`."""
        await self.redis.xread({EVENTS_STREAM: after}, count=1, block=block_ms)


def _task_keys(task_id: str) -> tuple[str, ...]:
    return (
        task_key(task_id),
        history_key(task_id),
        decisions_key(task_id),
        uploads_key(task_id),
        demos_key(task_id),
        replies_key(task_id),
    )


def _stream_fields(event: Event) -> dict[FieldT, EncodableT]:
    return {"type": event.type.value, "task_id": event.task_id, "event": event.model_dump_json()}


def _event(fields: dict[Any, Any]) -> Event:
    return Event.model_validate_json(_decode(fields)["event"])


def _readable(fields: dict[Any, Any]) -> Event | None:
    """The event in a stream entry; None when this version cannot read it (a newer one wrote
    it during a rolling upgrade, or it is damaged)."""
    try:
        return _event(fields)
    except (KeyError, ValueError, ValidationError):
        return None


def _history_entry(kind: str, at: float, **fields: Any) -> str:
    return json.dumps({"kind": kind, "at": at, **fields}, ensure_ascii=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _read_view(pipe: Pipeline, task_id: str) -> None:
    pipe.hgetall(task_key(task_id))
    pipe.hgetall(decisions_key(task_id))
    pipe.hgetall(uploads_key(task_id))
    pipe.hgetall(demos_key(task_id))


def _view_from(replies: list[Any]) -> tuple[TaskRecord, TaskView] | None:
    raw, decisions, uploads, demos = replies
    if not raw:
        return None
    record = TaskRecord.from_hash(_decode(raw))
    view = view_of(
        record,
        {int(k): Decision.model_validate_json(v) for k, v in _decode(decisions).items()},
        {int(k): Upload.model_validate_json(v) for k, v in _decode(uploads).items()},
        {int(k): json.loads(v) for k, v in _decode(demos).items()},
    )
    return record, view
