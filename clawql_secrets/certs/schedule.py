"""When to renew, when to retry: pure functions over times, no I/O.

Times are Unix seconds (floats). The renewer passes ``random.Random`` so tests
fix the jitter; nothing here reads a clock.

Renewal happens at two thirds of a certificate's usable life, moved by up to
``jitter`` of that life either way, so that many renewers started together do
not hit OpenBao together. The result is clamped into [1/2, 5/6] of the life:
whatever the jitter, a third of the life minus a sixth is left for retries.

A failed renewal retries with exponential backoff (``Backoff``), full jitter
between half and all of the step, capped, and never later than the moment the
certificate expires: once a certificate has expired every retry matters.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clawql_secrets.errors import InputError

RENEW_FRACTION = 2 / 3
EARLIEST_FRACTION = 1 / 2
LATEST_FRACTION = 5 / 6


def renew_at(start: float, not_after: float, *, jitter: float, rng: random.Random) -> float:
    """The moment to renew a certificate usable from ``start`` to ``not_after``.

    ``start`` is when the certificate became usable here: the later of its
    ``notBefore`` and the time it was received (OpenBao backdates ``notBefore``
    to absorb clock skew, which would otherwise shorten every cycle).
    """
    if not 0 <= jitter <= 1 / 6:
        raise InputError(f"renewal jitter must be between 0 and 1/6 of the life, got {jitter}")
    life = not_after - start
    if life <= 0:
        return start
    fraction = RENEW_FRACTION + rng.uniform(-jitter, jitter)
    fraction = min(max(fraction, EARLIEST_FRACTION), LATEST_FRACTION)
    return start + life * fraction


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial * 2**(n-1)`` capped at ``maximum``, jittered."""

    initial: float = 1.0
    maximum: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise InputError(
                f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}"
            )

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        if failures < 1:
            return 0.0
        step = min(self.maximum, self.initial * 2 ** min(failures - 1, 32))
        return rng.uniform(step / 2, step)

    def next_attempt(
        self, now: float, failures: int, rng: random.Random, *, not_after: float | None
    ) -> float:
        """When to try again; before the current certificate expires if it still holds."""
        at = now + self.delay(failures, rng)
        if not_after is not None and now < not_after < at:
            # One more try just before expiry beats a gap after it.
            at = max(now, not_after - min(self.initial, (not_after - now) / 2))
        return at


def remaining(now: float, not_after: float) -> float:
    """Seconds left before ``not_after`` (negative once expired)."""
    return not_after - now
