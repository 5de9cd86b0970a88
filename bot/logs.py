"""Log lines: text (the default) or one JSON object a line (LOG_FORMAT=json), never a secret.

What the bot is doing when it logs (the task, its round, the IVH RequestID, the Slack method)
is kept in a context variable by the code that does it (`log_context`), so every line within,
including a library's, carries it as fields of its own in JSON.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from bot.redact import RedactingFilter, redact

CONTEXT_FIELDS = ("task_id", "round", "request_id", "slack_method")
_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context")


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Within this block (and the tasks it starts), log lines carry `fields`."""
    token = _context.set({**_context.get({}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get({}))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with fields named here only: nothing a record carries besides
    its message (redacted) reaches the output, so no secret can by accident."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _context.get({})
        line.update({name: context[name] for name in CONTEXT_FIELDS if name in context})
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """The process's logging: to stderr, as text or JSON, every handler redacting."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs each request URL at INFO, and an IVH URL carries a signature that is a
    # valid credential for minutes: keep those lines out, and redact any that a library
    # quotes in a message or a traceback (the filter above).
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
