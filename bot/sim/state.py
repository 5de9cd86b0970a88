"""The IVH simulator's pure core: the task state machine, result codes and fault records."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

# Result codes the simulated server answers with.
CODE_OK = 0
CODE_INTERNAL = 100000
CODE_PARAM_FORMAT = 100001
CODE_PARAM_VALUE = 100002
CODE_PARAM_MISSING = 100003
CODE_UNAUTHORIZED = 100005
CODE_NOT_FOUND = 110006
# Upstream does not document the code for "confirmed while not waiting"; the reference
# expects a parameter-value error. Change it here only.
CODE_NOT_WAITING = CODE_PARAM_VALUE
MESSAGE_NOT_WAITING = "task is not waiting for confirmation"
MESSAGE_NOT_FOUND = "record does not exist"

REASON_MAX = 300
OPERATES = ("AGREE", "REJECT")
FAIL_STAGES = ("AUDIT", "TRAIN")
NO_CONFIRM_KINDS = frozenset({"IMAGE_PHOTO"})  # photo customization ends without a decision
BEIJING = timezone(timedelta(hours=8))

# Readings of what the docs leave open, each of which the simulator can play.
# TrainRecord lists every round including the one awaiting confirmation, or only earlier ones.
TRAIN_RECORD_READINGS = ("current", "history")

# The two API actions, and what the admin API accepts.
GET_PROGRESS = "getprogress"
CUSTOMER_CONFIRM = "customerconfirm"
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
FAULT_KINDS = ("http500", "html", "garbage", "timeout", "code", "hold")
_NUMBER = (int, float)
CREATE_FIELDS: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "kind": (str,),
    "audit_seconds": _NUMBER,
    "train_seconds": _NUMBER,
    "deliver_seconds": _NUMBER,
    "demos": (int,),
    "fail_at": (str,),
    "fail_message": (str,),
}
FAULT_FIELDS: dict[str, tuple[type, ...]] = {
    "action": (str,),
    "task_id": (str,),
    "kind": (str,),
    "code": (int,),
    "message": (str,),
    "seconds": _NUMBER,
    "apply": (bool,),
    "count": (int,),
}


class SimRefused(Exception):
    """A request the simulated server refuses: `code` is the Header.Code it answers with."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class Phase(StrEnum):
    AUDIT = "AUDIT"
    TRAIN = "TRAIN"
    WAIT = "WAIT"  # CONFIRM / WAIT_PROCESS: demos out, a decision is due
    DELIVER = "DELIVER"  # CONFIRM / PROCESSING after an AGREE
    SUCCESS = "SUCCESS"
    FAIL = "FAIL"


_STAGES: dict[Phase, tuple[str, str, str]] = {  # phase -> Status, StageV2, StatusV2
    Phase.AUDIT: ("MAKING", "AUDIT", "PROCESSING"),
    Phase.TRAIN: ("MAKING", "TRAIN", "PROCESSING"),
    Phase.WAIT: ("MAKING", "CONFIRM", "WAIT_PROCESS"),
    Phase.DELIVER: ("MAKING", "CONFIRM", "PROCESSING"),
    Phase.SUCCESS: ("SUCCESS", "END", "SUCCESS"),
}


def beijing_time(at: float) -> str:
    """TrainRecord's StartTime format: no zone given, Beijing time (UTC+8)."""
    return datetime.fromtimestamp(at, UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class SimTask:
    """One customization task. Every method takes `now`; phases end lazily in `settle`."""

    task_id: str
    kind: str
    created_at: float
    audit_seconds: float
    train_seconds: float
    deliver_seconds: float
    demos: int = 1
    fail_at: str | None = None
    fail_message: str = ""
    phase: Phase = Phase.AUDIT
    phase_started: float = 0.0
    round: int = 1
    train_starts: list[float] = field(default_factory=list)  # one per round, oldest first
    failed_stage: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.fail_at is not None and self.fail_at not in FAIL_STAGES:
            raise ValueError(f"fail_at must be one of {FAIL_STAGES} or None")
        if self.demos < 1:
            raise ValueError("demos must be at least 1")
        self.phase_started = self.created_at

    @property
    def has_confirm(self) -> bool:
        return self.kind not in NO_CONFIRM_KINDS

    def _duration(self) -> float | None:
        return {
            Phase.AUDIT: self.audit_seconds,
            Phase.TRAIN: self.train_seconds,
            Phase.DELIVER: self.deliver_seconds,
        }.get(self.phase)

    def settle(self, now: float) -> None:
        """End every timed phase whose time is up; each next phase starts when the last ended."""
        while (duration := self._duration()) is not None:
            ends = self.phase_started + max(duration, 0.0)
            if now < ends:
                return
            self._finish_phase(ends)

    def advance(self, now: float) -> None:
        """End the current phase now (a test or demo skipping ahead)."""
        self.settle(now)
        if self._duration() is None:
            if self.phase is Phase.WAIT:
                raise SimRefused(CODE_PARAM_VALUE, "task is waiting for a decision: confirm it")
            raise SimRefused(CODE_PARAM_VALUE, f"task has ended ({self.phase.value})")
        self._finish_phase(now)

    def _enter(self, phase: Phase, at: float) -> None:
        self.phase = phase
        self.phase_started = at

    def _finish_phase(self, at: float) -> None:
        if self.phase is Phase.AUDIT:
            if self.fail_at == "AUDIT":
                self._fail("AUDIT", at)
            else:
                self._start_training(at)
        elif self.phase is Phase.TRAIN:
            if self.fail_at == "TRAIN":
                self._fail("TRAIN", at)
            else:
                self._enter(Phase.WAIT if self.has_confirm else Phase.SUCCESS, at)
        elif self.phase is Phase.DELIVER:
            self._enter(Phase.SUCCESS, at)

    def _start_training(self, at: float) -> None:
        self.train_starts.append(at)
        self._enter(Phase.TRAIN, at)

    def _fail(self, stage: str, at: float) -> None:
        self.failed_stage = stage
        self._enter(Phase.FAIL, at)

    def decide(self, now: float, operate: object, reason: object, source: str) -> None:
        """Apply an AGREE or REJECT with the API's rules; raises SimRefused otherwise."""
        self.settle(now)
        if operate not in OPERATES:
            raise SimRefused(CODE_PARAM_VALUE, "Operate must be AGREE or REJECT")
        if operate == "REJECT" and (
            not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX
        ):
            raise SimRefused(CODE_PARAM_VALUE, f"REJECT needs a Reason of 1 to {REASON_MAX} chars")
        if self.phase is not Phase.WAIT:
            raise SimRefused(CODE_NOT_WAITING, MESSAGE_NOT_WAITING)
        self.decisions.append(
            {
                "t": now,
                "round": self.round,
                "operate": operate,
                "reason": reason if isinstance(reason, str) else "",
                "source": source,
            }
        )
        if operate == "AGREE":
            self._enter(Phase.DELIVER, now)
        else:
            self.round += 1
            self._start_training(now)

    def demo_rounds(self) -> int:
        """How many rounds have demos: those whose training has finished."""
        if not self.has_confirm or not self.train_starts:
            return 0
        # A task failed at TRAIN never finished its current round.
        training = self.phase in (Phase.TRAIN, Phase.FAIL)
        return self.round - 1 if training else self.round

    def demo_urls(self, media_base: str, round_: int) -> list[str]:
        base = media_base.rstrip("/")
        return [f"{base}/media/{self.task_id}/{round_}/{n}.mp4" for n in range(1, self.demos + 1)]

    def payload(
        self, media_base: str, *, train_record: str = "current", signed_as: str = ""
    ) -> dict[str, Any]:
        """The getprogress Payload as of the last `settle`. `train_record` is the reading of
        TrainRecord to play (TRAIN_RECORD_READINGS); `signed_as`, when given, is appended to
        each demo URL as a query, as a storage link signed afresh on each read would be."""
        if self.phase is Phase.FAIL:
            status, stage, stage_status = "FAIL", self.failed_stage, "FAIL"
        else:
            status, stage, stage_status = _STAGES[self.phase]
        stage_info = ""
        if stage == "CONFIRM":
            listed = self.train_starts if train_record == "current" else self.train_starts[:-1]
            record = [
                {"StartTime": beijing_time(start), "Record": self.demo_urls(media_base, n)}
                for n, start in enumerate(listed, start=1)
            ]
            query = f"?sign={signed_as}" if signed_as else ""
            content = {
                "TrainResult": [url + query for url in self.demo_urls(media_base, self.round)],
                "RejectReason": "",
                "TrainRecord": record,
            }
            stage_info = json.dumps(content, ensure_ascii=False)
        assets: list[dict[str, str]] = []
        if self.phase is Phase.SUCCESS:
            assets = [
                {"AssetType": self.kind, "AssetId": f"sim-{self.kind.lower()}-{self.task_id}"}
            ]
        return {
            "Status": status,
            "StageV2": stage,
            "StatusV2": stage_status,
            "StageInfo": stage_info,
            "FailMessage": self.fail_message if self.phase is Phase.FAIL else "",
            "AssetList": assets,
        }

    def describe(self, media_base: str) -> dict[str, Any]:
        """The progress payload plus the simulator's own bookkeeping (for /_sim/)."""
        return {
            **self.payload(media_base),
            "task_id": self.task_id,
            "kind": self.kind,
            "phase": self.phase.value,
            "round": self.round,
            "decisions": list(self.decisions),
        }


# --- faults and admin input -----------------------------------------------------------------


class TaskExists(ValueError):
    pass


def checked(body: dict[str, Any], schema: Mapping[str, tuple[type, ...]]) -> dict[str, Any]:
    """The non-null fields of a JSON object, type-checked against `schema`."""
    unknown = sorted(set(body) - set(schema))
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(unknown)}")
    fields: dict[str, Any] = {}
    for key, value in body.items():
        types = schema[key]
        if value is None:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"{key} must be {' or '.join(t.__name__ for t in types)}")
        fields[key] = value
    return fields


@dataclass
class Fault:
    """A queued failure, consumed by the next `count` matching API requests."""

    action: str = "*"  # getprogress, customerconfirm or *
    task_id: str | None = None
    kind: str = "http500"
    code: int = CODE_INTERNAL
    message: str = "injected fault"
    seconds: float = 30.0
    apply: bool | None = None  # customerconfirm: does the decision take effect anyway?
    count: int = 1

    def __post_init__(self) -> None:
        if self.action not in (GET_PROGRESS, CUSTOMER_CONFIRM, "*"):
            raise ValueError(f"action must be {GET_PROGRESS}, {CUSTOMER_CONFIRM} or *")
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if self.count < 1 or self.seconds < 0:
            raise ValueError("count must be at least 1 and seconds not negative")
        if self.apply is None:
            self.apply = self.kind in ("timeout", "hold")

    def matches(self, action: str, task_id: str | None) -> bool:
        return self.action in ("*", action) and self.task_id in (None, task_id)
