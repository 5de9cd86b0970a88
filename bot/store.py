"""Redis: the bot's only state. This module names every key and owns its format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, RedisError, ResponseError
from redis.typing import EncodableT, FieldT

from bot.model import (
    Claim,
    Decided,
    Decision,
    Event,
    EventType,
    Loaded,
    Phase,
    Snapshot,
    TaskRecord,
    TaskState,
    Upload,
    Votes,
    Waiting,
)
from bot.state import view_of

log = logging.getLogger(__name__)

# What the store raises when Redis does not answer: callers above it (the Slack listeners)
# name this, not the Redis client's own exception.
StoreUnavailable = RedisError

PREFIX = "ivh:"
EVENTS_STREAM = PREFIX + "events"
AUDIT_STREAM = PREFIX + "audit"  # append-only: every event and decision, kept for retention
STAGES = PREFIX + "stats:stages"  # hash: "STAGE/STATUS" -> active tasks there (for /metrics)
AUDIT_RETENTION_DAYS = 365
# Sorted sets of rounds waiting for a decision, scored by when their demo was ready (then
# moved on as reminders go out): the reminders loop's, and the escalations' (one each).
REMINDERS = PREFIX + "reminders"
PENDING = PREFIX + "pending"  # rounds waiting for a decision, by when their demo was ready
ESCALATIONS = PREFIX + "escalations"
SCHEDULE = PREFIX + "schedule"  # sorted set: task id -> when it is next due for a poll
DECIDED = PREFIX + "decided"  # list, newest first: the last RECENT_MAX decisions (App Home)
RECENT_MAX = 20
# The App Home: who opened it when (sorted set), a counter bumped by every change it shows,
# and the counter's value it was last refreshed for.
HOME_VIEWERS = PREFIX + "home:viewers"
HOME_CHANGED = PREFIX + "home:changed"
HOME_SHOWN = PREFIX + "home:shown"
HOME_VIEWERS_KEPT = 1000  # the most recent viewers remembered
EVENTS_MAXLEN = 100_000
HISTORY_MAX = 500  # entries kept per task; the oldest go first
RETENTION = 30 * 24 * 3600  # a finished or unknown task's keys live this long after it ends


def task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def history_key(task_id: str) -> str:
    return f"{PREFIX}history:{task_id}"


def rate_key(name: str) -> str:
    return f"{PREFIX}rate:{name}"  # sorted set: a rate limiter's reserved slots


IVH_RATE = rate_key("ivh")  # the IVH request budget, shared by every replica


def post_rate_key(channel: str) -> str:
    return rate_key(f"post:{channel}")  # the pace of posts into one Slack channel


class LimiterKeys(NamedTuple):
    """The keys of one rate limiter named by `rate_key`."""

    slots: str  # sorted set: reserved slots of background callers
    priority_slots: str  # sorted set: reserved slots of priority callers
    grants: str  # list: when the last sends were granted


def limiter_keys(key: str) -> LimiterKeys:
    return LimiterKeys(key, f"{key}:priority", f"{key}:sent")


def ready_key(task_id: str) -> str:
    return f"{PREFIX}ready:{task_id}"  # hash: round -> when its demo was first seen waiting


def decisions_key(task_id: str) -> str:
    return f"{PREFIX}decisions:{task_id}"  # hash: round -> Decision


def uploads_key(task_id: str) -> str:
    return f"{PREFIX}uploads:{task_id}"  # hash: round -> Upload


def demos_key(task_id: str) -> str:
    return f"{PREFIX}demos:{task_id}"  # hash: round -> demo URLs


def votes_key(task_id: str) -> str:
    return f"{PREFIX}votes:{task_id}"  # hash: round -> Votes (the approvals given so far)


def claim_key(task_id: str, round_: int) -> str:
    return f"{PREFIX}claim:{task_id}:{round_}"  # who is deciding this round right now


def steps_key(entry_id: str) -> str:
    return f"{PREFIX}steps:{entry_id}"  # which steps of handling one event are done


def home_notice_key(user: str) -> str:
    """The answer to `user`'s last click on the App Home, shown at its top for a while."""
    return f"{PREFIX}home:notice:{user}"


def replies_key(task_id: str) -> str:
    # hash: round -> ts of its decision's thread reply; "round:posting" -> when one was sent
    return f"{PREFIX}replies:{task_id}"


def told_key(task_id: str) -> str:
    return f"{PREFIX}told:{task_id}"  # hash: round -> when its requester was told its decision


def lock_key(name: str) -> str:
    return f"{PREFIX}lock:{name}"  # one process at a time does this Slack step


def parent_lock(task_id: str) -> str:
    return f"parent:{task_id}"  # the lock name for posting a task's message


def reply_lock(task_id: str, round_: int) -> str:
    return f"reply:{task_id}:{round_}"  # the lock name for telling a round's decision


def family_pattern(family: str) -> str:
    """A SCAN pattern for every key of one family ("claim", "task", ...): tests and benches."""
    return f"{PREFIX}{family}:*"


PUBLISHERS = "publishers"  # the consumer group on EVENTS_STREAM
STEPS_TTL = 7 * 24 * 3600


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
local new = cjson.decode(ARGV[2])
redis.call('HSET', KEYS[1], 'snapshot', new.snapshot, 'round', new.round,
           'polled_at', new.polled_at, 'state', new.state, 'error', '', 'failures', 0,
           'stage_since', new.stage_since)
if new.next_poll == '' then
  redis.call('ZREM', KEYS[4], new.task_id)
else
  redis.call('ZADD', KEYS[4], 'XX', new.next_poll, new.task_id)
end
if new.history ~= '' then redis.call('RPUSH', KEYS[3], new.history) end
-- The active tasks by stage: the task hash says where it is counted, so nothing drifts.
local counted = redis.call('HGET', KEYS[1], 'counted')
if counted then redis.call('HINCRBY', KEYS[5], counted, -1) end
if new.state == 'active' then
  redis.call('HINCRBY', KEYS[5], new.where, 1)
  redis.call('HSET', KEYS[1], 'counted', new.where)
else
  redis.call('HDEL', KEYS[1], 'counted')
end
for _, raw in ipairs(new.events) do
  local event = cjson.decode(raw)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', new.events_maxlen, '*',
             'type', event['type'], 'task_id', event['task_id'], 'event', raw)
  redis.call('RPUSH', KEYS[3], raw)
  redis.call('XADD', KEYS[6], 'MINID', new.audit_minid, '*',
             'kind', 'event', 'task_id', event['task_id'], 'record', raw)
  if event['type'] == 'awaiting_confirmation' or event['type'] == 'round_changed' then
    redis.call('HSETNX', KEYS[7], tostring(event['round']), new.polled_at)
  end
end
for _, waiting in ipairs(new.waiting) do
  redis.call('ZADD', KEYS[8], 'NX', new.polled_at, waiting)
  redis.call('ZADD', KEYS[9], 'NX', new.polled_at, waiting)
  redis.call('ZADD', KEYS[10], 'NX', new.polled_at, waiting)
end
for _, left in ipairs(new.left) do
  redis.call('ZREM', KEYS[10], left)
  redis.call('ZREM', KEYS[8], left)
  redis.call('ZREM', KEYS[9], left)
end
if #new.waiting > 0 or #new.left > 0 then redis.call('INCR', KEYS[11]) end
redis.call('LTRIM', KEYS[3], -HISTORY_MAX, -1)
return 1
""".replace("HISTORY_MAX", str(HISTORY_MAX))


# Record a round's decision once: the first one stands, told to the history and the audit trail
# in the same step, with when the round's demo was ready (for the time to decision).
_DECIDE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], -HISTORY_MAX, -1)
local ready = redis.call('HGET', KEYS[4], ARGV[1]) or ''
redis.call('XADD', KEYS[3], 'MINID', ARGV[5], '*', 'kind', 'decision',
           'task_id', ARGV[4], 'record', ARGV[2], 'ready_at', ready)
redis.call('ZREM', KEYS[5], ARGV[6])
redis.call('ZREM', KEYS[6], ARGV[6])
redis.call('ZREM', KEYS[7], ARGV[6])
redis.call('LPUSH', KEYS[8], ARGV[7])
redis.call('LTRIM', KEYS[8], 0, RECENT_MAX - 1)
redis.call('INCR', KEYS[9])
return ready
""".replace("HISTORY_MAX", str(HISTORY_MAX)).replace("RECENT_MAX", str(RECENT_MAX))

# Take the rounds due in a reminders set: each one moved on to ARGV[3] (or removed when it is
# empty) in the same step, so that one replica, and only one, reminds of it this time.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  if ARGV[3] == '' then
    redis.call('ZREM', KEYS[1], member)
  else
    redis.call('ZADD', KEYS[1], 'XX', ARGV[3], member)
  end
end
return due
"""

# IVH does not know the task: stop polling it, tell it, stop counting it by stage and take its
# round out of the waiting sets, all in one step, so that no crash in between leaves the
# stage gauge counting a task nobody polls, or a round waiting that never will be decided.
_UNKNOWN = """
redis.call('HSET', KEYS[1], 'state', 'unknown', 'error', ARGV[2], 'polled_at', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*',
           'type', ARGV[5], 'task_id', ARGV[1], 'event', ARGV[6])
local counted = redis.call('HGET', KEYS[1], 'counted')
if counted then
  redis.call('HINCRBY', KEYS[5], counted, -1)
  redis.call('HDEL', KEYS[1], 'counted')
end
for i = 6, 8 do redis.call('ZREM', KEYS[i], ARGV[9]) end
redis.call('INCR', KEYS[9])
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[8])
return 1
"""

# A round waiting for a decision that an earlier version recorded: only a round's start puts
# it in the waiting sets (_RECORD), and that version kept none. Put in all three at once, when
# the task is still active and where the caller saw it (the snapshot), the round undecided
# and not in PENDING: a round there was queued before, and may have been escalated and taken
# out of ESCALATIONS since, which must not bring the escalation back at every start.
_BACKFILL = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
if (redis.call('HGET', KEYS[1], 'snapshot') or '') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
if redis.call('ZSCORE', KEYS[4], ARGV[3]) then return 0 end
local at = redis.call('HGET', KEYS[3], ARGV[2]) or redis.call('HGET', KEYS[1], 'polled_at')
for i = 4, 6 do redis.call('ZADD', KEYS[i], 'NX', at or ARGV[4], ARGV[3]) end
redis.call('INCR', KEYS[7])
return 1
"""

# Renew a pending event's ownership, only while `consumer` still owns it.
_KEEP_OWNED = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# One approval of a round: ARGV[2] counts once however often it is given, and the count is
# read in the same step, so exactly one approval sees the quorum reached first.
_VOTE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local users = {}
if raw then users = cjson.decode(raw)['users'] end
for _, user in ipairs(users) do
  if user == ARGV[2] then return {#users, 0, raw} end
end
table.insert(users, ARGV[2])
local votes = cjson.encode({users = users, required = tonumber(ARGV[3])})
redis.call('HSET', KEYS[1], ARGV[1], votes)
redis.call('INCR', KEYS[2])
return {#users, 1, votes}
"""

# Renew a pending event's ownership as _KEEP_OWNED does, and note a step's result in the
# event's steps hash in that one step: a publisher that lost the event to another (too slow
# to renew its ownership) notes nothing.
_NOTE_IF_OWNED = """
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

    def __init__(self, redis: Redis, *, audit_retention_days: float = AUDIT_RETENTION_DAYS) -> None:
        self.redis = redis
        self.audit_retention = audit_retention_days * 24 * 3600
        self._decide = redis.register_script(_DECIDE)
        self._unknown = redis.register_script(_UNKNOWN)
        self._backfill = redis.register_script(_BACKFILL)
        self._take_due = redis.register_script(_TAKE_DUE)
        self._track = redis.register_script(_TRACK)
        self._lease_due = redis.register_script(_CLAIM_DUE)
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)
        self._keep_owned = redis.register_script(_KEEP_OWNED)
        self._vote = redis.register_script(_VOTE)
        self._note_if_owned = redis.register_script(_NOTE_IF_OWNED)

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
            pipe.incr(HOME_CHANGED)  # the App Home links to the thread now
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(task_key(task_id), "slack_channel", "slack_ts", "slack_permalink")
            pipe.incr(HOME_CHANGED)  # the App Home's link to the thread is gone
            await pipe.execute()

    # --- the Slack side: decisions, uploads, demos, claims ------------------------------

    async def view(self, task_id: str) -> Loaded | None:
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

    async def save_decision(self, task_id: str, decision: Decision) -> float | None:
        """Record the decision of a round; the first one recorded stands. None when one was
        recorded before; else when the round's demo was ready (0.0: not known)."""
        ready = await self._decide(
            keys=[
                decisions_key(task_id),
                history_key(task_id),
                AUDIT_STREAM,
                ready_key(task_id),
                PENDING,
                REMINDERS,
                ESCALATIONS,
                DECIDED,
                HOME_CHANGED,
            ],
            args=[
                str(decision.round),
                decision.model_dump_json(),
                _history_entry("decision", **decision.model_dump()),
                task_id,
                self._audit_minid(time.time()),
                _waiting_member(task_id, decision.round),
                json.dumps({"task_id": task_id, "decision": decision.model_dump()}),
            ],
        )
        if ready is None:
            return None
        return float(_text(ready) or 0.0)

    def _audit_minid(self, now: float) -> str:
        """The oldest audit entry id to keep: AUDIT_RETENTION_DAYS before `now`."""
        return f"{max(0, int((now - self.audit_retention) * 1000))}-0"

    async def audit(
        self, since: float | None = None, until: float | None = None, count: int = 1000
    ) -> AsyncIterator[dict[str, Any]]:
        """The audit trail between two times, oldest first: each entry's kind, task, time and
        the event or decision it records."""
        start = f"{int(since * 1000)}-0" if since is not None else "-"
        end = f"({int(until * 1000)}-0" if until is not None else "+"  # up to, not including
        while True:
            entries: list[Any] = list(
                await self.redis.xrange(AUDIT_STREAM, start, end, count=count) or []
            )
            for entry_id, fields in entries:
                yield _audit_entry(_text(entry_id), _decode(fields))
            if len(entries) < count:
                return
            start = "(" + _text(entries[-1][0])

    async def take_waiting(
        self, key: str, upto: float, then: float | None, limit: int = 100
    ) -> list[tuple[str, int]]:
        """Rounds in `key` (REMINDERS, ESCALATIONS) scored at or before `upto`: each rescored
        to `then` (None: removed) in the same step, so no other replica takes it too."""
        taken = await self._take_due(
            keys=[key], args=[repr(upto), limit, "" if then is None else repr(then)]
        )
        rounds = []
        for member in taken or []:
            task_id, round_ = json.loads(_text(member))
            rounds.append((str(task_id), int(round_)))
        return rounds

    async def set_waiting(self, key: str, task_id: str, round_: int, score: float | None) -> None:
        """Put a round in a reminders set at `score` (or move it there), or out of it (None)."""
        member = _waiting_member(task_id, round_)
        if score is None:
            await self.redis.zrem(key, member)
        else:
            await self.redis.zadd(key, {member: score})

    async def pending(self, limit: int = 100) -> list[tuple[str, int, float]]:
        """Rounds waiting for a decision, oldest demo first: (task id, round, ready at)."""
        found: list[Any] = list(await self.redis.zrange(PENDING, 0, limit - 1, withscores=True))
        rounds = []
        for member, score in found:
            task_id, round_ = json.loads(_text(member))
            rounds.append((str(task_id), int(round_), float(score)))
        return rounds

    async def waiting(self, limit: int) -> list[Waiting]:
        """The rounds waiting for a decision, oldest demo first, each read in one round trip
        (one for all); a round whose task moved on since is left out."""
        rounds = await self.pending(limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id, _round, _ready in rounds:
                _read_view(pipe, task_id)
            replies = await pipe.execute()
        found = []
        for index, (_task_id, round_, ready) in enumerate(rounds):
            loaded = _view_from(replies[index * VIEW_READS : (index + 1) * VIEW_READS])
            if loaded and loaded.view.round == round_ and loaded.view.phase == Phase.PENDING:
                found.append(Waiting(loaded.view, ready, loaded.record.slack_permalink))
        return found

    async def waiting_count(self) -> int:
        return int(await self.redis.zcard(PENDING))

    async def recent_decisions(self, limit: int = RECENT_MAX) -> list[Decided]:
        """The last decisions, newest first, with their tasks' titles and threads."""
        raws: list[Any] = list(await self.redis.lrange(DECIDED, 0, limit - 1))
        entries = []
        for raw in raws:
            try:
                entry = json.loads(_text(raw))
                entries.append((str(entry["task_id"]), Decision.model_validate(entry["decision"])))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping a malformed entry in %s", DECIDED)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id, _ in entries:
                pipe.hmget(task_key(task_id), ["title", "slack_permalink"])
            details = await pipe.execute()
        return [
            Decided(task_id, _text(title) if title else None, _text(link) if link else None, d)
            for (task_id, d), (title, link) in zip(entries, details, strict=True)
        ]

    # --- the App Home ----------------------------------------------------------------------

    async def home_opened(self, user: str, at: float) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(HOME_VIEWERS, {user: at})
            pipe.zremrangebyrank(HOME_VIEWERS, 0, -HOME_VIEWERS_KEPT - 1)
            await pipe.execute()

    async def home_viewers(self, since: float, limit: int) -> list[str]:
        """Who opened the App Home since `since`, the most recent first, at most `limit`."""
        users: list[Any] = list(
            await self.redis.zrevrangebyscore(HOME_VIEWERS, "+inf", since, start=0, num=limit)
        )
        return [_text(user) for user in users]

    async def home_changes(self) -> tuple[int, int]:
        """The App Home's change counter, and its value at the last refresh."""
        changed, shown = await self.redis.mget([HOME_CHANGED, HOME_SHOWN])
        return int(changed or 0), int(shown or 0)

    async def home_refreshed(self, version: int) -> None:
        await self.redis.set(HOME_SHOWN, version)

    async def set_home_notice(self, user: str, text: str, ttl: float) -> None:
        await self.redis.set(home_notice_key(user), text, px=int(ttl * 1000))

    async def clear_home_notice(self, user: str) -> None:
        await self.redis.delete(home_notice_key(user))

    async def home_changed(self) -> None:
        await self.redis.incr(HOME_CHANGED)

    async def home_notice(self, user: str) -> str | None:
        raw = await self.redis.get(home_notice_key(user))
        return _text(raw) if raw else None

    async def queue_earlier_waiting(self, now: float | None = None) -> int:
        """Put the rounds an earlier version left waiting for a decision in PENDING, REMINDERS
        and ESCALATIONS, scored by when their demo was ready (else the task's last poll).
        Once per round, whoever runs it and however often: replicas run it at each start.
        Returns how many rounds it put there."""
        now = time.time() if now is None else now
        waiting = [
            (record, record.snapshot)
            for record in await self.polled_tasks()
            if record.state == TaskState.ACTIVE and record.snapshot and record.snapshot.waiting
        ]
        if not waiting:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for record, snapshot in waiting:
                await self._backfill(
                    keys=[
                        task_key(record.task_id),
                        decisions_key(record.task_id),
                        ready_key(record.task_id),
                        PENDING,
                        REMINDERS,
                        ESCALATIONS,
                        HOME_CHANGED,
                    ],
                    args=[
                        record.stored_snapshot,
                        str(snapshot.round),
                        _waiting_member(record.task_id, snapshot.round),
                        repr(now),
                    ],
                    client=pipe,
                )
            queued = await pipe.execute()
        return sum(int(added) for added in queued)

    async def ready_at(self, task_id: str, round_: int) -> float | None:
        """When the round's demo was first seen ready."""
        raw = await self.redis.hget(ready_key(task_id), str(round_))
        return float(_text(raw)) if raw else None

    async def stage_counts(self) -> dict[str, int]:
        """Active tasks by "STAGE/STATUS", kept up to date by every recorded poll."""
        raw = await self.redis.hgetall(STAGES)
        return {k: int(v) for k, v in _decode(raw).items() if int(v) > 0}

    async def stream_lag(self) -> tuple[int, int]:
        """The publishers' group: events not yet delivered to it, and delivered but pending."""
        try:
            groups = await self.redis.xinfo_groups(EVENTS_STREAM)
        except ResponseError:
            return 0, 0  # no stream yet
        for group in groups:
            if _text(group.get("name", b"")) == PUBLISHERS:
                return int(group.get("lag") or 0), int(group.get("pending") or 0)
        return 0, 0

    async def vote(self, task_id: str, round_: int, user: str, required: int) -> tuple[Votes, bool]:
        """Add `user`'s approval of a round (once); the approvals so far, and whether this one
        was new. Atomic across replicas: each count is seen by exactly one approval."""
        _, added, raw = await self._vote(
            keys=[votes_key(task_id), HOME_CHANGED], args=[str(round_), user, str(required)]
        )
        return Votes.model_validate_json(raw), bool(added)

    async def decision_replied(self, task_id: str, round_: int) -> bool:
        return bool(await self.redis.hexists(replies_key(task_id), str(round_)))

    async def mark_decision_replied(self, task_id: str, round_: int, ts: str) -> None:
        await self.redis.hset(replies_key(task_id), str(round_), ts)

    async def decision_told(self, task_id: str, round_: int) -> bool:
        """Whether the requester was sent the round's decision (by whichever event)."""
        return bool(await self.redis.hexists(told_key(task_id), str(round_)))

    async def mark_decision_told(self, task_id: str, round_: int, at: float) -> None:
        await self.redis.hset(told_key(task_id), str(round_), repr(at))

    async def mark_reply_posting(self, task_id: str, round_: int, since: float) -> None:
        """A decision reply's post starts: if it is never recorded, look for it first."""
        await self.redis.hset(replies_key(task_id), f"{round_}:posting", repr(since))

    async def reply_posting(self, task_id: str, round_: int) -> bool:
        return bool(await self.redis.hexists(replies_key(task_id), f"{round_}:posting"))

    async def rounds_unreplied(self, task_id: str, before: int) -> list[int]:
        """The rounds before `before` seen waiting (by the poller, or shown by a publisher)
        whose decision has no thread reply yet, oldest first."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hkeys(ready_key(task_id))
            pipe.hkeys(demos_key(task_id))
            pipe.hkeys(replies_key(task_id))
            ready, shown, fields = await pipe.execute()
        replied = {int(_text(f)) for f in fields if _text(f).isdigit()}  # not "N:posting"
        seen = {int(_text(r)) for r in [*ready, *shown]} - replied
        return sorted(r for r in seen if r < before)

    async def all_demos(self, task_id: str) -> dict[int, list[str]]:
        """Every round's demo links, as the bot showed them."""
        raw = await self.redis.hgetall(demos_key(task_id))
        return {int(k): json.loads(v) for k, v in _decode(raw).items()}

    async def demos(self, task_id: str, round_: int) -> list[str] | None:
        """The demo links the bot showed for a round; None when it never saw the round."""
        raw = await self.redis.hget(demos_key(task_id), str(round_))
        return json.loads(raw) if raw else None

    async def lock(self, name: str, ttl: float) -> Lock | None:
        """Take the lock `name` for `ttl` seconds without waiting: None when someone holds it.
        redis-py's Lock: a token of its own, released only by its holder."""
        lock = self.redis.lock(lock_key(name), timeout=ttl, blocking=False, thread_local=False)
        return lock if await lock.acquire() else None

    async def unlock(self, lock: Lock) -> None:
        with contextlib.suppress(LockError):  # it expired, and may be another's now: leave it
            await lock.release()

    async def claim(
        self, task_id: str, round_: int, claim: Claim, ttl: float
    ) -> tuple[Claim | None, Loaded | None]:
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

    async def keep_owned(self, entry_id: str, consumer: str) -> bool:
        """Reset the event's idle time so that no other publisher reclaims it; False when
        another publisher has taken it over already (this one was too slow to say so)."""
        return bool(
            await self._keep_owned(keys=[EVENTS_STREAM], args=[PUBLISHERS, consumer, entry_id])
        )

    async def mark_step_if_owned(
        self, entry_id: str, consumer: str, step: str, result: str
    ) -> bool:
        """`mark_step`, and `keep_owned`, only while `consumer` still holds the event;
        False (nothing noted) when another publisher has taken it over."""
        keys = [EVENTS_STREAM, steps_key(entry_id)]
        args: list[str | int] = [PUBLISHERS, consumer, entry_id, step, result, STEPS_TTL]
        return bool(await self._note_if_owned(keys=keys, args=args))

    async def step_done(self, entry_id: str, step: str) -> str | None:
        raw = await self.redis.hget(steps_key(entry_id), step)
        return None if raw is None else _text(raw)

    async def mark_step(self, entry_id: str, step: str, result: str = "1") -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps_key(entry_id), step, result)
            pipe.expire(steps_key(entry_id), STEPS_TTL)
            await pipe.execute()

    # --- polling -------------------------------------------------------------------------

    async def lease_due(self, now: float, limit: int, lease: float) -> list[str]:
        if limit <= 0:
            return []
        due = await self._lease_due(keys=[SCHEDULE], args=[repr(now), limit, repr(now + lease)])
        return [_text(item) for item in due]

    async def polled_tasks(self) -> list[TaskRecord]:
        """Every task still polled (in the schedule); for the demo's small store."""
        task_ids: Any = await self.redis.zrange(SCHEDULE, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(task_key(_text(task_id)))
            raws = await pipe.execute()
        return [TaskRecord.from_hash(_decode(raw)) for raw in raws if raw]

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
        # One JSON argument, every value a string: Lua's numbers would round the times.
        new = {
            "task_id": record.task_id,
            "snapshot": snapshot.model_dump_json(),
            "round": str(snapshot.round),
            "polled_at": repr(now),
            "state": state.value,
            "next_poll": "" if next_poll is None else repr(next_poll),
            "stage_since": repr(now if stage_since is None else stage_since),
            "history": entry,
            "events": [event.model_dump_json() for event in events],
            "events_maxlen": str(EVENTS_MAXLEN),
        }
        new["where"] = f"{snapshot.stage or '-'}/{snapshot.stage_status or snapshot.status}"
        new["waiting"] = [
            _waiting_member(event.task_id, event.round)
            for event in events
            if event.type in (EventType.AWAITING_CONFIRMATION, EventType.ROUND_CHANGED)
        ]
        before = record.snapshot
        left = before is not None and before.waiting
        if before is not None and left and (not snapshot.waiting or snapshot.round != before.round):
            new["left"] = [_waiting_member(record.task_id, before.round)]
        else:
            new["left"] = []
        new["audit_minid"] = self._audit_minid(now)
        done = await self._record(
            keys=[
                task_key(record.task_id),
                EVENTS_STREAM,
                history_key(record.task_id),
                SCHEDULE,
                STAGES,
                AUDIT_STREAM,
                ready_key(record.task_id),
                REMINDERS,
                ESCALATIONS,
                PENDING,
                HOME_CHANGED,
            ],
            args=[expected, json.dumps(new)],
        )
        return bool(done)

    async def mark_unknown(self, record: TaskRecord, message: str, now: float) -> None:
        """IVH does not know the id: stop polling it and tell whoever tracked it."""
        event = Event(type=EventType.UNKNOWN_TASK, task_id=record.task_id, at=now, message=message)
        await self._unknown(
            keys=[
                task_key(record.task_id),
                SCHEDULE,
                history_key(record.task_id),
                EVENTS_STREAM,
                STAGES,
                PENDING,
                REMINDERS,
                ESCALATIONS,
                HOME_CHANGED,
            ],
            args=[
                record.task_id,
                message,
                repr(now),
                _history_entry("unknown", now, message=message),
                event.type.value,
                event.model_dump_json(),
                EVENTS_MAXLEN,
                RETENTION,
                _waiting_member(record.task_id, record.round),
            ],
        )

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
        votes_key(task_id),
        ready_key(task_id),
        told_key(task_id),
    )


def _waiting_member(task_id: str, round_: int) -> str:
    return json.dumps([task_id, round_], separators=(",", ":"), ensure_ascii=False)


def _audit_entry(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    record = json.loads(fields.get("record") or "{}")
    entry: dict[str, Any] = {
        "at": int(entry_id.split("-", 1)[0]) / 1000,
        "kind": fields.get("kind", ""),
        "task_id": fields.get("task_id", ""),
        **record,
    }
    if fields.get("ready_at"):
        entry["ready_at"] = float(fields["ready_at"])
    return entry


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


VIEW_READS = 5  # the replies _read_view queues for one task


def _read_view(pipe: Pipeline, task_id: str) -> None:
    pipe.hgetall(task_key(task_id))
    pipe.hgetall(decisions_key(task_id))
    pipe.hgetall(uploads_key(task_id))
    pipe.hgetall(demos_key(task_id))
    pipe.hgetall(votes_key(task_id))


def _view_from(replies: list[Any]) -> Loaded | None:
    raw, decisions, uploads, demos, votes = replies
    if not raw:
        return None
    record = TaskRecord.from_hash(_decode(raw))
    view = view_of(
        record,
        {int(k): Decision.model_validate_json(v) for k, v in _decode(decisions).items()},
        {int(k): Upload.model_validate_json(v) for k, v in _decode(uploads).items()},
        {int(k): json.loads(v) for k, v in _decode(demos).items()},
        {int(k): Votes.model_validate_json(v) for k, v in _decode(votes).items()},
    )
    return Loaded(record, view)
