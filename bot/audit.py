"""The audit trail as people read it: an export (JSON lines or CSV) and decision statistics.

Pure: it formats entries the store reads from `ivh:audit` (every event and every decision,
appended in the same step that records them, kept AUDIT_RETENTION_DAYS).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.messages import escape

CSV_FIELDS = (
    "at",
    "kind",
    "task_id",
    "round",
    "type",
    "operate",
    "user",
    "category",
    "reason",
    "request_id",
    "source",
    "ready_at",
    "status",
    "stage",
    "stage_status",
    "message",
)


def parse_when(text: str, *, end: bool = False) -> float:
    """A date (`2026-11-30`) or a date and time (`2026-11-30T14:00`, UTC unless it says).
    With `end`, a bare date means the end of that day (`--until 2026-11-30` includes it)."""
    try:
        when = datetime.fromisoformat(text)
        if end and len(text.strip()) == 10:
            when += timedelta(days=1)
    except ValueError:
        raise ValueError(
            f"expected a date such as 2026-11-30 or 2026-11-30T14:00, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(at: object) -> str:
    if not isinstance(at, int | float):
        return ""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def jsonl(entries: Iterable[dict[str, Any]]) -> Iterable[str]:
    for entry in entries:
        yield json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"


def csv_rows(entries: Iterable[dict[str, Any]]) -> Iterable[str]:
    """CSV with a header; times as ISO 8601 UTC; a field a kind lacks is empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    yield buffer.getvalue()
    for entry in entries:
        buffer.seek(0)
        buffer.truncate()
        row = {**entry, "at": _iso(entry.get("at")), "ready_at": _iso(entry.get("ready_at"))}
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_FIELDS})
        yield buffer.getvalue()


@dataclass(frozen=True)
class Stats:
    days: int
    decided: int  # rounds decided (in Slack or outside it)
    first_pass: float | None  # share of tasks whose first decided round was approved
    median_seconds: float | None  # demo ready to decision
    p90_seconds: float | None
    rejections: list[tuple[str, int]]  # the top categories of rejections


def stats(entries: Iterable[dict[str, Any]], days: int) -> Stats:
    """Statistics over the decisions among `entries` (the audit trail of the last `days`)."""
    decisions = [e for e in entries if e.get("kind") == "decision"]
    first: dict[str, dict[str, Any]] = {}
    for decision in decisions:
        task = str(decision.get("task_id"))
        if task not in first or decision.get("round", 0) < first[task].get("round", 0):
            first[task] = decision
    known = [d for d in first.values() if d.get("operate") in ("AGREE", "REJECT")]
    approved = sum(1 for d in known if d.get("operate") == "AGREE")
    waits = sorted(
        float(d["at"]) - float(d["ready_at"])
        for d in decisions
        if d.get("ready_at") and d.get("at") and float(d["at"]) >= float(d["ready_at"])
    )
    categories = Counter(
        str(d.get("category") or "uncategorized") for d in decisions if d.get("operate") == "REJECT"
    )
    return Stats(
        days=days,
        decided=len(decisions),
        first_pass=approved / len(known) if known else None,
        median_seconds=statistics.median(waits) if waits else None,
        p90_seconds=waits[min(len(waits) - 1, int(0.9 * len(waits)))] if waits else None,
        rejections=categories.most_common(5),
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def stats_text(found: Stats) -> str:
    """The `/ivh stats` answer (mrkdwn; categories come from our own setting, escaped anyway)."""
    rate = "—" if found.first_pass is None else f"{found.first_pass:.0%}"
    lines = [
        f"*Last {found.days} days*",
        f"• Rounds decided: {found.decided}",
        f"• Approved at the first round: {rate}",
        f"• Demo ready → decision: median {_duration(found.median_seconds)},"
        f" p90 {_duration(found.p90_seconds)}",
    ]
    if found.rejections:
        top = ", ".join(f"{escape(name)} ({count})" for name, count in found.rejections)
        lines.append(f"• Top rejection reasons: {top}")
    return "\n".join(lines)
