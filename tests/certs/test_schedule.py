"""Renewal time and backoff: pure arithmetic, fixed random seeds."""

from __future__ import annotations

import random

import pytest

from clawql_secrets.certs.schedule import Backoff, renew_at
from clawql_secrets.errors import InputError


def test_renews_at_two_thirds_of_life_without_jitter() -> None:
    assert renew_at(1000.0, 1900.0, jitter=0.0, rng=random.Random(1)) == pytest.approx(1600.0)


@pytest.mark.parametrize("jitter", [0.0, 0.05, 0.1, 1 / 6])
def test_jitter_stays_within_its_fraction_of_life_and_spreads(jitter: float) -> None:
    rng = random.Random(7)
    times = [renew_at(0.0, 900.0, jitter=jitter, rng=rng) for _ in range(2000)]
    lo, hi = 600 - 900 * jitter, 600 + 900 * jitter
    assert all(lo - 1e-9 <= t <= hi + 1e-9 for t in times)
    if jitter:
        # Spread over most of the window, both sides of 2/3.
        assert min(times) < 600 - 900 * jitter * 0.8
        assert max(times) > 600 + 900 * jitter * 0.8


@pytest.mark.parametrize("jitter", [-0.01, 0.2, 1.0])
def test_jitter_beyond_a_sixth_of_life_is_refused(jitter: float) -> None:
    with pytest.raises(InputError):
        renew_at(0.0, 900.0, jitter=jitter, rng=random.Random(1))


def test_renewal_time_of_an_already_expired_certificate_is_now() -> None:
    assert renew_at(100.0, 50.0, jitter=0.05, rng=random.Random(1)) == 100.0


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    b = Backoff(initial=1.0, maximum=30.0)
    rng = random.Random(3)
    for failures, step in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (50, 30), (5000, 30)]:
        for _ in range(200):
            d = b.delay(failures, rng)
            assert step / 2 <= d <= step, (failures, d)


def test_backoff_before_any_failure_is_zero() -> None:
    assert Backoff().delay(0, random.Random(1)) == 0.0


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (-1, 1), (5, 1)])
def test_backoff_refuses_nonsense_bounds(initial: float, maximum: float) -> None:
    with pytest.raises(InputError):
        Backoff(initial, maximum)


def test_retry_never_skips_past_the_expiry_of_the_certificate_in_place() -> None:
    b = Backoff(initial=1.0, maximum=30.0)
    rng = random.Random(5)
    # 10 s left, the backoff step is 30 s: try again before expiry instead.
    at = b.next_attempt(1000.0, 10, rng, not_after=1010.0)
    assert 1000.0 <= at < 1010.0
    # Plenty of time left: plain backoff.
    assert 1015.0 <= b.next_attempt(1000.0, 10, rng, not_after=5000.0) <= 1030.0
    # Already expired, or none in place: plain backoff, retries go on.
    assert 1015.0 <= b.next_attempt(1000.0, 10, rng, not_after=900.0) <= 1030.0
    assert 1015.0 <= b.next_attempt(1000.0, 10, rng, not_after=None) <= 1030.0
