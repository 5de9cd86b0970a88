"""What a user sees when the bot's storage is down: a sentence, not a stack trace."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from bot import messages
from bot.store import StoreUnavailable

log = logging.getLogger(__name__)

UNAVAILABLE = (
    "⚠️ The bot is temporarily unavailable (its storage does not answer). Try again in a minute."
)

Listener = Callable[..., Awaitable[None]]


def guarded(listener: Listener) -> Listener:
    """Answer the user plainly when Redis fails inside `listener`.

    bolt injects arguments by name from the wrapped function's signature (`__wrapped__`).
    """

    @functools.wraps(listener)
    async def wrapper(**kwargs: Any) -> None:
        try:
            await listener(**kwargs)
        except StoreUnavailable as error:
            log.warning("%s: Redis unavailable: %s", listener.__name__, error)
            await _tell(kwargs)

    return wrapper


async def _tell(kwargs: dict[str, Any]) -> None:
    ack = kwargs.get("ack")
    body = kwargs.get("body") or {}
    if ack is not None and ack.response is None:
        if body.get("type") == "view_submission":
            await ack(response_action="errors", errors={messages.REASON_BLOCK: UNAVAILABLE})
        else:
            await ack(text=UNAVAILABLE)
        return
    respond = kwargs.get("respond")
    if respond is not None:
        await respond(text=UNAVAILABLE, response_type="ephemeral", replace_original=False)
