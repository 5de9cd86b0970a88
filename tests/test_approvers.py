"""Who may decide: the approver list and the approver group's cached members."""

from bot.approvers import Approvers
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
