"""The poller: reads the progress of every tracked task and records what changed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from bot.aio import stop_if_cancelled
from bot.events import build_events, snapshot_of
from bot.ivh import IvhClient, IvhError
from bot.logs import log_context
from bot.model import TaskState
from bot.schedule import Schedule
from bot.store import Store

log = logging.getLogger(__name__)

HAND_BACK_SECONDS = 2.0  # at shutdown, for making the polls cut short due again
IDLE_WAIT = 1.0  # longest nap between looks at the schedule when nothing is due
REDIS_RETRY = 2.0


class Poller:
    """Polls due tasks concurrently; the IVH client's limiter keeps the request rate."""

    def __init__(
        self,
        store: Store,
        ivh: IvhClient,
        *,
        interval: float,
        max_qps: float,
        schedule: Schedule | None = None,
        lease: float = 120.0,
        clock: Callable[[], float] = time.time,
        cycle: Callable[[float], None] | None = None,
    ) -> None:
        self._store = store
        self._ivh = ivh
        self._interval = interval
        self._schedule = schedule or Schedule(interval)
        self._lease = lease
        self._clock = clock
        self._cycle = cycle  # told the seconds between two reads of a task
        # Enough requests in flight to fill the budget at about a second of latency, and no
        # more: claimed tasks beyond that would only sit on their lease (and the Redis pool).
        self._concurrency = max(4, min(64, math.ceil(max_qps * 1.5)))
        self._inflight: dict[str, asyncio.Task[None]] = {}  # task id -> its poll
        # Leased tasks whose poll Redis cut short: made due again as soon as Redis answers,
        # rather than sitting out their lease.
        self._stranded: set[str] = set()
        self._wake = asyncio.Event()
        self.last_loop: float | None = None

    def wake(self) -> None:
        """Look at the schedule now (a task was just tracked)."""
        self._wake.set()

    @property
    def healthy(self) -> bool:
        return self.last_loop is not None and time.monotonic() - self.last_loop < 3 * IDLE_WAIT + 5

    async def run(self) -> None:
        try:
            while True:
                stop_if_cancelled()
                self.last_loop = time.monotonic()
                self._wake.clear()
                try:
                    await self._rescue_stranded()
                    await self._start_due()
                    wait = await self._idle_time()
                except RedisError as error:
                    log.warning("poller: Redis unavailable (%s); retrying", error)
                    self.last_loop = None
                    wait = REDIS_RETRY
                await self._nap(wait)
        finally:
            await self._hand_back()

    async def _hand_back(self) -> None:
        """Stopping (a deploy, SIGTERM): cancel the polls in flight and make their tasks due
        again, so that another replica reads them now instead of after their lease."""
        polls = dict(self._inflight)
        cut_short = {task_id for task_id, task in polls.items() if not task.done()}
        for task in polls.values():
            task.cancel()
        await asyncio.gather(*polls.values(), return_exceptions=True)
        if not cut_short:
            return
        try:
            async with asyncio.timeout(HAND_BACK_SECONDS):
                await self._store.make_due(cut_short, self._clock())
        except (RedisError, TimeoutError) as error:
            log.warning("poller: %d polls cut short stay leased (%s)", len(cut_short), error)

    async def _rescue_stranded(self) -> None:
        if self._stranded:
            stranded, self._stranded = self._stranded, set()
            try:
                await self._store.make_due(stranded, self._clock())
            except RedisError:
                self._stranded |= stranded
                raise
            log.info("poller: Redis is back; %d interrupted polls due again", len(stranded))

    async def _start_due(self) -> None:
        free = self._concurrency - len(self._inflight)
        for task_id in await self._store.lease_due(self._clock(), free, self._lease):
            task = asyncio.create_task(self.poll(task_id), name=f"poll {task_id}")
            self._inflight[task_id] = task
            task.add_done_callback(functools.partial(self._done, task_id))

    def _done(self, task_id: str, _: asyncio.Task[None]) -> None:
        self._inflight.pop(task_id, None)
        self._wake.set()

    async def _idle_time(self) -> float:
        if len(self._inflight) >= self._concurrency:
            return IDLE_WAIT
        next_due = await self._store.next_due()
        if next_due is None:
            return IDLE_WAIT
        return min(IDLE_WAIT, max(0.0, next_due - self._clock()))

    async def _nap(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def poll(self, task_id: str) -> None:
        """One poll of one task. Errors stay with this task; the others go on."""
        try:
            with log_context(task_id=task_id):
                await self._poll(task_id)
        except asyncio.CancelledError:
            raise
        except RedisError as error:
            log.warning(
                "poll %s: Redis unavailable (%s); polled again once it is back", task_id, error
            )
            self._stranded.add(task_id)
        except Exception:
            # A bug or an answer nobody foresaw: log it and try again later.
            log.exception("poll %s: unexpected error; retrying in %.0fs", task_id, self._interval)
            await self._store.reschedule(task_id, self._clock() + self._interval)

    async def _poll(self, task_id: str) -> None:
        record = await self._store.get(task_id)
        if record is None or record.state != TaskState.ACTIVE:
            return
        try:
            progress = await self._ivh.get_progress(task_id)
        except IvhError as error:
            now = self._clock()
            if error.not_found:
                log.warning("task %s: IVH does not know it (%s); stopped polling", task_id, error)
                await self._store.mark_unknown(record, str(error), now)
                return
            failures = await self._store.record_failure(
                task_id, str(error), now, now + self._backoff(record.failures + 1)
            )
            log.warning("poll %s failed (%d in a row): %s", task_id, failures, error)
            return
        now = self._clock()
        if self._cycle is not None and record.polled_at is not None:
            self._cycle(now - record.polled_at)
        snapshot = snapshot_of(progress, record.snapshot)
        events = build_events(task_id, record.snapshot, snapshot, now)
        same_stage = record.snapshot is not None and (
            (record.snapshot.stage, record.snapshot.status) == (snapshot.stage, snapshot.status)
        )
        stage_since = record.stage_since if same_stage and record.stage_since else now
        delay = self._schedule.delay(snapshot, stage_since, now)
        next_poll = None if snapshot.finished else now + delay
        stored = await self._store.record_progress(
            record, snapshot, events, now=now, next_poll=next_poll, stage_since=stage_since
        )
        if not stored:
            log.info("poll %s: progress changed under us; another poller recorded it", task_id)
            return
        if snapshot.finished:
            await self._store.retire(task_id)
        for event in events:
            log.info("task %s: %s (round %d)", task_id, event.type.value, event.round)

    def _backoff(self, failures: int) -> float:
        """Poll a failing task less often, up to ten intervals (or five minutes) apart."""
        ceiling = max(10 * self._interval, 300.0)
        return min(ceiling, self._interval * 2 ** min(failures - 1, 10))
