"""
How long a daemon waits before trying again after a failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

DEFAULT_INITIAL_SECONDS = 0.5
DEFAULT_MAXIMUM_SECONDS = 60.0


@attrs.frozen
class Backoff:
    """
    Exponential backoff with jitter.

    The ceiling doubles with each failed attempt, from C{initial} up to
    C{maximum}; the wait is drawn between half the ceiling and the ceiling,
    so proxies or players that lost the relay together do not come back in step.

    @ivar rng: returns a float in [0, 1); tests pass a constant.
    """

    initial: float = DEFAULT_INITIAL_SECONDS
    maximum: float = DEFAULT_MAXIMUM_SECONDS
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Return the wait before retry number C{attempt} (from 1)."""
        exponent = min(max(attempt - 1, 0), 63)
        ceiling = min(self.maximum, self.initial * 2.0**exponent)
        return ceiling / 2 + self.rng() * ceiling / 2
