"""Reading fields of Slack payloads that may be missing or malformed."""

from __future__ import annotations

import re
from typing import Any

_USER = re.compile(r"[UW][A-Z0-9]{2,30}")


def user_of(container: Any, key: str = "user") -> str | None:
    """The acting user's id from `body["user"]["id"]` (or a plain `user_id` field)."""
    if not isinstance(container, dict):
        return None
    value = container.get(key)
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and _USER.fullmatch(value) else None


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else ""
