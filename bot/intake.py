"""Tracking a task: the one function behind POST /tasks, `ivh-approvals track` and `/ivh track`."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.store import Store, TaskRecord

TASK_ID_MAX = 128
# A channel is kept by its id (public C…, private G… or C…, direct message D…): Slack's
# history look-up after a crash takes only ids, and a name can be renamed.
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{2,39}")


def is_channel_id(value: str) -> bool:
    return _CHANNEL_ID.fullmatch(value) is not None


def check_channel(value: str) -> str:
    """A Slack channel id; ValueError says what to give instead of a name."""
    if is_channel_id(value):
        return value
    if value.startswith("#"):
        raise ValueError(
            f"expected a channel id such as C0123ABCD, not the name {value} (Slack looks up a"
            " channel's history by id; the channel's details in Slack end with it)"
        )
    raise ValueError("expected a Slack channel id such as C0123ABCD")


def check_task_id(value: str) -> str:
    """Task ids are opaque strings: 1-128 printable characters, no spaces."""
    if not value:
        raise ValueError("task_id must not be empty")
    if len(value) > TASK_ID_MAX:
        raise ValueError(f"task_id must be at most {TASK_ID_MAX} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise ValueError("task_id must be printable characters without spaces")
    return value


class TrackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    task_id: str = Field(strict=True)
    channel: str | None = None
    title: str | None = Field(default=None, max_length=200)

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, value: str) -> str:
        return check_task_id(value)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return check_channel(value)

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = " ".join(value.split())
        if value and not value.isprintable():
            raise ValueError("title must be printable text")
        return value or None


async def track_task(
    store: Store, request: TrackRequest, *, tracked_by: str
) -> tuple[TaskRecord, bool]:
    """Track a task idempotently; returns its record and whether polling (re)started."""
    return await store.track(
        request.task_id, channel=request.channel, title=request.title, tracked_by=tracked_by
    )


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad field, for HTTP answers and the CLI."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)
