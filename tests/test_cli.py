"""The `ivh-approvals` commands as a user types them: each runs as its own process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.store import Store
from tests.conftest import RedisProcess, run_cli, wait_for
from tests.test_run import bot_env


@contextlib.contextmanager
def command(tmp_path: Path, env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`ivh-approvals ARGS` running in the background, its output read line by line."""
    with (tmp_path / f"{args[0]}.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=15)
            assert process.stdout is not None
            process.stdout.close()


async def next_line(process: subprocess.Popen[str], within: float = 20.0) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), within)
    assert line, f"the command ended (exit {process.poll()}) instead of printing"
    return line


async def append_event(store: Store, task_id: str) -> None:
    """One real event in the stream: a tracked task IVH turns out not to know."""
    record, _ = await store.track(task_id, channel=None, title=None, tracked_by="test")
    await store.mark_unknown(record, "IVH code 110006: task not found", time.time())


async def xread_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


async def test_events_follow_prints_new_events_across_quiet_waits(
    tmp_path: Path, redis_server: RedisProcess, redis: Redis
):
    store = Store(redis)
    await append_event(store, "before_start")
    env = bot_env(tmp_path, REDIS_URL=redis_server.url)
    with command(tmp_path, env, "events", "-f") as events:
        assert "before_start" in await next_line(events)
        # Nothing happens for longer than one blocking read: the command waits again, twice.
        reads = await xread_calls(redis)

        async def waited_twice() -> bool:
            assert events.poll() is None, (tmp_path / "events.log").read_text()
            return await xread_calls(redis) >= reads + 2

        await wait_for(waited_twice, within=30)
        await append_event(store, "after_a_quiet_wait")
        line = await next_line(events)
        assert "after_a_quiet_wait" in line and "unknown_task" in line
    assert "Traceback" not in (tmp_path / "events.log").read_text()


@contextlib.contextmanager
def port_held_open() -> Iterator[int]:
    """A loopback port another process (here: the test) is listening on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("command_name", ["run", "demo"])
def test_a_busy_port_is_one_line_naming_port(tmp_path: Path, command_name: str):
    with port_held_open() as port:
        env = bot_env(
            tmp_path,
            HOST="127.0.0.1",
            PORT=str(port),
            IVH_APPKEY="appkey",
            IVH_ACCESS_TOKEN="token",
        )
        result = run_cli(command_name, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"PORT: cannot listen on 127.0.0.1:{port}: already in use" in result.stderr
    assert not (tmp_path / "data").exists()  # checked before the embedded Redis starts


def test_simulate_on_a_busy_port_is_one_line_naming_it(tmp_path: Path):
    with port_held_open() as port:
        result = run_cli("simulate", "--port", str(port), env=bot_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"--port: cannot listen on 127.0.0.1:{port}: already in use" in result.stderr


def test_events_without_a_bot_running_says_what_to_start(tmp_path: Path):
    result = run_cli("events", "-f", env=bot_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "REDIS_URL" in result.stderr and "DATA_DIR" in result.stderr
    assert "`ivh-approvals run` or `demo` first" in result.stderr
