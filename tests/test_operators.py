"""For the people running it: /metrics, /readyz, the audit trail."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.harness import Bot, run_bot


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, by name and labels (parsed by prometheus-client)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(bot: Bot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = await bot.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_polls_decisions_slack_errors_and_stages(bot: Bot):
    task = bot.sim.sim.create_task(deliver_seconds=3600)
    bot.fake.fail("chat.postMessage", status=429, retry_after=0)  # waited out and retried
    await bot.track(task.task_id)
    record = await bot.posted(task.task_id, within=30)
    waiting = await scrape(bot)
    assert value(waiting, "ivh_approvals_tasks", stage="CONFIRM", status="WAIT_PROCESS") == 1
    polls = value(waiting, "ivh_approvals_ivh_requests_total", action="getprogress", code="0")
    assert polls >= 1
    assert (
        value(
            waiting,
            "ivh_approvals_slack_api_errors_total",
            method="chat.postMessage",
            error="ratelimited",
        )
        == 1
    )
    assert value(waiting, "ivh_approvals_ivh_circuit_open") == 0
    assert ("ivh_approvals_events_lag", ()) in waiting

    value_ = json.dumps({"task": task.task_id, "round": 1}, separators=(",", ":"))
    await bot.click("approve", value_)

    # The poller can see Tencent move on before the decider has recorded (and counted) the
    # decision, and the simulator moves on before the client counts its answer: wait for
    # every count to arrive, then check that each arrived once.
    async def counted() -> bool:
        found = await scrape(bot)
        return (
            value(found, "ivh_approvals_tasks", stage="CONFIRM", status="PROCESSING") == 1
            and value(found, "ivh_approvals_decisions_total", operate="AGREE", source="slack") > 0
            and value(found, "ivh_approvals_decision_seconds_count") > 0
            and value(found, "ivh_approvals_ivh_request_seconds_count", action="customerconfirm")
            > 0
        )

    await wait_for(counted, within=30, what="the decision counted")
    found = await scrape(bot)
    assert value(found, "ivh_approvals_tasks", stage="CONFIRM", status="WAIT_PROCESS") == 0
    assert value(found, "ivh_approvals_decisions_total", operate="AGREE", source="slack") == 1
    assert value(found, "ivh_approvals_decision_seconds_count") == 1
    confirms = value(found, "ivh_approvals_ivh_requests_total", action="customerconfirm", code="0")
    assert confirms == 1
    assert value(found, "ivh_approvals_ivh_request_seconds_count", action="customerconfirm") == 1
    assert value(found, "ivh_approvals_poll_cycle_seconds_count") >= 1
    assert record.slack_ts


async def test_readyz_says_ready_and_healthz_stays_liveness(bot: Bot):
    async def loops_started() -> bool:  # the bot fixture returns as its loops are created
        return (await bot.http.get("/readyz")).status_code == 200

    await wait_for(loops_started, what="ready")
    ready = await bot.http.get("/readyz")
    assert ready.json() == {"redis": True, "loops": True, "slack": True}


async def test_readyz_is_not_ready_while_slack_refuses_the_token(sim, fake, redis_url):
    async with run_bot(sim, fake, redis_url, SLACK_BOT_TOKEN="xoxb-revoked") as bot:
        ready = await bot.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["slack"] is False
        assert (await bot.http.get("/healthz")).status_code == 200  # alive all the same


LOGGING_PROBE = """
import logging
from bot.logs import log_context, setup_logging
setup_logging("INFO", "json")
url = "https://gw.tvs.qq.com/v2/x?appkey=k&timestamp=1&signature=SECRET%2B%3D"
with log_context(task_id="1212_1_w", round=2, request_id="ivh-approvals-r1"):
    logging.getLogger("bot.poller").warning("poll failed: %s", url)
    try:
        raise RuntimeError("boom " + url)
    except RuntimeError:
        logging.getLogger("bot.publisher").exception("event failed")
with log_context(slack_method="chat.postMessage"):
    logging.getLogger("slack_sdk").error("refused")
logging.getLogger("httpx").info("HTTP Request: POST " + url)
"""


def test_json_logs_are_one_object_a_line_with_context_and_no_signature():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE], capture_output=True, text=True, check=True
    )
    assert "SECRET" not in done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 3  # httpx's request line stays out at INFO
    polled, failed, slack = lines
    assert polled["level"] == "WARNING" and polled["logger"] == "bot.poller"
    assert (polled["task_id"], polled["round"], polled["request_id"]) == (
        "1212_1_w",
        2,
        "ivh-approvals-r1",
    )
    assert "RuntimeError" in failed["exception"]
    assert slack["slack_method"] == "chat.postMessage" and "task_id" not in slack


async def run_check(tmp_path, env: dict[str, str]) -> tuple[int, list[str]]:
    """`ivh-approvals check` as a user runs it, while this loop serves the fakes."""
    import asyncio
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "check",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines() or err.decode().splitlines()


def check_env(tmp_path, sim, fake, redis_url: str, **extra: str) -> dict[str, str]:
    from tests.test_run import bot_env

    settings = {
        "SLACK_BOT_TOKEN": fake.token,
        "SLACK_API_URL": fake.api_url,
        "SLACK_CHANNEL": "C0DEMO",
        "SLACK_SIGNING_SECRET": "check-signing-secret",
        "IVH_BASE_URL": sim.url,
        "IVH_APPKEY": sim.sim.appkey,
        "IVH_ACCESS_TOKEN": sim.sim.access_token,
        "REDIS_URL": redis_url,
    }
    return bot_env(tmp_path, **(settings | extra))


async def test_check_passes_on_a_working_deployment(tmp_path, sim, fake, redis_url):
    code, lines = await run_check(tmp_path, check_env(tmp_path, sim, fake, redis_url))
    assert code == 0, lines
    names = [line.split(":", 1)[0].split(maxsplit=1)[1] for line in lines]
    assert names == ["settings", "slack", "channel C0DEMO", "ivh", "redis"]
    assert all(line.startswith("ok") for line in lines)
    assert "code 110006" in lines[3] and "append-only file on" in lines[4]


async def test_check_names_each_problem_and_fails(tmp_path, sim, fake, redis_url):
    fake.scopes.remove("files:write")
    env = check_env(tmp_path, sim, fake, redis_url, IVH_ACCESS_TOKEN="wrong-token")
    code, lines = await run_check(tmp_path, env)
    assert code == 1
    slack = next(line for line in lines if " slack:" in line)
    assert slack.startswith("FAIL") and "lacks files:write" in slack
    ivh = next(line for line in lines if " ivh:" in line)
    assert ivh.startswith("FAIL") and "100005" in ivh
    assert next(line for line in lines if " redis:" in line).startswith("ok")


# --- the audit trail ---------------------------------------------------------------------------


async def decided_twice(bot: Bot) -> str:
    """A task rejected in round 1 and approved in round 2, from Slack."""
    from tests.test_slack_flow import button_values

    task = bot.sim.sim.create_task(deliver_seconds=3600)
    await bot.track(task.task_id, title="Anna")
    record = await bot.posted(task.task_id)
    await bot.click("reject", button_values(bot.parent(record))["reject"])
    views = await bot.fake.wait_for("views.open")
    metadata = views[-1].args["view"]["private_metadata"]
    await bot.submit_reason(metadata, "lips out of sync")

    async def round_two() -> bool:
        loaded = await bot.store.view(task.task_id)
        return bool(loaded and loaded.view.round == 2 and loaded.view.phase == "pending")

    await wait_for(round_two)
    await bot.posted(task.task_id)
    value_ = json.dumps({"task": task.task_id, "round": 2}, separators=(",", ":"))
    await bot.click("approve", value_, user="U0BOB")

    async def approved() -> bool:
        return await bot.store.decision(task.task_id, 2) is not None

    await wait_for(approved)
    return task.task_id


async def test_the_audit_trail_exports_events_and_decisions(bot: Bot, tmp_path, redis_url):
    import asyncio
    import csv
    import io
    import sys

    from tests.test_run import bot_env

    task_id = await decided_twice(bot)

    async def export(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "audit", "export", *args,
            env=bot_env(tmp_path, REDIS_URL=redis_url), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        return out.decode()

    entries = [json.loads(line) for line in (await export()).splitlines()]
    mine = [e for e in entries if e["task_id"] == task_id]
    kinds = [(e["kind"], e.get("type") or e.get("operate")) for e in mine]
    assert ("event", "awaiting_confirmation") in kinds and ("event", "round_changed") in kinds
    decisions = [e for e in mine if e["kind"] == "decision"]
    assert [(d["round"], d["operate"], d["user"]) for d in decisions] == [
        (1, "REJECT", "U0ALICE"),
        (2, "AGREE", "U0BOB"),
    ]
    assert decisions[0]["reason"] == "lips out of sync" and decisions[0]["request_id"]
    assert all(d["ready_at"] <= d["at"] for d in decisions)

    rows = list(csv.DictReader(io.StringIO(await export("--format", "csv"))))
    assert [r["operate"] for r in rows if r["kind"] == "decision"] == ["REJECT", "AGREE"]
    assert rows[0]["at"].endswith("Z")
    assert list(csv.DictReader(io.StringIO(await export("--since", "2999-01-01")))) == []


async def test_ivh_stats_counts_rounds_first_pass_and_reasons(bot: Bot):
    await decided_twice(bot)
    answer = await bot.command("stats 7")
    text = answer.text
    assert "Last 7 days" in text and "Rounds decided: 2" in text
    assert "Approved at the first round: 0%" in text
    assert "uncategorized (1)" in text


async def test_the_audit_trail_keeps_its_retention(store):
    import time

    from bot.model import Decision
    from bot.store import AUDIT_STREAM, Store

    short = Store(store.redis, audit_retention_days=1)
    three_days_ago = f"{int((time.time() - 3 * 86400) * 1000)}-0"
    await store.redis.xadd(
        AUDIT_STREAM, {"kind": "decision", "task_id": "t-old"}, id=three_days_ago
    )
    decision = Decision(round=1, operate="AGREE", user="U0A", at=time.time())
    await short.save_decision("t-new", decision)  # appending trims what is over a day old
    assert [entry["task_id"] async for entry in short.audit()] == ["t-new"]


# --- the queue and a task's history, in Slack -------------------------------------------------


async def test_ivh_pending_lists_waiting_rounds_oldest_first_until_decided(bot: Bot):
    first = bot.sim.sim.create_task(deliver_seconds=3600)
    await bot.track(first.task_id, title="Anna <!here>")
    await bot.posted(first.task_id)
    second = bot.sim.sim.create_task(deliver_seconds=3600)
    await bot.track(second.task_id, title="Bo")
    await bot.posted(second.task_id)
    answer = (await bot.command("pending")).text
    assert "Waiting for a decision* (2" in answer
    assert answer.index(first.task_id) < answer.index(second.task_id)
    assert "Anna &lt;!here&gt;" in answer and "Open the thread" in answer

    value_ = json.dumps({"task": first.task_id, "round": 1}, separators=(",", ":"))
    await bot.click("approve", value_)

    async def decided() -> bool:
        return await bot.store.decision(first.task_id, 1) is not None

    await wait_for(decided)
    answer = (await bot.command("pending")).text
    assert first.task_id not in answer and second.task_id in answer


async def test_ivh_pending_tells_a_non_approver_they_cannot_decide(sim, fake, redis_url):
    async with run_bot(sim, fake, redis_url, APPROVERS="U0ANA") as bot:
        task = bot.sim.sim.create_task()
        await bot.track(task.task_id)
        await bot.posted(task.task_id)
        answer = (await bot.command("pending", user="U0BOB")).text
        assert task.task_id in answer and "you cannot decide" in answer
        assert "you cannot decide" not in (await bot.command("pending", user="U0ANA")).text


async def test_ivh_history_shows_every_round_its_demos_and_decisions(bot: Bot):
    task_id = await decided_twice(bot)
    answer = (await bot.command(f"history {task_id}")).text
    assert "*Round 1*" in answer and "*Round 2*" in answer
    assert answer.count("demo 1") >= 2  # each round's own demo link
    assert "Rejected by <@U0ALICE>" in answer and "lips out of sync" in answer
    assert "Approved by <@U0BOB>" in answer and "RequestID" in answer
    assert "Tencent: MAKING/CONFIRM/WAIT_PROCESS" in answer


async def test_check_says_slack_is_unreachable_instead_of_a_traceback(
    tmp_path, sim, fake, redis_url
):
    from tests.conftest import free_port

    unreachable = f"http://127.0.0.1:{free_port()}/api/"
    env = check_env(tmp_path, sim, fake, redis_url, SLACK_API_URL=unreachable)
    code, lines = await run_check(tmp_path, env)
    assert code == 1
    slack = next(line for line in lines if " slack:" in line)
    assert slack.startswith("FAIL") and "cannot check" in slack
    assert next(line for line in lines if " ivh:" in line).startswith("ok")


def test_until_a_date_includes_that_whole_day():
    from bot.audit import parse_when

    assert parse_when("2026-11-30", end=True) - parse_when("2026-11-30") == 86_400
    assert parse_when("2026-11-30T14:00", end=True) == parse_when("2026-11-30T14:00")
