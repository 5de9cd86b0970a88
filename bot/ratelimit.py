"""A requests-per-second budget kept in Redis, so that every replica shares one limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from bot.store import limiter_keys

# Shared by both scripts: Redis's clock, and the grant. A send is granted unless `limit`
# sends were granted within the last `window` microseconds (`sent` lists the latest grant
# times, newest first); a background caller also names the priority slots, and is refused
# while any is reserved.
_GRANT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function grant(sent, priority, limit, window)
  if priority and tonumber(redis.call('GET', priority) or '0') > now then return false end
  local oldest = redis.call('LINDEX', sent, limit - 1)
  if oldest and now - tonumber(oldest) < window then return false end
  redis.call('LPUSH', sent, string.format('%.0f', now))
  redis.call('LTRIM', sent, 0, limit - 1)
  redis.call('PEXPIRE', sent, math.ceil(window / 1000) + 1000)
  return true
end
"""

# GCRA with a burst of one: each caller reserves the next free slot (KEYS[1]) on the Redis
# server's clock and learns how long to wait for it: no polling, no thundering herd. A slot
# that is free now is granted in the same step (-1: send now), which saves an idle caller a
# round trip; refused (-2), the caller reserves again. Otherwise: the wait in microseconds.
_RESERVE = (
    _GRANT
    + """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local after = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX',
           math.ceil((after - now) / 1000) + 1000)
if tat > now then return tat - now end
if grant(KEYS[2], KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3])) then return -1 end
return -2
"""
)

# When its slot comes, a caller asks to send: 1 granted, 0 refused.
_SEND = (
    _GRANT
    + """
if grant(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2])) then return 1 end
return 0
"""
)

# Slots alone do not hold the rate at the server: a caller that its busy event loop wakes late
# goes out together with the callers of the next slots. So a caller woken more than JITTER
# after its slot gives the slot up and reserves the next free one; and, because several
# replicas share the budget, a caller on time also asks Redis to grant the send, which it does
# at most `rate` times within 1 + JITTER seconds (refused: it reserves the next free slot).
# Requests that reach the server within JITTER of their grant then make at most `rate` in any
# one second there. Slots are (1 + JITTER + SLACK) / rate apart, so that callers on time are
# not refused for a few ms of jitter: a cycle of N polls takes about 7 % longer than N / rate.
#
# Priority callers (a user's decision) keep their own queue of slots, so that they do not wait
# behind the slots background work (polls) has already reserved. While priority slots are
# reserved, background callers are refused (and reserve again): the grants, shared by both,
# go to the priority callers first and still hold the rate.
JITTER = 0.05
SLACK = 0.02
NOW, REFUSED = -1, -2  # what _RESERVE answers besides a wait

Sleep = Callable[[float], Awaitable[object]]


class RedisRateLimiter:
    """At most `rate` acquisitions in any second across all processes sharing `key`."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        keys = limiter_keys(key)
        self._slots = [keys.slots]
        self._priority_slots = [keys.priority_slots]
        self._grants = [keys.grants]
        self._grants_after_priority = [*self._grants, *self._priority_slots]
        self._interval_us = max(1, round(1_000_000 * (1 + JITTER + SLACK) / rate))
        limit = max(1, int(rate))  # grants per window; the window is a second for whole rates
        self._send_args = [limit, round(1_000_000 * (1 + JITTER) * limit / rate)]
        self._reserve_args = [self._interval_us, *self._send_args]
        self._reserve = redis.register_script(_RESERVE)
        self._send = redis.register_script(_SEND)
        self._clock = clock
        self._sleep = sleep

    async def acquire(self, *, priority: bool = False) -> None:
        slots, grants = self._slots, self._grants_after_priority
        if priority:
            slots, grants = self._priority_slots, self._grants
        while True:
            told = int(await self._reserve(keys=[*slots, *grants], args=self._reserve_args))
            if told == NOW:
                return
            if told == REFUSED:
                continue
            wait = told / 1e6
            due = self._clock() + wait
            if wait > 0:
                await self._sleep(wait)
            if self._clock() - due > JITTER:
                continue  # woken too late: going now would add to the next slots' requests
            if await self._send(keys=grants, args=self._send_args):
                return
            # `rate` requests went out within the window (others went late): take the next slot.
