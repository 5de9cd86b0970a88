"""The Slack app manifest: exactly the scopes, command and interactivity the code uses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

# chat:write — post and rebuild task messages, thread replies, ephemeral answers;
# files:write — upload demo videos into threads; commands — /ivh;
# usergroups:read — members of APPROVER_GROUP; channels:history, groups:history — after a
# crash, find a task message that was posted and not recorded (public, private channels).
BOT_SCOPES = [
    "channels:history",
    "chat:write",
    "commands",
    "files:write",
    "groups:history",
    "usergroups:read",
]


def check_request_url(url: str) -> str:
    """The HTTP-mode Request URL, or ValueError saying in one line why Slack would refuse it."""
    example = "such as https://your.host/slack/events"
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise ValueError(f"expected a URL {example}, got {url!r} (spaces or control characters)")
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"expected an absolute https:// URL {example}, got {url!r}")
    if parts.scheme.lower() != "https":
        raise ValueError(f"Slack requires an https:// Request URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        raise ValueError(f"the URL's port is not a number from 1 to 65535: {url!r}") from None
    if not parts.hostname or parts.port == 0:
        raise ValueError(f"expected an https:// URL with a host {example}, got {url!r}")
    return url


def manifest(*, request_url: str | None = None, name: str = "IVH Approvals") -> dict[str, Any]:
    """Socket Mode when `request_url` is None, else HTTP mode with one Request URL."""
    socket = request_url is None
    command: dict[str, Any] = {
        "command": "/ivh",
        "description": "Track IVH customization tasks and see where they stand",
        "usage_hint": "track <TaskId> [#channel] [title] | status <TaskId> | pending"
        " | history <TaskId> | stats [days] | help",
        "should_escape": True,
    }
    interactivity: dict[str, Any] = {"is_enabled": True}
    # subteam_members_changed: APPROVER_GROUP's members changed, so its cache never lags;
    # app_home_opened: someone opened the Home tab, which is published for them then.
    events: dict[str, Any] = {"bot_events": ["app_home_opened", "subteam_members_changed"]}
    if not socket:
        command["url"] = request_url
        interactivity["request_url"] = request_url
        events["request_url"] = request_url
    return {
        "display_information": {
            "name": name,
            "description": "Approve or reject Tencent IVH avatar and voice demos in Slack",
        },
        "features": {
            # The Home tab holds the approver's queue (views.publish, no scope needed). The
            # requester's direct messages show in the Messages tab; nobody needs to write to
            # the bot there, so the tab is read-only.
            "app_home": {
                "home_tab_enabled": True,
                "messages_tab_enabled": True,
                "messages_tab_read_only_enabled": True,
            },
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [command],
        },
        "oauth_config": {"scopes": {"bot": BOT_SCOPES}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": socket,
            "token_rotation_enabled": False,
        },
    }
