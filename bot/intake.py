"""Tracking a task: the one function behind POST /tasks, `ivh-approvals track` and `/ivh track`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot import model
from bot.model import TaskRecord, check_channel, check_task_id

if TYPE_CHECKING:  # the store is passed in; settings validate channels without loading Redis
    from bot.store import Store


class TrackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    task_id: str = Field(strict=True)
    channel: str | None = None
    title: str | None = Field(default=None, max_length=200)
    requester: str | None = None  # a Slack user id: told of the task's progress by DM

    @field_validator("requester")
    @classmethod
    def _requester(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"[UW][A-Z0-9]{2,30}", value):
            raise ValueError("expected a Slack user id such as U012ABCDEF")
        return value

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
    """Track a task idempotently; returns its record and whether polling (re)started. A
    `requester` named in the request is who tracked it (told by DM, kept from approving it
    with PREVENT_SELF_APPROVAL), rather than the channel it came through (`tracked_by`)."""
    return await store.track(
        request.task_id,
        channel=request.channel,
        title=request.title,
        tracked_by=request.requester or tracked_by,
    )


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad field of a tracking request, for HTTP answers and the CLI."""
    return model.describe_errors(error, whole="body")
