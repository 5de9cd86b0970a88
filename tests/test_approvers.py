"""Who may decide: the approver list and the approver group's cached members."""

from slack_sdk.web.async_client import AsyncWebClient

from bot.approvers import CACHE_SECONDS, STALE_SECONDS, Approvers
from bot.slack import make_client


async def test_a_group_change_event_refreshes_the_approver_cache(fake):
    fake.groups["S0LEADS"] = ["U0OLD"]
    approvers = Approvers([], "S0LEADS", make_client("xoxb-test-token", fake.api_url), ttl=3600)
    assert await approvers.allows("U0OLD") and not await approvers.allows("U0NEW")
    fake.groups["S0LEADS"] = ["U0NEW"]
    assert await approvers.allows("U0OLD")  # cached
    approvers.forget("S0LEADS")
    assert await approvers.allows("U0NEW") and not await approvers.allows("U0OLD")
    assert len(fake.calls_to("usergroups.users.list")) == 2


async def test_anyone_when_nothing_is_set_and_only_listed_users_otherwise(fake):
    client = make_client("xoxb-test-token", fake.api_url)
    assert await Approvers([], None, client).allows("U0ANYONE")
    listed = Approvers(["U0BOSS"], None, client)
    assert await listed.allows("U0BOSS") and not await listed.allows("U0ANYONE")
    assert fake.calls_to("usergroups.users.list") == []


async def test_an_unreadable_group_refuses_rather_than_lets_everyone_in(fake):
    approvers = Approvers([], "S0MISSING", make_client("xoxb-test-token", fake.api_url))
    assert not await approvers.allows("U0ANYONE")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_while_slack_fails_the_last_list_serves_five_minutes_then_nobody(fake, caplog):
    fake.groups["S0LEADS"] = ["U0LEAD"]
    clock = Clock()
    client = make_client("xoxb-test-token", fake.api_url)
    approvers = Approvers([], "S0LEADS", client, clock=clock)
    assert await approvers.allows("U0LEAD")
    fake.fail("usergroups.users.list", error="ratelimited", count=100)
    clock.now += STALE_SECONDS - 1  # well past the minute of caching, within the bound
    assert await approvers.allows("U0LEAD")
    assert "using its members as read 299 s ago (for up to 300 s)" in caplog.text
    clock.now += 1
    assert not await approvers.allows("U0LEAD")
    assert "nobody may decide as its member until Slack answers" in caplog.text
    assert len(fake.calls_to("usergroups.users.list")) == 3  # read again each time, not cached


async def test_slack_unreachable_counts_as_failing(fake, caplog):
    fake.groups["S0LEADS"] = ["U0LEAD"]
    clock = Clock()
    # The bot's client retries a refused connection a few times first: not needed here.
    client = AsyncWebClient(token="xoxb-test-token", base_url=fake.api_url, retry_handlers=[])
    approvers = Approvers([], "S0LEADS", client, clock=clock)
    assert await approvers.allows("U0LEAD")
    await fake.close()  # nothing listens there any more
    clock.now += CACHE_SECONDS
    assert await approvers.allows("U0LEAD")
    clock.now += STALE_SECONDS
    assert not await approvers.allows("U0LEAD")
    assert "cannot read approver group S0LEADS (ClientConnectorError)" in caplog.text


async def test_a_stale_list_is_not_used_after_slack_said_the_group_changed(fake):
    fake.groups["S0LEADS"] = ["U0LEAD"]
    approvers = Approvers([], "S0LEADS", make_client("xoxb-test-token", fake.api_url))
    assert await approvers.allows("U0LEAD")
    approvers.forget("S0LEADS")
    fake.fail("usergroups.users.list", error="internal_error")
    assert not await approvers.allows("U0LEAD")
