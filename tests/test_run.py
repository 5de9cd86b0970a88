"""`ivh-approvals run` as a real process: serves, polls, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from bot.app import HEALTH_KEYS, Runtime, Upstreams
from bot.demo import stage_of
from bot.events import Snapshot
from bot.sim import RunningSimulator
from bot.store import Store
from tests.conftest import RedisProcess, clean_env, free_port, run_cli, serving, wait_for
from tests.fake_slack import FakeSlack
from tests.harness import settings_for

INTAKE = "run-test-token"


def bot_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    return clean_env(**({"DATA_DIR": str(tmp_path / "data"), "INTAKE_TOKEN": INTAKE} | settings))


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
    result = run_cli("run", env=bot_env(tmp_path, PORT=str(free_port())), cwd=tmp_path)
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
            run_cli, "track", task.task_id, "--title", "Anna", env=env, cwd=tmp_path
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


def lines_with(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


async def log_line(log: Path, text: str, within: float = 20) -> str:
    """The first line of the log that contains `text`, once it is there."""

    async def logged() -> bool:
        return bool(lines_with(log, text))

    await wait_for(logged, within)
    return lines_with(log, text)[0]


async def test_demo_without_slack_says_where_to_watch_and_shows_its_progress(tmp_path: Path):
    port = free_port()
    env = bot_env(tmp_path, PORT=str(port), POLL_INTERVAL="0.2")
    process, log = start_bot(tmp_path, env, "demo")
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: healthy(url), within=30)
        seeded = await log_line(log, "demo: tracking simulated task ")
        task_id = seeded.split("demo: tracking simulated task ")[1].split(";")[0]
        assert "`ivh-approvals events -f` in a second terminal" in seeded
        sim_url = (await log_line(log, "built-in IVH simulator at ")).split(" at ")[1].split()[0]
        # The second terminal: `events -f`, as the line says (same directory, same settings).
        watcher = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, "-m", "bot.cli", "events", "-f"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            await log_line(log, f"demo: task {task_id} round 1: audit")
            async with httpx.AsyncClient(base_url=sim_url) as sim:  # skip the waiting
                await sim.post(f"/_sim/tasks/{task_id}/advance")
                await log_line(log, f"demo: task {task_id} round 1: training")
                await sim.post(f"/_sim/tasks/{task_id}/advance")
            ready = await log_line(log, f"demo: task {task_id} round 1: demo ready")
            assert f"{sim_url}/_sim/tasks/{task_id}/confirm" in ready
            assert watcher.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(watcher.stdout.readline), 20)
            assert "awaiting_confirmation" in line and task_id in line
        finally:
            watcher.terminate()
            watcher.wait(timeout=15)
            watcher.stdout.close()
        async with httpx.AsyncClient(base_url=url) as http:
            answer = await http.get(
                f"/tasks/{task_id}", headers={"Authorization": f"Bearer {INTAKE}"}
            )
        assert answer.json()["task"]["title"] == "Demo avatar (simulated)"
    finally:
        code = await stop(process)
    assert code == 0
    assert "SLACK_BOT_TOKEN, SLACK_APP_TOKEN and SLACK_CHANNEL" in log.read_text()


async def test_a_second_demo_starts_afresh_beside_the_first_ones_data(tmp_path: Path):
    """Same DATA_DIR: the embedded Redis still holds the first demo's task."""
    port = free_port()
    env = bot_env(tmp_path, PORT=str(port), POLL_INTERVAL="0.2")
    ids: list[str] = []
    for run in ("first", "second"):
        process, log = start_bot(tmp_path, env, "demo")
        log = log.rename(tmp_path / f"demo-{run}.log")  # the process writes on into it
        try:
            seeded = await log_line(log, "demo: tracking simulated task ")
            ids.append(seeded.split("demo: tracking simulated task ")[1].split(";")[0])
            await log_line(log, f"demo: task {ids[-1]} round 1: audit")
            if run == "second":
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    answer = await http.get(
                        f"/tasks/{ids[0]}", headers={"Authorization": f"Bearer {INTAKE}"}
                    )
                earlier = answer.json()["task"]
                assert earlier["state"] == "unknown" and "earlier demo run" in earlier["error"]
        finally:
            code = await stop(process)
        assert code == 0, log.read_text()
    assert ids[0] != ids[1]
    text = (tmp_path / "demo-second.log").read_text()
    assert f"no longer polling earlier demo tasks {ids[0]}" in text
    assert "IVH does not know" not in text and "Traceback" not in text


def test_the_demo_refuses_a_redis_url(tmp_path: Path, redis_server: RedisProcess):
    """Its poller would read that Redis's real tasks from the simulator, which makes them up."""
    env = bot_env(tmp_path, PORT=str(free_port()), REDIS_URL=redis_server.url)
    result = run_cli("demo", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "REDIS_URL" in result.stderr


async def test_a_demo_does_not_join_the_embedded_redis_of_a_running_process(tmp_path: Path):
    port = free_port()
    env = bot_env(tmp_path, PORT=str(port))
    process, _ = start_bot(tmp_path, env, "demo")
    try:
        await wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), within=30)
        second = await asyncio.to_thread(
            run_cli,
            "demo",
            env=env | {"PORT": str(free_port())},
            cwd=tmp_path,
        )
    finally:
        code = await stop(process)
    assert code == 0
    assert second.returncode == 2, second.stderr
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: DATA_DIR: another ivh-approvals process")
    assert "Traceback" not in second.stderr


@pytest.mark.parametrize(
    ("status", "stage", "stage_status", "round_", "told"),
    [
        ("MAKING", "AUDIT", "PROCESSING", 0, "round 1: audit"),
        ("MAKING", "TRAIN", "PROCESSING", 0, "round 1: training"),
        ("MAKING", "CONFIRM", "WAIT_PROCESS", 1, "round 1: demo ready, waiting for a decision"),
        ("MAKING", "TRAIN", "PROCESSING", 1, "round 2: training"),  # after a Reject
        ("MAKING", "CONFIRM", "WAIT_PROCESS", 2, "round 2: demo ready, waiting for a decision"),
        ("MAKING", "CONFIRM", "PROCESSING", 2, "round 2: decided, delivering"),
        ("SUCCESS", "END", "SUCCESS", 2, "round 2: approved and delivered"),
    ],
)
def test_the_demo_tells_each_stage_with_its_round(status, stage, stage_status, round_, told):
    snapshot = Snapshot(status=status, stage=stage, stage_status=stage_status, round=round_)
    assert stage_of(snapshot) == told


def test_demo_with_partial_slack_settings_names_the_missing_one(tmp_path: Path):
    env = bot_env(tmp_path, SLACK_BOT_TOKEN="xoxb-1", SLACK_SIGNING_SECRET="s")
    result = run_cli("demo", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "SLACK_APP_TOKEN" in result.stderr and len(result.stderr.strip().splitlines()) == 1


async def test_healthz_answers_the_same_keys_with_and_without_slack(
    sim: RunningSimulator, fake: FakeSlack, redis_url: str
):
    answers = {}
    for name, slack in {
        "with Slack": {},
        "without Slack": {"SLACK_BOT_TOKEN": None, "SLACK_SIGNING_SECRET": None},
    }.items():
        settings = settings_for(sim, fake, redis_url, **slack)
        assert settings.slack_configured == (name == "with Slack")
        up = Upstreams(redis_url, sim.url, sim.sim.appkey, sim.sim.access_token)
        runtime = Runtime.build(settings, up)
        loops = [asyncio.create_task(runtime.poller.run())]
        if runtime.slack is not None:
            loops.append(asyncio.create_task(runtime.slack.publisher.run()))
        try:
            async with serving(runtime.web_app()) as url:
                await wait_for(lambda url=url: healthy(url))
                async with httpx.AsyncClient(base_url=url) as http:
                    answers[name] = (await http.get("/healthz")).json()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await runtime.aclose()
    expected = dict.fromkeys(HEALTH_KEYS, True)
    assert answers == {"with Slack": expected, "without Slack": expected}
