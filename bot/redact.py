"""Keeping credentials out of text: a signed IVH URL lets its reader decide any task for minutes.

The IVH client builds its error texts from its own words and never from a library's, which may
quote the request URL; `redact` and `RedactingFilter` are the safety net behind that.
"""

from __future__ import annotations

import logging
import re

# A URL's query that carries a signature, or a bare `signature=…` parameter.
_SIGNED_QUERY = re.compile(r"\?[^\s'\"<>|]*signature=[^\s'\"<>|]*", re.IGNORECASE)
_SIGNATURE = re.compile(r"signature=[^\s'\"<>|&]*", re.IGNORECASE)
REDACTED = "[credentials removed]"


def redact(text: str) -> str:
    """`text` with every signed query string and signature parameter replaced."""
    if "ignature=" not in text and "IGNATURE=" not in text:
        return text
    return _SIGNATURE.sub(REDACTED, _SIGNED_QUERY.sub("?" + REDACTED, text))


class RedactingFilter(logging.Filter):
    """Installed on the log handlers: whatever a line or its traceback quotes, no signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
