"""A requests-per-second budget kept in Redis, so that every replica shares one limit."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

# GCRA with a burst of one: each caller reserves the next free slot, 1/rate apart, on the
# Redis server's clock, and learns how long to wait for it. No retry loop, no thundering herd.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local after = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX',
           math.ceil((after - now) / 1000) + 1000)
return tat - now
"""


class RedisRateLimiter:
    """At most `rate` acquisitions per second across all processes sharing `key`."""

    def __init__(self, redis: Redis, key: str, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._key = key
        self._interval_us = max(1, round(1_000_000 / rate))
        self._reserve = redis.register_script(_RESERVE)

    async def acquire(self) -> None:
        wait_us = int(await self._reserve(keys=[self._key], args=[self._interval_us]))
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1_000_000)
