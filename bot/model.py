"""The model: tasks, their progress, rounds, decisions and events as plain data, with the limits
that bound them. Pure: pydantic and the standard library only, no I/O, no client library; every
other module builds on it (an import-linter contract in pyproject.toml keeps it so)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- limits --------------------------------------------------------------------------------

REASON_MAX = 300  # a REJECT's reason, as Tencent accepts it
CATEGORY_MAX = 40  # a reject category: it prefixes the reason sent to Tencent
CATEGORIES_MAX = 100  # options in a Slack static_select
TASK_ID_MAX = 128  # our bound on an opaque task id

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


def category_problem(categories: list[str]) -> str | None:
    """Why a list of reject categories cannot be offered in the Reject form, or None."""
    if not categories:
        return "expected at least one category"
    if len(categories) > CATEGORIES_MAX:
        return f"at most {CATEGORIES_MAX} categories (a Slack menu holds no more)"
    if len(set(categories)) != len(categories):
        return "a category is listed twice"
    for category in categories:
        if len(category) > CATEGORY_MAX or not category.isprintable() or "]" in category:
            return (
                f"a category is 1-{CATEGORY_MAX} printable characters without ], got"
                f" {category[:60]!r}"
            )
    return None


def check_task_id(value: str) -> str:
    """Task ids are opaque strings: 1-128 printable characters, no spaces."""
    if not value:
        raise ValueError("task_id must not be empty")
    if len(value) > TASK_ID_MAX:
        raise ValueError(f"task_id must be at most {TASK_ID_MAX} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise ValueError("task_id must be printable characters without spaces")
    return value


def describe_errors(error: ValidationError, whole: str = "") -> str:
    """pydantic's report as one line naming each bad field or setting (`whole` names the
    input itself), never echoing a value: for HTTP answers, the CLI and start-up errors."""
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or whole
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            message = "is required"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        parts.append(f"{name}: {message}" if name else message)
    return "; ".join(parts)


# --- quiet hours ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    """Hours in which reminders wait (QUIET_HOURS, e.g. `20-08`, in REMIND_TZ): from the
    first hour up to, not including, the second; across midnight when it is the smaller."""

    start: int
    end: int
    zone: tzinfo

    @classmethod
    def parse(cls, text: str, zone: str) -> QuietHours:
        found = re.fullmatch(r"\s*(\d{1,2})\s*-\s*(\d{1,2})\s*", text)
        if not found or not all(0 <= int(h) <= 23 for h in found.groups()):
            raise ValueError(f"expected two hours such as 20-08, got {text!r}")
        try:
            where = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r} (e.g. UTC, Asia/Shanghai)") from None
        return cls(int(found[1]), int(found[2]), where)

    def quiet_at(self, at: float) -> bool:
        hour = datetime.fromtimestamp(at, self.zone).hour
        if self.start <= self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def ends_after(self, at: float) -> float:
        """When the quiet hours that `at` falls in end (`at` itself when it is not quiet)."""
        if not self.quiet_at(at):
            return at
        moment = datetime.fromtimestamp(at, self.zone).replace(minute=0, second=0, microsecond=0)
        while self.quiet_at(moment.timestamp()):
            moment += timedelta(hours=1)
        return moment.timestamp()


# --- operations ----------------------------------------------------------------------------

Operate = Literal["AGREE", "REJECT"]


def awaiting_confirmation(status: str, stage: str, stage_status: str) -> bool:
    """The one state in which customerconfirm may be called."""
    return status == "MAKING" and stage == "CONFIRM" and stage_status == "WAIT_PROCESS"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(raw: str | bytes) -> Any:
    """Parse an answer as strict JSON: no NaN or Infinity, no unpaired surrogates, so that
    whatever is kept from it can be stored and compared again."""
    value = json.loads(raw, parse_constant=_refuse_constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: a ValueError
    return value


# --- Tencent's progress, as getprogress answers it ------------------------------------


class TrainRound(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    start_time: str = Field(default="", alias="StartTime")
    record: list[str] = Field(default_factory=list, alias="Record")


class ConfirmContent(BaseModel):
    """StageInfo at CONFIRM: the current demo URLs and every round's record."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    train_result: list[str] = Field(default_factory=list, alias="TrainResult")
    reject_reason: str = Field(default="", alias="RejectReason")
    train_record: list[TrainRound] = Field(default_factory=list, alias="TrainRecord")


class Progress(BaseModel):
    """The getprogress payload, with StageInfo parsed from its JSON string."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    status: str = Field(alias="Status", min_length=1)
    fail_message: str = Field(default="", alias="FailMessage")
    stage: str = Field(default="", alias="StageV2")
    stage_status: str = Field(default="", alias="StatusV2")
    confirm: ConfirmContent | None = Field(default=None, alias="StageInfo")
    assets: list[dict[str, Any]] = Field(default_factory=list, alias="AssetList")

    @field_validator("fail_message", "stage", "stage_status", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator("assets", mode="before")
    @classmethod
    def _no_assets(cls, value: object) -> object:
        return [] if value is None else value

    @field_validator("confirm", mode="before")
    @classmethod
    def _parse_stage_info(cls, value: object) -> object:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            value = strict_json(value)  # a ValueError here makes the response malformed
        if isinstance(value, dict) and "CustomerConfirmContent" in value:
            # The docs' example is the bare object; the field table names it
            # CustomerConfirmContent. Accept both shapes.
            value = value["CustomerConfirmContent"]
        return value

    @property
    def waiting_for_confirmation(self) -> bool:
        return awaiting_confirmation(self.status, self.stage, self.stage_status)

    @property
    def demo_urls(self) -> list[str]:
        return list(self.confirm.train_result) if self.confirm else []

    @property
    def train_records(self) -> int | None:
        """How many rounds TrainRecord lists; None outside CONFIRM, where it is not given.
        Whether it counts the round awaiting confirmation is not documented: see
        `bot.events.round_of`, the one place that reads it."""
        return len(self.confirm.train_record) if self.confirm is not None else None


# --- what the bot keeps of it, and the events it derives ----------------------------------


class EventType(StrEnum):
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    ROUND_CHANGED = "round_changed"
    LEFT_CONFIRMATION = "left_confirmation"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN_TASK = "unknown_task"


class Snapshot(BaseModel):
    """The part of a progress answer the bot acts on; equal snapshots mean nothing changed."""

    model_config = ConfigDict(frozen=True)

    status: str
    stage: str = ""
    stage_status: str = ""
    round: int = 0
    demo_urls: tuple[str, ...] = ()
    train_records: int | None = None  # TrainRecord's length; None: not given (or not kept)
    reject_reason: str = ""
    fail_message: str = ""
    assets: tuple[dict[str, Any], ...] = ()

    @property
    def waiting(self) -> bool:
        return awaiting_confirmation(self.status, self.stage, self.stage_status)

    @property
    def finished(self) -> bool:
        return self.status in ("SUCCESS", "FAIL")


class Event(BaseModel):
    """One entry of the events stream."""

    type: EventType
    task_id: str
    round: int = 0
    at: float
    status: str = ""
    stage: str = ""
    stage_status: str = ""
    demo_urls: list[str] = []
    reject_reason: str = ""
    fail_message: str = ""
    assets: list[dict[str, Any]] = []
    message: str = ""


# --- rounds, decisions and what a message shows --------------------------------------------

Source = Literal["slack", "elsewhere"]


class Phase(StrEnum):
    TRAINING = "training"  # tracked, no demo to decide on yet
    PENDING = "pending"  # a demo waits for a decision
    APPROVED = "approved"
    REJECTED = "rejected"  # back to training for another round
    ELSEWHERE = "elsewhere"  # decided outside Slack (the Tencent console)
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Decision(BaseModel):
    """What was decided for one round, by whom, when and why."""

    round: int
    operate: Literal["AGREE", "REJECT"] | None  # None: decided elsewhere, outcome unseen
    user: str = ""
    at: float
    reason: str = ""
    request_id: str = ""
    source: Source = "slack"
    # With REQUIRED_APPROVALS > 1: everyone whose approval counted, in the order they voted.
    approvers: list[str] = []
    category: str | None = None  # a REJECT's category from the form; None before categories


class Votes(BaseModel):
    """The approvals given so far in one round, when it takes more than one."""

    users: list[str]
    required: int


class Upload(BaseModel):
    """How copying one round's demo videos into the thread went."""

    round: int
    ok: bool
    files: int = 0
    error: str = ""


class TaskView(BaseModel):
    """Everything the message shows; built by `view_of`, rendered by `bot.messages`."""

    task_id: str
    title: str | None = None
    tracked_by: str = ""
    tracked_at: float = 0.0
    phase: Phase
    round: int
    demo_urls: list[str] = []
    decisions: list[Decision] = []
    votes: Votes | None = None  # the current round's approvals, while it takes several
    required_approvals: int = 1
    upload: Upload | None = None
    tencent_reject_reason: str = ""
    fail_message: str = ""
    assets: list[dict[str, Any]] = []

    @property
    def current_decision(self) -> Decision | None:
        return next((d for d in self.decisions if d.round == self.round), None)

    @property
    def earlier_rejections(self) -> list[Decision]:
        return [d for d in self.decisions if d.round < self.round and d.operate == "REJECT"]


# --- the task record and the claim on a round ---------------------------------------------


class Claim(BaseModel):
    """Who is deciding a round right now, and what they sent (or are sending) to Tencent."""

    user: str
    operate: str
    at: float
    token: str
    reason: str = ""
    approvers: list[str] = []  # the quorum this AGREE completes, when it takes several
    category: str | None = None  # a REJECT's category, kept with its decision


class TaskState(StrEnum):
    ACTIVE = "active"  # polled
    UNKNOWN = "unknown"  # IVH does not know the id; not polled
    FINISHED = "finished"  # SUCCESS or FAIL; not polled


class TaskRecord(BaseModel):
    task_id: str
    channel: str | None = None
    title: str | None = None
    tracked_by: str = ""
    tracked_at: float = 0.0
    state: TaskState = TaskState.ACTIVE
    round: int = 0
    snapshot: Snapshot | None = None
    polled_at: float | None = None
    stage_since: float | None = None  # when the poller first saw the current stage
    error: str = ""
    failures: int = 0
    slack_channel: str | None = None
    slack_ts: str | None = None
    slack_permalink: str | None = None
    posting_since: float | None = None  # a parent post began then and was not recorded (yet)
    # The snapshot exactly as stored, for the compare-and-set: one written by an earlier
    # version may lack a field this version's Snapshot has (and so dumps differently).
    stored_snapshot: str = Field(default="", exclude=True, repr=False)

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "snapshot" in data:
            data["stored_snapshot"] = data["snapshot"]
            data["snapshot"] = Snapshot.model_validate_json(data["snapshot"])
        return cls.model_validate(data)


class Loaded(NamedTuple):
    """A task as read in one round trip: its record and what its message shows."""

    record: TaskRecord
    view: TaskView


class Waiting(NamedTuple):
    """A round waiting for a decision, as the queue shows it."""

    view: TaskView
    ready: float  # when its demo was first seen ready
    permalink: str | None  # the task's thread, once posted


class Decided(NamedTuple):
    """A decision as "Recently decided" shows it, with its task's name and thread."""

    task_id: str
    title: str | None
    permalink: str | None
    decision: Decision
