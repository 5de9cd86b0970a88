"""`ivh-approvals run` with proposed product changes applied in-process (the --what-if runs).

Not a benchmark: given --what-if, the benchmarks start replicas through this file instead of
`-m bot.cli`, to show what the recommended changes would do before anyone makes them. The
environment variable BENCH_WHAT_IF lists the patches (comma-separated; default: all):

- redis-pool: a blocking Redis connection pool (waits for a free connection) instead of
  redis-py's default pool, which raises "Too many connections" past 100 commands in flight.
- sniffio: make `import sniffio` succeed (without it httpcore retries a failing import several
  times per request, ~0.2 ms each).
- keepalive: the IVH client keeps alive as many connections as it may open (20 -> 100).
- aiohttp: the IVH client sends through aiohttp (already a dependency) instead of httpcore,
  via an httpx transport (IvhClient's `transport` argument); keepalive then does not apply.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import aiohttp
import httpx
from redis.asyncio import BlockingConnectionPool, Redis

PATCHES = ("redis-pool", "sniffio", "keepalive", "aiohttp")
REDIS_POOL = 100
REDIS_WAIT = 30.0


def _blocking_from_url(cls: type[Redis], /, url: str, **options: Any) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url, max_connections=REDIS_POOL, timeout=REDIS_WAIT, **options
    )
    return cls(connection_pool=pool)


class _KeepAllLimits(httpx.Limits):
    def __init__(self, **options: Any) -> None:
        if options.get("max_connections") is not None:
            options["max_keepalive_connections"] = options["max_connections"]
        super().__init__(**options)


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Just enough of an httpx transport on an aiohttp session for the IVH client."""

    def __init__(self, connections: int = 100) -> None:
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        limits = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        try:
            async with self._session.request(
                request.method,
                str(request.url),
                data=request.content,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as answer:
                body = await answer.read()
                raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
                status = answer.status
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc), request=request) from exc
        return httpx.Response(status, headers=raw, content=body, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def apply(patches: set[str]) -> None:
    if "redis-pool" in patches:
        Redis.from_url = classmethod(_blocking_from_url)  # type: ignore[method-assign,assignment]
    if "sniffio" in patches:
        try:
            import sniffio  # noqa: F401
        except ImportError:
            shim = types.ModuleType("sniffio")
            shim.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
            sys.modules["sniffio"] = shim
    if "keepalive" in patches:
        httpx.Limits = _KeepAllLimits  # type: ignore[misc]
    if "aiohttp" in patches:
        from bot import ivh

        original = ivh.IvhClient.__init__

        def init(self: ivh.IvhClient, *args: Any, **options: Any) -> None:
            if options.get("transport") is None:
                options["transport"] = AiohttpTransport()
            original(self, *args, **options)

        ivh.IvhClient.__init__ = init


def chosen(value: str | None) -> set[str]:
    if not value or value == "all":
        return set(PATCHES)
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(PATCHES)
    if unknown:
        raise SystemExit(f"BENCH_WHAT_IF: unknown patches {sorted(unknown)}; known: {PATCHES}")
    return names


if __name__ == "__main__":
    apply(chosen(os.environ.get("BENCH_WHAT_IF")))
    from bot.cli import main

    raise SystemExit(main(sys.argv[1:]))
