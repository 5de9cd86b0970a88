"""`ivh-approvals run` as a real process: serves, polls, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bot.simulator import RunningSimulator
from bot.store import Store
from tests.conftest import RedisProcess, free_port, wait_for

INTAKE = "run-test-token"


def bot_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    kept = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "IVH_", "REDIS_", "APPROVER", "INTAKE_", "POLL_"))
    }
    return kept | {"DATA_DIR": str(tmp_path / "data"), "INTAKE_TOKEN": INTAKE} | settings


def start_bot(
    tmp_path: Path, env: dict[str, str], command: str = "run"
) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"{command}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", command],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    return process, log


async def healthy(url: str) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{url}/healthz")).status_code == 200
    except httpx.TransportError:
        return False


async def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(process.wait, 15)


async def test_run_polls_tracked_tasks_and_stops_on_sigterm(
    tmp_path: Path, redis_server: RedisProcess, redis: Redis, sim: RunningSimulator
):
    port = free_port()
    env = bot_env(
        tmp_path,
        PORT=str(port),
        REDIS_URL=redis_server.url,
        IVH_BASE_URL=sim.url,
        IVH_APPKEY=sim.sim.appkey,
        IVH_ACCESS_TOKEN=sim.sim.access_token,
        POLL_INTERVAL="0.2",
    )
    process, log = start_bot(tmp_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: healthy(url), within=20)
        task = sim.sim.create_task()
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.post(
                "/tasks",
                json={"task_id": task.task_id, "title": "from a test"},
                headers={"Authorization": f"Bearer {INTAKE}"},
            )
        assert answer.status_code == 202
        store = Store(redis)

        async def awaiting() -> bool:
            return any(e.task_id == task.task_id for _, e in await store.events())

        await wait_for(awaiting)
    finally:
        code = await stop(process)
    assert code == 0
    text = log.read_text()
    assert "stopped" in text and "Traceback" not in text
    assert sim.sim.access_token not in text and "signature=" not in text


def test_run_without_ivh_keys_names_them_and_stops(tmp_path: Path):
    """`run` never quietly talks to the simulator: it is for `demo` and `simulate`."""
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"],
        env=bot_env(tmp_path, PORT=str(free_port())),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "IVH_APPKEY" in result.stderr and "IVH_ACCESS_TOKEN" in result.stderr
    assert "demo" in result.stderr and "simulate" in result.stderr
    assert not (tmp_path / "data").exists()  # nothing was started


async def test_run_without_redis_url_uses_the_embedded_redis_and_says_replicas_need_one(
    tmp_path: Path, sim: RunningSimulator
):
    port = free_port()
    env = bot_env(
        tmp_path,
        PORT=str(port),
        POLL_INTERVAL="0.2",
        IVH_BASE_URL=sim.url,
        IVH_APPKEY=sim.sim.appkey,
        IVH_ACCESS_TOKEN=sim.sim.access_token,
    )
    task = sim.sim.create_task(audit_seconds=3600)
    process, log = start_bot(tmp_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: healthy(url), within=30)
        tracked = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot.cli", "track", task.task_id, "--title", "Anna"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert tracked.returncode == 0, tracked.stderr
        assert f'"task_id": "{task.task_id}"' in tracked.stdout

        async def polled() -> bool:
            async with httpx.AsyncClient(base_url=url) as http:
                answer = await http.get(
                    f"/tasks/{task.task_id}", headers={"Authorization": f"Bearer {INTAKE}"}
                )
            snapshot = answer.json()["task"]["snapshot"]
            return snapshot is not None and snapshot["status"] == "MAKING"

        await wait_for(polled, within=15)
    finally:
        code = await stop(process)
    assert code == 0
    text = log.read_text()
    assert text.count("replicas of `run` need one shared Redis: set REDIS_URL") == 1, text
    assert "embedded" in text and "simulator" not in text and "Traceback" not in text
    assert (tmp_path / "data" / "redis" / "appendonlydir").exists()  # the data stays


async def test_demo_without_slack_seeds_a_simulated_task(tmp_path: Path):
    port = free_port()
    env = bot_env(tmp_path, PORT=str(port))
    process, log = start_bot(tmp_path, env, "demo")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: healthy(url), within=30)

        async def seeded() -> bool:
            return "demo: tracking simulated task" in log.read_text()

        await wait_for(seeded)
        task_id = log.read_text().split("demo: tracking simulated task ")[1].split(";")[0]
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.get(
                f"/tasks/{task_id}", headers={"Authorization": f"Bearer {INTAKE}"}
            )
        assert answer.json()["task"]["title"] == "Demo avatar (simulated)"
    finally:
        code = await stop(process)
    assert code == 0
    assert "SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_CHANNEL" in log.read_text()


def test_demo_with_partial_slack_settings_names_the_missing_one(tmp_path: Path):
    env = bot_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_SIGNING_SECRET="s")
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "SLACK_APP_TOKEN" in result.stderr and len(result.stderr.strip().splitlines()) == 1
