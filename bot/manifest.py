"""The Slack app manifest: exactly the scopes, command and interactivity the code uses."""

from __future__ import annotations

from typing import Any

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


def manifest(*, request_url: str | None = None, name: str = "IVH Approvals") -> dict[str, Any]:
    """Socket Mode when `request_url` is None, else HTTP mode with one Request URL."""
    socket = request_url is None
    command: dict[str, Any] = {
        "command": "/ivh",
        "description": "Track IVH customization tasks and see where they stand",
        "usage_hint": "track <TaskId> [#channel] [title] | status <TaskId> | help",
        "should_escape": True,
    }
    interactivity: dict[str, Any] = {"is_enabled": True}
    # Tells the bot when APPROVER_GROUP's members change, so its cache never lags.
    events: dict[str, Any] = {"bot_events": ["subteam_members_changed"]}
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
