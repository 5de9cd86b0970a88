"""A circuit breaker: after repeated failures, stop calling an upstream for a while."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Circuit:
    """Closed until `threshold` failures in a row; then open for a cool-down that doubles
    (up to `max_cooldown`) each time a trial call after it fails."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = threshold
        self._base = cooldown
        self._max = max_cooldown
        self._clock = clock
        self._failures = 0
        self._cooldown = cooldown
        self._open_until: float | None = None
        self._trial = False

    @property
    def open(self) -> bool:
        return self._open_until is not None and self._clock() < self._open_until

    def allow(self) -> bool:
        """May a call go out now? After the cool-down, one trial call is let through."""
        if self._open_until is None:
            return True
        if self._clock() < self._open_until or self._trial:
            return False
        self._trial = True
        return True

    def succeeded(self) -> None:
        if self._open_until is not None:
            log.warning("%s answers again; circuit closed", self.name)
        self._failures = 0
        self._cooldown = self._base
        self._open_until = None
        self._trial = False

    def abandoned(self) -> None:
        """A call ended without a verdict (cancelled): let the next one be the trial."""
        self._trial = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial:
            self._cooldown = min(self._max, self._cooldown * 2)
        elif self._failures < self._threshold:
            return
        self._trial = False
        self._open_until = self._clock() + self._cooldown
        log.warning(
            "%s failed %d times in a row; not calling it for %.0f s",
            self.name,
            self._failures,
            self._cooldown,
        )
