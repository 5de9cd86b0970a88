"""Prometheus metrics: each replica's own counters, and gauges read from Redis at each scrape.

One registry per process, passed in (`Metrics()`), not prometheus-client's global one: two
replicas in one test process keep their own counts.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bot.circuit import Circuit
from bot.store import Store

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds from a demo being ready to its decision: minutes to a week.
DECISION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
CYCLE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Every metric the bot exports, named `ivh_approvals_*`."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: a scrape stays short
        self.registry = CollectorRegistry()
        r = self.registry
        self.tasks = Gauge(
            "ivh_approvals_tasks",
            "Tasks being polled, by IVH stage and status (read from Redis at each scrape)",
            ["stage", "status"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "ivh_approvals_decision_seconds",
            "Seconds from a round's demo being ready to its decision",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "ivh_approvals_decisions",
            "Decisions recorded by this replica, by operation and source (slack, outside)",
            ["operate", "source"],
            registry=r,
        )
        self.ivh_requests = Counter(
            "ivh_approvals_ivh_requests",
            "IVH requests by action and result code (none: no valid answer)",
            ["action", "code"],
            registry=r,
        )
        self.ivh_seconds = Histogram(
            "ivh_approvals_ivh_request_seconds",
            "Seconds an IVH request took, by action",
            ["action"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.slack_errors = Counter(
            "ivh_approvals_slack_api_errors",
            "Slack Web API errors by method and error (ratelimited: a 429, retried)",
            ["method", "error"],
            registry=r,
        )
        self.poll_cycle = Histogram(
            "ivh_approvals_poll_cycle_seconds",
            "Seconds between two reads of the same task",
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.stream_lag = Gauge(
            "ivh_approvals_events_lag",
            "Events not yet delivered to the publishers' consumer group",
            registry=r,
        )
        self.stream_pending = Gauge(
            "ivh_approvals_events_pending",
            "Events delivered to a publisher and not yet acknowledged",
            registry=r,
        )
        self.reminders = Counter(
            "ivh_approvals_reminders",
            "Reminders and escalations this replica sent about rounds nobody decided",
            ["kind"],
            registry=r,
        )
        self.circuit_open = Gauge(
            "ivh_approvals_ivh_circuit_open",
            "1 while this replica's circuit in front of IVH is open (calls paused)",
            registry=r,
        )

    # --- what the loops and clients tell ---------------------------------------------------

    def ivh_answered(self, action: str, code: int | None, seconds: float) -> None:
        self.ivh_requests.labels(action, "none" if code is None else str(code)).inc()
        self.ivh_seconds.labels(action).observe(seconds)

    def decided(self, operate: str | None, source: str, ready_at: float, at: float) -> None:
        self.decisions.labels(operate or "unknown", source).inc()
        if ready_at > 0 and at >= ready_at:
            self.decision_seconds.observe(at - ready_at)

    def reminded(self, kind: str) -> None:
        self.reminders.labels(kind).inc()

    def slack_failed(self, method: str, error: str) -> None:
        self.slack_errors.labels(method, error).inc()

    # --- a scrape ----------------------------------------------------------------------------

    async def render(self, store: Store, circuit: Circuit) -> bytes:
        """The text format, after reading the gauges that live in Redis (two commands)."""
        self.tasks.clear()
        for where, count in (await store.stage_counts()).items():
            stage, _, status = where.partition("/")
            self.tasks.labels(stage, status).set(count)
        lag, pending = await store.stream_lag()
        self.stream_lag.set(lag)
        self.stream_pending.set(pending)
        self.circuit_open.set(1 if circuit.open else 0)
        return generate_latest(self.registry)
