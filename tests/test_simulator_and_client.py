"""The IVH simulator on loopback, driven by our real IvhClient and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from bot.ivh import IvhClient, IvhError, RetryPolicy, sign, signed_params
from bot.sim import RunningSimulator, Simulator, start
from bot.sim.server import API_PATH
from bot.transport import AiohttpTransport
from tests.conftest import wait_for

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)
SHORT = httpx.Timeout(0.5)
VECTORS = [
    (
        "e38267c0e86411ebb02aed82acb0ed99",
        "f68f2d10ae9e4604b76fb05cf46bccec",
        1646636485,
        "BfWuaC9kmaicCggXc693uK+sZQ8qe88O4HVQNTdwZuo=",
        "BfWuaC9kmaicCggXc693uK%2BsZQ8qe88O4HVQNTdwZuo%3D",
    ),
    (
        "example_appkey",
        "example_accesstoken",
        1717639699,
        "aCNWYzZdplxWVo+JsqzZc9+J9XrwWWITfX3eQpsLVno=",
        "aCNWYzZdplxWVo%2BJsqzZc9%2BJ9XrwWWITfX3eQpsLVno%3D",
    ),
]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await start(Simulator(audit_seconds=0, train_seconds=0, deliver_seconds=0))
    yield running
    await running.close()


def loopback() -> httpx.AsyncBaseTransport:
    """The transport the product sends through, as a separate object tests can wrap."""
    return AiohttpTransport()


def client_for(
    running: RunningSimulator, access_token: str | None = None, **options: Any
) -> IvhClient:
    """Our real client, pointed at the simulator, with fast retries and short timeouts."""
    token = access_token or running.sim.access_token
    options = {"retry": FAST, "timeout": SHORT, "transport": loopback(), **options}
    return IvhClient(running.url, running.sim.appkey, token, **options)


@pytest.fixture
async def ivh(sim: RunningSimulator) -> AsyncIterator[IvhClient]:
    async with client_for(sim) as client:
        yield client


class RecordingTransport(httpx.AsyncBaseTransport):
    """The real network, with every request kept for inspection."""

    def __init__(self) -> None:
        self.inner = loopback()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def admin(
    running: RunningSimulator, method: str, path: str, body: object = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.url, verify=False) as http:
        return await http.request(method, path, json=body)


async def inject(running: RunningSimulator, **fault: Any) -> None:
    response = await admin(running, "POST", "/_sim/faults", fault)
    assert response.status_code == 201, response.text


async def raw_call(
    running: RunningSimulator,
    action: str,
    body: object,
    params: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """POST as-is; returns (HTTP status, Header, raw text)."""
    simulator = running.sim
    if params is None:
        params = signed_params(simulator.appkey, simulator.access_token, int(time.time()))
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient(verify=False) as http:
        response = await http.post(
            running.url + API_PATH + action,
            params=params,
            content=content,
            headers={"Content-Type": "application/json;charset=utf-8"},
        )
    return response.status_code, response.json()["Header"], response.text


def seen(running: RunningSimulator, action: str) -> list[dict[str, Any]]:
    return [entry for entry in running.sim.requests if entry["action"] == action]


def waiting_task(running: RunningSimulator) -> str:
    """A task already at CONFIRM / WAIT_PROCESS on its next read (zero durations)."""
    return running.sim.create_task().task_id


# --- signing and authentication ------------------------------------------------------------


@pytest.mark.parametrize(("appkey", "token", "timestamp", "signature", "encoded"), VECTORS)
def test_signer_matches_the_published_vectors(
    appkey: str, token: str, timestamp: int, signature: str, encoded: str
) -> None:
    assert sign(appkey, token, timestamp) == signature


@pytest.mark.parametrize(("appkey", "token", "timestamp", "signature", "encoded"), VECTORS)
async def test_published_vector_is_accepted_and_url_encoded_on_the_wire(
    appkey: str, token: str, timestamp: int, signature: str, encoded: str
) -> None:
    simulator = Simulator(
        appkey, token, audit_seconds=0, train_seconds=0, clock=lambda: float(timestamp)
    )
    simulator.create_task("1212_29934_w")
    running = await start(simulator)
    transport = RecordingTransport()
    try:
        async with IvhClient(
            running.url, appkey, token, transport=transport, clock=lambda: float(timestamp)
        ) as client:
            progress = await client.get_progress("1212_29934_w")
        assert progress.waiting_for_confirmation
        query = transport.sent[0].url.query.decode()
        assert f"signature={encoded}" in query.split("&")
        assert f"timestamp={timestamp}" in query.split("&")

        # The same signature sent unencoded: its "+" arrives as a space and is refused.
        unencoded = f"appkey={appkey}&timestamp={timestamp}&signature={signature}"
        async with httpx.AsyncClient(verify=False) as http:
            response = await http.post(
                f"{running.url}{API_PATH}getprogress?{unencoded}",
                json={"Header": {}, "Payload": {"TaskId": "1212_29934_w"}},
            )
        assert response.json()["Header"]["Code"] == 100005
    finally:
        await running.close()


def _params(running: RunningSimulator, **changes: str | None) -> dict[str, str]:
    simulator = running.sim
    params = signed_params(simulator.appkey, simulator.access_token, int(time.time()))
    for name, value in changes.items():
        if value is None:
            del params[name]
        else:
            params[name] = value
    return params


def _stale(running: RunningSimulator) -> dict[str, str]:
    return signed_params(running.sim.appkey, running.sim.access_token, int(time.time()) - 301)


@pytest.mark.parametrize(
    ("make_params", "code", "words"),
    [
        (lambda r: _params(r, appkey=None), 100001, "required"),
        (lambda r: _params(r, timestamp=None), 100001, "required"),
        (lambda r: _params(r, signature=None), 100001, "required"),
        (lambda r: _params(r, timestamp="yesterday"), 100001, "Unix seconds"),
        (lambda r: _params(r, appkey="someone-else"), 100005, "appkey"),
        (lambda r: _params(r, signature=sign(r.sim.appkey, "x", int(time.time()))), 100005, "sig"),
        (_stale, 100005, "timestamp expired"),
    ],
    ids=[
        "no-appkey",
        "no-timestamp",
        "no-signature",
        "bad-timestamp",
        "wrong-appkey",
        "bad-signature",
        "stale",
    ],
)
async def test_query_parameters_are_checked_like_the_real_gateway(
    sim: RunningSimulator, make_params: Any, code: int, words: str
) -> None:
    task_id = waiting_task(sim)
    body = {"Header": {"RequestID": "mine-1"}, "Payload": {"TaskId": task_id}}
    status, header, _ = await raw_call(sim, "getprogress", body, make_params(sim))
    assert status == 200
    assert header["Code"] == code
    assert words in header["Message"]
    assert header["RequestID"] == "mine-1"


async def test_wrong_access_token_is_unauthorized_and_not_retried(sim: RunningSimulator) -> None:
    task_id = waiting_task(sim)
    async with client_for(sim, access_token="not-the-token") as client:
        with pytest.raises(IvhError) as caught:
            await client.get_progress(task_id)
    assert caught.value.code == 100005 and not caught.value.transient
    assert "IVH_ACCESS_TOKEN" in caught.value.message
    assert len(seen(sim, "getprogress")) == 1


async def test_clock_skew_is_unauthorized_with_an_expired_timestamp(sim: RunningSimulator) -> None:
    task_id = waiting_task(sim)
    async with client_for(sim, clock=lambda: time.time() - 400) as client:
        with pytest.raises(IvhError) as caught:
            await client.get_progress(task_id)
    assert caught.value.code == 100005
    assert "timestamp expired" in caught.value.message
    assert caught.value.request_id == sim.sim.requests[-1]["request_id"]


# --- the request body ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"TaskId=1", 100001),
        ({"Payload": {"TaskId": "x"}}, 100001),
        ({"Header": {}}, 100001),
        ({"Header": {}, "Payload": ["x"]}, 100001),
        ({"Header": {}, "Payload": {}}, 100003),
        ({"Header": {}, "Payload": {"TaskId": 29934}}, 100003),
        ({"Header": {}, "Payload": {"TaskId": "1212_00000_x"}}, 110006),
    ],
    ids=["not-json", "no-header", "no-payload", "payload-list", "no-task", "int-task", "unknown"],
)
async def test_body_is_checked_and_answered_in_an_envelope(
    sim: RunningSimulator, body: object, code: int
) -> None:
    status, header, _ = await raw_call(sim, "getprogress", body)
    assert status == 200
    assert header["Code"] == code
    assert header["Message"]
    assert header["RequestID"].startswith("sim-")  # none given: the simulator made one


async def test_request_id_is_echoed(sim: RunningSimulator) -> None:
    body = {"Header": {"RequestID": "ours-42"}, "Payload": {"TaskId": waiting_task(sim)}}
    _, header, _ = await raw_call(sim, "getprogress", body)
    assert header == {"Code": 0, "Message": "", "RequestID": "ours-42"}


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"Operate": "MAYBE"}, 100002),
        ({"Operate": "REJECT"}, 100002),
        ({"Operate": "REJECT", "Reason": "   "}, 100002),
        ({"Operate": "REJECT", "Reason": "x" * 301}, 100002),
        ({"Operate": "REJECT", "Reason": "x" * 300}, 0),
        ({"Operate": "AGREE"}, 0),
    ],
    ids=["bad-operate", "no-reason", "blank-reason", "long-reason", "300-chars", "agree"],
)
async def test_confirmation_values_are_checked(
    sim: RunningSimulator, payload: dict[str, str], code: int
) -> None:
    body = {"Header": {}, "Payload": {"TaskId": waiting_task(sim), **payload}}
    _, header, text = await raw_call(sim, "customerconfirm", body)
    assert header["Code"] == code
    if code == 0:
        assert header["Message"] == "ok" and json.loads(text)["Payload"] == {}


# --- result codes through our client -------------------------------------------------------


@pytest.mark.parametrize("code", [100000, 100012, -1])
async def test_transient_codes_are_retried_then_succeed(
    sim: RunningSimulator, ivh: IvhClient, code: int
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="getprogress", kind="code", code=code, message="busy")
    progress = await ivh.get_progress(task_id)
    assert progress.waiting_for_confirmation
    assert [entry["code"] for entry in seen(sim, "getprogress")] == [code, 0]


@pytest.mark.parametrize("code", [100001, 100003, 100002, 100005, 100008, 424242])
async def test_other_codes_are_reported_once_with_message_and_request_id(
    sim: RunningSimulator, ivh: IvhClient, code: int
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="getprogress", kind="code", code=code, message="nope")
    with pytest.raises(IvhError) as caught:
        await ivh.get_progress(task_id)
    error = caught.value
    assert error.code == code and not error.transient
    assert "nope" in error.message
    [request] = seen(sim, "getprogress")
    assert error.request_id == request["request_id"]


async def test_unknown_task_is_not_found_and_not_retried(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    with pytest.raises(IvhError) as caught:
        await ivh.get_progress("1212_00000_x")
    assert caught.value.not_found and not caught.value.transient
    assert "record does not exist" in caught.value.message
    assert len(seen(sim, "getprogress")) == 1


async def test_a_negative_code_is_given_up_after_the_attempts(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="getprogress", kind="code", code=-3, message="gw", count=5)
    with pytest.raises(IvhError) as caught:
        await ivh.get_progress(task_id)
    assert caught.value.code == -3 and caught.value.transient
    assert len(seen(sim, "getprogress")) == 3


# --- broken answers ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http500", "html", "garbage", "timeout"])
async def test_progress_is_retried_after_a_broken_answer(
    sim: RunningSimulator, ivh: IvhClient, kind: str
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="getprogress", task_id=task_id, kind=kind, seconds=5)
    progress = await ivh.get_progress(task_id)
    assert progress.train_records == 1
    first, second = seen(sim, "getprogress")
    assert first["http_status"] == (500 if kind == "http500" else 200)
    assert second["code"] == 0


@pytest.mark.parametrize("kind", ["http500", "garbage"])
async def test_progress_gives_up_with_a_transient_error_carrying_the_request_id(
    sim: RunningSimulator, ivh: IvhClient, kind: str
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="*", kind=kind, count=3)
    with pytest.raises(IvhError) as caught:
        await ivh.get_progress(task_id)
    assert caught.value.transient and caught.value.code is None
    requests = seen(sim, "getprogress")
    assert len(requests) == 3
    assert caught.value.request_id == requests[-1]["request_id"]


@pytest.mark.parametrize(("kind", "code"), [("http500", None), ("code", 100000)])
async def test_a_confirmation_is_never_retried(
    sim: RunningSimulator, ivh: IvhClient, kind: str, code: int | None
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="customerconfirm", kind=kind, code=100000)
    with pytest.raises(IvhError) as caught:
        await ivh.customer_confirm(task_id, "AGREE")
    assert caught.value.code == code
    assert caught.value.outcome_unknown is (code is None)
    assert len(seen(sim, "customerconfirm")) == 1
    assert (await ivh.get_progress(task_id)).waiting_for_confirmation  # not applied


async def test_a_confirmation_that_times_out_is_unknown_but_took_effect(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="customerconfirm", kind="timeout", seconds=5)
    with pytest.raises(IvhError) as caught:
        await ivh.customer_confirm(task_id, "REJECT", "too stiff")
    assert caught.value.outcome_unknown
    assert len(seen(sim, "customerconfirm")) == 1
    progress = await ivh.get_progress(task_id)  # re-read instead of sending it again
    assert progress.train_records == 2


async def test_a_lost_confirmation_leaves_the_task_waiting(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="customerconfirm", kind="timeout", seconds=5, apply=False)
    with pytest.raises(IvhError) as caught:
        await ivh.customer_confirm(task_id, "AGREE")
    assert caught.value.outcome_unknown
    progress = await ivh.get_progress(task_id)
    assert progress.waiting_for_confirmation and progress.train_records == 1


async def test_a_confirmation_that_cannot_connect_is_known_not_sent() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with IvhClient(f"http://127.0.0.1:{port}", "key", "token", timeout=SHORT) as client:
        with pytest.raises(IvhError) as caught:
            await client.customer_confirm("t1", "AGREE")
    assert caught.value.transient and not caught.value.outcome_unknown
    assert "cannot reach IVH" in caught.value.message


async def test_a_confirmation_whose_connection_drops_unanswered_is_unknown() -> None:
    arrived = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the whole request head: it was sent
        arrived.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with IvhClient(f"http://127.0.0.1:{port}", "k", "t", timeout=SHORT) as client:
            with pytest.raises(IvhError) as caught:
                await client.customer_confirm("t1", "AGREE")
    finally:
        server.close()
        await server.wait_closed()
    assert arrived.is_set()
    assert caught.value.transient and caught.value.outcome_unknown


async def test_a_held_confirmation_applies_at_once_and_answers_on_release(
    sim: RunningSimulator,
) -> None:
    task_id = waiting_task(sim)
    await inject(sim, action="customerconfirm", kind="hold")
    async with client_for(sim, timeout=httpx.Timeout(5)) as client:
        sending = asyncio.create_task(client.customer_confirm(task_id, "AGREE"))

        async def arrived() -> bool:
            return bool(seen(sim, "customerconfirm"))

        await wait_for(arrived)
        assert sim.sim.progress(task_id)["Status"] == "SUCCESS"
        assert not sending.done()
        assert (await admin(sim, "POST", "/_sim/release")).json() == {"released": 1}
        request_id = await sending
    assert request_id == seen(sim, "customerconfirm")[0]["request_id"]


async def test_cleared_faults_are_not_served(sim: RunningSimulator, ivh: IvhClient) -> None:
    task_id = waiting_task(sim)
    await inject(sim, kind="http500", count=10)
    assert (await admin(sim, "DELETE", "/_sim/faults")).status_code == 200
    await ivh.get_progress(task_id)
    assert len(sim.sim.requests) == 1


# --- the task life cycle -------------------------------------------------------------------


async def test_reject_with_reason_starts_round_two_and_agree_delivers(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = sim.sim.create_task(audit_seconds=600, train_seconds=600, deliver_seconds=600).task_id

    progress = await ivh.get_progress(task_id)
    assert (progress.status, progress.stage, progress.stage_status) == (
        "MAKING",
        "AUDIT",
        "PROCESSING",
    )
    assert progress.confirm is None and progress.train_records is None
    assert (await admin(sim, "POST", f"/_sim/tasks/{task_id}/advance")).json()["StageV2"] == "TRAIN"
    assert (await ivh.get_progress(task_id)).stage == "TRAIN"
    sim.sim.advance(task_id)

    first = await ivh.get_progress(task_id)
    assert first.waiting_for_confirmation and first.train_records == 1
    assert first.demo_urls == [f"{sim.url}/media/{task_id}/1/1.mp4"]
    async with httpx.AsyncClient(verify=False) as http:
        video = await http.get(first.demo_urls[0])
    assert video.status_code == 200
    assert video.headers["Content-Type"] == "video/mp4"
    assert int(video.headers["Content-Length"]) == len(video.content) > 1000
    assert video.content[4:8] == b"ftyp"

    reason = "口型和声音对不上\uff0c请重新训练 — ça ne va pas"  # a real full-width comma
    await ivh.customer_confirm(task_id, "REJECT", reason)
    assert seen(sim, "customerconfirm")[0]["reason"] == reason
    assert (await admin(sim, "GET", "/_sim/requests")).json()[-1]["reason"] == reason
    training = await ivh.get_progress(task_id)
    assert (training.stage, training.stage_status, training.confirm) == (
        "TRAIN",
        "PROCESSING",
        None,
    )
    sim.sim.advance(task_id)

    second = await ivh.get_progress(task_id)
    assert second.waiting_for_confirmation and second.train_records == 2
    assert second.demo_urls and set(second.demo_urls).isdisjoint(first.demo_urls)
    assert second.confirm is not None
    assert [entry.record for entry in second.confirm.train_record] == [
        first.demo_urls,
        second.demo_urls,
    ]
    assert second.confirm.reject_reason == ""

    await ivh.customer_confirm(task_id, "AGREE")
    delivering = await ivh.get_progress(task_id)
    assert (delivering.stage, delivering.stage_status) == ("CONFIRM", "PROCESSING")
    assert not delivering.waiting_for_confirmation and delivering.train_records == 2
    sim.sim.advance(task_id)
    done = await ivh.get_progress(task_id)
    assert (done.status, done.stage, done.stage_status) == ("SUCCESS", "END", "SUCCESS")
    assert done.assets == [{"AssetType": "IMAGE", "AssetId": f"sim-image-{task_id}"}]
    state = (await admin(sim, "GET", f"/_sim/tasks/{task_id}")).json()
    assert state["round"] == 2
    assert [(d["round"], d["operate"], d["reason"]) for d in state["decisions"]] == [
        (1, "REJECT", reason),
        (2, "AGREE", ""),
    ]


def test_phases_end_lazily_on_the_simulator_clock() -> None:
    now = [1698850800.0]  # 2023-11-01 15:00:00 UTC
    simulator = Simulator(audit_seconds=17, train_seconds=60, clock=lambda: now[0])
    simulator.create_task("1212_29934_w", demos=2)
    base = "http://sim.test"
    assert simulator.progress("1212_29934_w", base)["StageV2"] == "AUDIT"
    now[0] += 16.9
    assert simulator.progress("1212_29934_w", base)["StageInfo"] == ""
    now[0] += 1000  # read long after: training still started when the audit ended
    payload = simulator.progress("1212_29934_w", base)
    assert (payload["Status"], payload["StageV2"], payload["StatusV2"]) == (
        "MAKING",
        "CONFIRM",
        "WAIT_PROCESS",
    )
    urls = [f"{base}/media/1212_29934_w/1/1.mp4", f"{base}/media/1212_29934_w/1/2.mp4"]
    assert json.loads(payload["StageInfo"]) == {
        "TrainResult": urls,
        "RejectReason": "",
        "TrainRecord": [{"StartTime": "2023-11-01 23:00:17", "Record": urls}],
    }
    assert payload["FailMessage"] == "" and payload["AssetList"] == []


@pytest.mark.parametrize("stage", ["AUDIT", "TRAIN"])
async def test_a_failing_task_ends_with_its_message(
    sim: RunningSimulator, ivh: IvhClient, stage: str
) -> None:
    task_id = sim.sim.create_task(fail_at=stage, fail_message="源视频不合格").task_id
    progress = await ivh.get_progress(task_id)
    assert (progress.status, progress.stage, progress.stage_status) == ("FAIL", stage, "FAIL")
    assert progress.fail_message == "源视频不合格"
    assert progress.assets == [] and progress.demo_urls == []


async def test_photo_customization_ends_without_confirmation(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = sim.sim.create_task(kind="IMAGE_PHOTO", audit_seconds=60, train_seconds=60).task_id
    stages = [(await ivh.get_progress(task_id)).stage]
    for _ in range(2):
        sim.sim.advance(task_id)
        stages.append((await ivh.get_progress(task_id)).stage)
    assert stages == ["AUDIT", "TRAIN", "END"]
    done = await ivh.get_progress(task_id)
    assert done.status == "SUCCESS" and done.assets[0]["AssetType"] == "IMAGE_PHOTO"
    async with httpx.AsyncClient(verify=False) as http:
        assert (await http.get(f"{sim.url}/media/{task_id}/1/1.mp4")).status_code == 404


async def test_confirming_a_task_that_is_not_waiting_is_refused(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    auditing = sim.sim.create_task(audit_seconds=600).task_id
    with pytest.raises(IvhError) as caught:
        await ivh.customer_confirm(auditing, "AGREE")
    assert caught.value.code == 100002 and not caught.value.transient
    assert "not waiting for confirmation" in caught.value.message

    decided_in_console = waiting_task(sim)
    response = await admin(
        sim, "POST", f"/_sim/tasks/{decided_in_console}/confirm", {"operate": "AGREE"}
    )
    assert response.status_code == 200
    with pytest.raises(IvhError) as caught:
        await ivh.customer_confirm(decided_in_console, "REJECT", "late")
    assert caught.value.code == 100002
    again = await admin(
        sim, "POST", f"/_sim/tasks/{decided_in_console}/confirm", {"operate": "AGREE"}
    )
    assert again.status_code == 409
    assert again.json()["error"] == "task is not waiting for confirmation"


# --- the admin API and media ---------------------------------------------------------------


async def test_admin_api_creates_shows_and_refuses(sim: RunningSimulator) -> None:
    created = await admin(sim, "POST", "/_sim/tasks", {})
    assert created.status_code == 201
    assert re.fullmatch(r"1212_\d{5}_w", created.json()["task_id"])

    named = await admin(sim, "POST", "/_sim/tasks", {"task_id": "t-1", "audit_seconds": 600})
    assert named.status_code == 201 and named.json()["StageV2"] == "AUDIT"
    assert (await admin(sim, "POST", "/_sim/tasks", {"task_id": "t-1"})).status_code == 409
    for bad in ({"demos": "two"}, {"colour": "red"}, {"fail_at": "CONFIRM"}, {"demos": True}):
        assert (await admin(sim, "POST", "/_sim/tasks", bad)).status_code == 400, bad

    assert (await admin(sim, "GET", "/_sim/tasks/nope")).status_code == 404
    shown = (await admin(sim, "GET", "/_sim/tasks/t-1")).json()
    assert shown["round"] == 1 and shown["decisions"] == []

    waiting = waiting_task(sim)
    assert (await admin(sim, "POST", f"/_sim/tasks/{waiting}/advance")).status_code == 409
    no_reason = await admin(sim, "POST", f"/_sim/tasks/{waiting}/confirm", {"operate": "REJECT"})
    assert no_reason.status_code == 409 and "Reason" in no_reason.json()["error"]

    assert (await admin(sim, "POST", "/_sim/faults", {"kind": "explode"})).status_code == 400
    assert (await admin(sim, "POST", "/_sim/faults", {"count": "1"})).status_code == 400
    assert (await admin(sim, "GET", "/_sim/requests")).json() == []


async def test_requests_are_logged_and_can_be_cleared(
    sim: RunningSimulator, ivh: IvhClient
) -> None:
    task_id = waiting_task(sim)
    await ivh.get_progress(task_id)
    [entry] = (await admin(sim, "GET", "/_sim/requests")).json()
    assert entry["action"] == "getprogress" and entry["task_id"] == task_id
    assert entry["code"] == 0 and entry["http_status"] == 200
    assert entry["request_id"].startswith("ivh-approvals-")
    assert abs(entry["t"] - time.time()) < 60
    assert (await admin(sim, "DELETE", "/_sim/requests")).status_code == 200
    assert sim.sim.requests == []


@pytest.mark.parametrize("path", ["nope/1/1", "{task}/2/1", "{task}/1/2", "{task}/0/1"])
async def test_unknown_demo_media_is_not_found(sim: RunningSimulator, path: str) -> None:
    task_id = waiting_task(sim)
    sim.sim.progress(task_id)
    async with httpx.AsyncClient(verify=False) as http:
        response = await http.get(f"{sim.url}/media/{path.format(task=task_id)}.mp4")
    assert response.status_code == 404


async def test_latency_delays_every_api_answer() -> None:
    running = await start(Simulator(audit_seconds=0, train_seconds=0, latency_ms=80))
    try:
        task_id = waiting_task(running)
        async with client_for(running) as client:
            began = time.monotonic()
            await client.get_progress(task_id)
            assert time.monotonic() - began >= 0.08
    finally:
        await running.close()


@pytest.mark.parametrize(("reading", "listed"), [("current", [1, 2]), ("history", [0, 1])])
async def test_the_simulator_plays_either_reading_of_train_record(reading, listed):
    running = await start(
        Simulator(audit_seconds=0, train_seconds=0, deliver_seconds=0, train_record=reading)
    )
    try:
        async with client_for(running) as client:
            task = running.sim.create_task()
            first = await client.get_progress(task.task_id)
            running.sim.confirm(task.task_id, "REJECT", "again")
            second = await client.get_progress(task.task_id)
    finally:
        await running.close()
    assert [first.train_records, second.train_records] == listed
    assert first.demo_urls != second.demo_urls


async def test_the_simulator_can_sign_demo_links_afresh_on_every_read():
    running = await start(Simulator(audit_seconds=0, train_seconds=0, resign_urls=True))
    try:
        async with client_for(running) as client:
            task = running.sim.create_task()
            reads = [await client.get_progress(task.task_id) for _ in range(2)]
    finally:
        await running.close()
    first, second = (read.demo_urls for read in reads)
    assert first != second
    assert [u.split("?")[0] for u in first] == [u.split("?")[0] for u in second]
