"""The fake Slack Web API, driven through the real slack_sdk AsyncWebClient."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fake_slack import FakeSlack, fake_slack


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with fake_slack() as server:
        yield server


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token="xoxb-test-token", base_url=fake.api_url)


async def test_post_reply_and_update_land_where_slack_would_put_them(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    channel = fake.add_channel("approvals")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Demo ready*"}}]
    parent = await client.chat_postMessage(channel="#approvals", text="Demo ready", blocks=blocks)
    assert parent["channel"] == channel
    reply = await client.chat_postMessage(
        channel=channel, thread_ts=parent["ts"], text="video", reply_broadcast=True
    )
    assert float(reply["ts"]) > float(parent["ts"])
    await client.chat_update(channel=channel, ts=parent["ts"], text="Approved", blocks=[])

    message = fake.message(channel, parent["ts"])
    assert (message.text, message.blocks, message.updates) == ("Approved", [], 1)
    assert message.history[0]["blocks"] == blocks
    [threaded] = fake.thread(channel, parent["ts"])
    assert (threaded.ts, threaded.text, threaded.reply_broadcast) == (reply["ts"], "video", True)

    with pytest.raises(SlackApiError) as raised:
        await client.chat_update(channel=channel, ts="1.000001", text="nope")
    assert raised.value.response["error"] == "message_not_found"
    assert fake.calls_to("chat.update")[-1].error == "message_not_found"
    assert fake.calls_to("chat.postMessage")[0].args["blocks"] == blocks


async def test_wrong_token_and_unknown_method_are_refused(fake: FakeSlack) -> None:
    intruder = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url)
    with pytest.raises(SlackApiError, match="invalid_auth"):
        await intruder.auth_test()
    with pytest.raises(SlackApiError, match="not_authed"):
        await AsyncWebClient(base_url=fake.api_url).auth_test()
    with pytest.raises(SlackApiError, match="unknown_method"):
        await intruder.api_call("chat.fly")


async def test_files_upload_v2_puts_the_video_in_the_thread(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    parent = await client.chat_postMessage(channel="C1", text="Demo ready")
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    await client.files_upload_v2(
        content=video,
        filename="demo.mp4",
        channel="C1",
        thread_ts=parent["ts"],
        initial_comment="Demo video",
    )

    [share] = fake.thread("C1", parent["ts"])
    [file] = share.files
    assert (file["name"], file["size"], share.text) == ("demo.mp4", len(video), "Demo video")
    assert fake.uploads[file["id"]] == video
    steps = [c.method for c in fake.calls[1:]]
    assert steps == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


async def test_upload_of_the_wrong_length_is_refused(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    announced = await client.files_getUploadURLExternal(filename="demo.mp4", length=10)
    async with aiohttp.ClientSession() as http:
        response = await http.post(announced["upload_url"], data=b"short")
        assert (response.status, await response.text()) == (400, "length mismatch")
    with pytest.raises(SlackApiError, match="invalid_arguments"):
        await client.files_completeUploadExternal(files=[{"id": announced["file_id"]}])


async def test_rate_limited_post_is_retried_once_and_posted_once(fake: FakeSlack) -> None:
    client = AsyncWebClient(
        token="xoxb-test-token",
        base_url=fake.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
    fake.fail("chat.postMessage", status=429, retry_after=1)

    posted = await client.chat_postMessage(channel="C1", text="Demo ready")

    calls = fake.calls_to("chat.postMessage")
    assert [c.fault for c in calls] == ["http_429", None]
    assert calls[0].args == calls[1].args
    assert list(fake.messages) == [("C1", posted["ts"])]


async def test_injected_errors_and_held_calls(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.fail("views.open", error="expired_trigger_id")
    with pytest.raises(SlackApiError, match="expired_trigger_id"):
        await client.views_open(trigger_id="t1", view={"type": "modal"})
    fake.fail("auth.test", status=503)
    with pytest.raises(SlackApiError) as raised:
        await client.auth_test()
    assert raised.value.response.status_code == 503

    fake.hold("chat.postMessage")
    pending = asyncio.create_task(client.chat_postMessage(channel="C1", text="held"))
    await fake.wait_for("chat.postMessage")
    assert not fake.messages
    fake.release("chat.postMessage")
    await pending
    assert len(fake.messages) == 1


async def test_approver_group_members_come_from_the_configured_group(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    fake.groups["S123"] = ["U1", "U2"]
    answer = await client.usergroups_users_list(usergroup="S123")
    assert answer["users"] == ["U1", "U2"]
    with pytest.raises(SlackApiError, match="no_such_subteam"):
        await client.usergroups_users_list(usergroup="S999")
    fake.users["U1"] = {"name": "alice", "real_name": "Alice Approver"}
    user = await client.users_info(user="U1")
    assert user["user"]["real_name"] == "Alice Approver"
