"""Small asyncio helpers shared by the background loops."""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed on its way through.

    Some client libraries catch CancelledError inside their retry paths; a loop that calls
    this once per turn still stops when its task is cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class LoopCrashed(Exception):
    """A background loop died; the process must exit non-zero so that it is restarted."""
