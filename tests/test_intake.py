"""POST /tasks and GET /tasks/{id}: the intake a task submitter calls."""

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from bot.store import Store
from bot.web import make_web_app
from tests.conftest import serving

TOKEN = "intake-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def woken() -> list[int]:
    return []


@pytest.fixture
async def client(store: Store, woken: list[int]) -> AsyncIterator[httpx.AsyncClient]:
    async def health() -> dict[str, bool]:
        return {"redis": await store.ping(), "poller": True}

    app = make_web_app(
        store, intake_token=SecretStr(TOKEN), health=health, on_track=lambda: woken.append(1)
    )
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        yield http


async def test_tracking_a_task_answers_202_with_its_record(client, woken):
    body = {"task_id": "1212_29934_w", "channel": "C0123", "title": "Anna"}
    answer = await client.post("/tasks", json=body, headers=AUTH)
    assert answer.status_code == 202
    task = answer.json()["task"]
    assert (task["task_id"], task["channel"], task["title"], task["state"]) == (
        "1212_29934_w",
        "C0123",
        "Anna",
        "active",
    )
    assert woken == [1]


async def test_tracking_twice_is_idempotent(client):
    first = await client.post("/tasks", json={"task_id": "t-1"}, headers=AUTH)
    second = await client.post("/tasks", json={"task_id": "t-1", "title": "other"}, headers=AUTH)
    assert second.status_code == 202
    assert second.json()["task"] == first.json()["task"]
    assert second.json()["polling_started"] is False


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
async def test_wrong_or_missing_token_is_401(client, headers):
    answer = await client.post("/tasks", json={"task_id": "t-1"}, headers=headers)
    assert answer.status_code == 401
    assert (await client.get("/tasks/t-1", headers=headers)).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, "task_id: is required"),
        ({"task_id": ""}, 422, "empty"),
        ({"task_id": "x" * 129}, 422, "at most 128"),
        ({"task_id": "bad\x00id"}, 422, "printable"),
        ({"task_id": "has space"}, 422, "printable"),
        ({"task_id": 12345}, 422, "task_id"),
        ({"task_id": "t", "channel": "not a channel!"}, 422, "channel"),
        (
            {"task_id": "t", "channel": "#approvals"},
            422,
            "channel: expected a channel id such as C0123ABCD, not the name #approvals",
        ),
        ({"task_id": "t", "channel": "approvals"}, 422, "channel: expected a Slack channel id"),
        ({"task_id": "t", "channel": "c0123abcd"}, 422, "channel: expected a Slack channel id"),
        ({"task_id": "t", "colour": "red"}, 422, "colour"),
        (["t"], 400, "JSON object"),
    ],
)
async def test_bad_bodies_get_a_clear_message(client, body, status, says):
    answer = await client.post("/tasks", json=body, headers=AUTH)
    assert answer.status_code == status
    assert says in answer.json()["error"]


async def test_a_body_that_is_not_json_is_400(client):
    answer = await client.post("/tasks", content=b"task_id=1", headers=AUTH)
    assert answer.status_code == 400
    assert "JSON" in answer.json()["error"]


async def test_an_oversized_body_is_refused(client):
    answer = await client.post("/tasks", content=b"x" * 200_000, headers=AUTH)
    assert answer.status_code == 413


async def test_a_128_character_id_is_accepted(client):
    answer = await client.post("/tasks", json={"task_id": "x" * 128}, headers=AUTH)
    assert answer.status_code == 202


async def test_get_task_shows_record_and_history(client):
    await client.post("/tasks", json={"task_id": "t-1"}, headers=AUTH)
    answer = await client.get("/tasks/t-1", headers=AUTH)
    assert answer.status_code == 200
    assert [entry["kind"] for entry in answer.json()["history"]] == ["tracked"]
    assert (await client.get("/tasks/nope", headers=AUTH)).status_code == 404


async def test_healthz(client):
    answer = await client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"redis": True, "poller": True}


@pytest.mark.parametrize(
    "token", [b"Bearer \xff\xfe", b"Bearer \xc3", b"Bearer caf\xc3\xa9", b"Bearer " + b"\xe9" * 20]
)
async def test_a_token_with_bytes_that_are_not_ascii_is_401_not_a_server_error(client, token):
    headers = {"Authorization": token}  # raw bytes on the wire, as a broken client sends them
    answer = await client.post("/tasks", json={"task_id": "t-1"}, headers=headers)
    assert answer.status_code == 401
    assert "bearer token" in answer.json()["error"]
    answer = await client.get("/tasks/t-1", headers=headers)
    assert answer.status_code == 401
    assert "bearer token" in answer.json()["error"]


async def test_a_token_that_is_not_ascii_matches_its_utf8_bytes(store):
    async def health() -> dict[str, bool]:
        return {}

    app = make_web_app(store, intake_token=SecretStr("clé-secrète"), health=health)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as http:
        sent = {"Authorization": "Bearer clé-secrète".encode()}
        assert (await http.post("/tasks", json={"task_id": "t-1"}, headers=sent)).status_code == 202
        latin1 = {"Authorization": "Bearer clé-secrète".encode("latin-1")}
        assert (await http.get("/tasks/t-1", headers=latin1)).status_code == 401


def test_the_track_command_refuses_a_channel_name(tmp_path):
    """`ivh-approvals track` checks the request as POST /tasks does, before reaching Redis."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "bot.cli", "track", "t-1", "--channel", "#approvals"],
        cwd=tmp_path,  # no .env here
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "channel: expected a channel id such as C0123ABCD, not the name #approvals" in (
        run.stderr
    )
